"""Peer rows: other libraries' implementations run under the harness's split, seeds and evaluator (`peer` records)."""
