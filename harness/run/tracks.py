"""Tracks (`leaderboards/tracks/*.yaml`): datasets + protocol + budget + hardware class + embedder + cut-offs.

A number on the board belongs to a track; every method in a track runs under the same pins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from harness.config import parse_budget
from harness.errors import ConfigError, HarnessError
from harness.paths import TRACKS_DIR


@dataclass
class Track:
    name: str
    description: str
    datasets: list[str]
    budget: str | None = None
    max_epochs: int | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    hardware: str = ""
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 training (harness.engines.training.autocast)
    threads: int | None = None  # torch threads of every run, whether its seeds run side by side or alone
    embedder: str = "tfidf-svd"
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    primary_metric: str = "ndcg@10"
    seeds: int = 5
    # fewer seeds for methods whose runs are costly, never under the 3 a ranked row needs (DESIGN §4.5)
    method_seeds: dict[str, int] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    # rows whose seeds did not all early-stop are shown, not ranked; a demo track of few-epoch runs may rank them
    rank_unconverged: bool = False
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per dataset, laid over method_overrides: {dataset: {method: {key: value}}}, e.g. a longer patience where a
    # small dataset's validation curve is noisy
    dataset_method_overrides: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def seeds_for(self, method: str) -> int:
        """The seeds `method` runs on this track by default: its own count where the track names one."""
        return self.method_seeds.get(method, self.seeds)

    def search_space(self, method: str) -> dict[str, dict[str, Any]] | None:
        """The space `harness tune` searches for `method` on this track (`tuning.search_spaces`), where the track
        gives one (e.g. optimiser and regularisation at the track's pinned sizes); else None: the plugin's own."""
        return (self.tuning.get("search_spaces") or {}).get(method)

    def ranked_seeds(self, method: str) -> int:
        """The seeds a board row of `method` needs to be ranked or tied: its track count, never fewer than 3."""
        return max(3, self.seeds_for(method))

    @property
    def budget_seconds(self) -> float | None:
        return parse_budget(self.budget)

    def pins(self, method: str, dataset: str) -> dict[str, Any]:
        """The method config values this track pins on `dataset`."""
        return {**self.method_overrides.get(method, {}),
                **self.dataset_method_overrides.get(dataset, {}).get(method, {})}

    def not_run(self, methods: Iterable[str]) -> list[str]:
        """The methods this track pins (`method_overrides`) that have no record among `methods`: a board names its
        missing rows, so an absent method is never read as one left out."""
        seen = set(methods)
        return [m for m in self.method_overrides if m not in seen]

    def check_dataset(self, dataset: str) -> None:
        if dataset not in self.datasets:
            raise ConfigError(f"dataset {dataset!r} is not in track {self.name!r} (datasets: {', '.join(self.datasets)})")


def not_run_note(track: str | None, methods: Iterable[str]) -> str:
    """The line a board prints under its table naming the methods its track pins with no run on it ('' when none,
    or for runs outside any track)."""
    try:
        missing = load_track(track).not_run(methods) if track else []
    except HarnessError:  # runs outside any track (the app names them "None"), or a track file that is gone
        return ""
    return f"Not run on this board yet (the track pins them): {', '.join(missing)}." if missing else ""


def track_names() -> list[str]:
    return sorted(p.stem for p in TRACKS_DIR.glob("*.yaml"))


def load_track(name: str) -> Track:
    path = TRACKS_DIR / f"{name}.yaml"
    if not path.exists():
        raise HarnessError(f"unknown track {name!r}; available: {', '.join(track_names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        track = Track(**raw)
    except TypeError as exc:
        raise ConfigError(f"malformed track file {path}: {exc}") from None
    if not isinstance(track.method_seeds, dict):
        raise ConfigError(f"track file {path}: method_seeds maps a method to its seed count, e.g. {{tiger: 3}}")
    low = {m: n for m, n in track.method_seeds.items() if not isinstance(n, int) or n < 3}
    if low:
        raise ConfigError(f"track file {path}: method_seeds below the 3 seeds a ranked row needs: {low}")
    unpinned = set(track.method_seeds) - set(track.method_overrides)
    if unpinned:  # a typo would silently give the method the track's count
        raise ConfigError(f"track file {path}: method_seeds names methods the track does not pin: "
                          f"{', '.join(sorted(unpinned))}")
    track.tuning = track.tuning or {}  # `tuning:` left empty
    if not isinstance(track.rank_unconverged, bool):
        raise ConfigError(f"track file {path}: rank_unconverged is true or false, not {track.rank_unconverged!r}")
    spaces = track.tuning.get("search_spaces") or {}
    if set(spaces) - set(track.method_overrides):  # a typo would silently tune the plugin's own space
        raise ConfigError(f"track file {path}: tuning.search_spaces names methods the track does not pin: "
                          f"{', '.join(sorted(set(spaces) - set(track.method_overrides)))}")
    unknown = set(track.dataset_method_overrides) - set(track.datasets)
    if unknown:
        raise ConfigError(f"track file {path}: dataset_method_overrides names datasets the track does not have: "
                          f"{', '.join(sorted(unknown))}")
    return track
