"""Where the project's files live: the one home of every path below the repository root."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS_DIR = ROOT / "datasets"             # dataset cards (YAML), not a Python package
METHODS_DIR = ROOT / "methods"            # built-in method plugins and their YAML
LEADERBOARDS_DIR = ROOT / "leaderboards"  # published boards: <track>/<dataset>.jsonl, per-user ranks, tables
TRACKS_DIR = LEADERBOARDS_DIR / "tracks"  # track definitions
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"  # a data root laid beside the checkout, when present
