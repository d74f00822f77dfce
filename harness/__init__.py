"""gr-harness: benchmark and leaderboard harness for generative recommendation with Semantic IDs."""

__version__ = "0.1.0"
METRIC_VERSION = 1
PROTOCOL_VERSION = 1
