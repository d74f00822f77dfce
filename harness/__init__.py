"""gr-harness: benchmark and leaderboard harness for generative recommendation with Semantic IDs."""

__version__ = "0.1.0"
# 2: MRR truncated at the largest cut-off in both modes.
METRIC_VERSION = 2
# 2: deterministic budgets (epochs + patience; the clock a safety cap), stages outside the clock, pinned threads,
# item ids a seeded hash permutation of the raw ids.
PROTOCOL_VERSION = 2
# A run record's status. `budget_bound`: the wall-clock safety cap, not the epochs or early stopping, ended training;
# the model is evaluated and shown, never ranked or pooled with converged runs.
STATUSES = ("ok", "budget_bound", "failed", "over_budget", "pruned")
EVALUATED = ("ok", "budget_bound")
