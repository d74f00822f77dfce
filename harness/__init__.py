"""gr-harness: benchmark and leaderboard harness for generative recommendation with Semantic IDs."""

__version__ = "0.1.0"
# 2: MRR truncated at the largest cut-off in both modes.
# 3: item_recall@k / item_ndcg@k beside the (unchanged) pessimistic metrics: expected credit within collision groups
#    (CollisionGenRec's ItemHit / ItemNDCG), on the main ranking and every alt: view; the per-user arrays keep the
#    target's collision-group slot and size (group_slot, group_size).
METRIC_VERSION = 3
# 2: deterministic budgets (epochs + patience; the clock a safety cap), stages outside the clock, pinned threads,
# item ids a seeded hash permutation of the raw ids.
PROTOCOL_VERSION = 2
