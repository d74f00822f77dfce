"""gr-harness: benchmark and leaderboard harness for generative recommendation with Semantic IDs."""

__version__ = "0.1.0"
# 2: MRR truncated at the largest cut-off in both modes.
METRIC_VERSION = 2
# 2: deterministic budgets (epochs + patience; the clock a safety cap), stages outside the clock, pinned threads,
# item ids a seeded hash permutation of the raw ids.
PROTOCOL_VERSION = 2
