"""What one run is asked to be (`RunSpec`), and the one place a track's pins are applied to it (and compared with the
config a record ran: a row made under older pins is not today's track)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from harness import registry
from harness.board.results import planned_epochs, row_key, row_label
from harness.config import epoch_plan, merge_config
from harness.errors import ConfigError, HarnessError
from harness.metrics import DEFAULT_KS
from harness.run.tracks import Track, load_track


@dataclass
class RunSpec:
    method: str
    dataset: str
    seed: int = 0
    budget_seconds: float | None = None
    max_epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # the user's --set (and tuned values)
    track_overrides: dict[str, Any] = field(default_factory=dict)  # the track's pins for this method
    protocol: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    ks: Sequence[int] = DEFAULT_KS
    track: str | None = None
    device: str = "auto"
    threads: int | None = None  # torch threads of the run (a track pins them); None: torch's default
    precision: str = "fp32"  # fp32 | bf16: training forward passes under bf16 autocast (a track pins it)
    # where the plugin runs (harness.run.isolation): auto | sandbox | process | none ($HARNESS_ISOLATION, else auto)
    isolation: str = field(default_factory=lambda: os.environ.get("HARNESS_ISOLATION", "auto"))
    checkpoint_every: int | None = None  # epochs between checkpoints of the shared training loop (None: none)
    resume: bool = False  # continue from this run's checkpoint in the store, if an interrupted run left one
    memory_mb: int | None = None  # cap on the plugin worker's data memory (RLIMIT_DATA); past it allocations fail
    data_dir: str | None = None
    latency_users: int = 100
    throughput_batch: int = 256
    command: str | None = None
    evaluate_test: bool = True  # False for tuning trials: the test targets are then never touched
    purpose: str = "eval"  # "eval" runs go on the board; "tune" runs are trials of a study
    on_validate: Callable[[int, dict[str, float]], None] | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # stored in the record as is (e.g. tuning provenance)

    @classmethod
    def for_track(cls, track: Track, method: str, dataset: str, **asked: Any) -> "RunSpec":
        """A spec under the track's pins: budget, epoch cap, protocol, dataset options, cut-offs, device, threads, the
        method's sizes and, for SID methods, the embedder. What is asked wins; a protocol or dataset options asked
        for are laid over the track's rather than replacing them."""
        pins = track.pins(method, dataset)
        if "embedder" in registry.get(method).default_config:  # the track pins the embedder of SID methods
            pins.setdefault("embedder", track.embedder)
        spec = cls(method=method, dataset=dataset, track=track.name, track_overrides=pins,
                   budget_seconds=track.budget_seconds, max_epochs=track.max_epochs, protocol=dict(track.protocol),
                   dataset_options=dict(track.dataset_options.get(dataset, {})), ks=list(track.ks),
                   device=track.device, threads=track.threads,
                   precision=track.precision)
        asked = dict(asked)
        asked["protocol"] = {**spec.protocol, **asked.get("protocol", {})}
        asked["dataset_options"] = {**spec.dataset_options, **asked.get("dataset_options", {})}
        return dataclasses.replace(spec, **asked)

    def method_config(self) -> dict[str, Any]:
        """The method config this spec runs with: the plugin's defaults, under the track's pins, under --set."""
        method_cls = registry.get(self.method)
        return merge_config(method_cls.default_config, {**self.track_overrides, **self.overrides}, self.method,
                            method_cls.recipes)


def config_difference(was: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """`: patience 10 → 30` (what changed), or nothing where the configs are the same or not at hand."""
    if not was or not now:
        return ""
    changed = [f"{k} {was.get(k, '-')} → {now.get(k, '-')}" for k in sorted(set(was) | set(now))
               if was.get(k) != now.get(k)]
    return (": " + ", ".join(changed)) if changed else ""


def pin_drift(record: dict[str, Any], track: Track) -> str | None:
    """How the track runs a record today where that differs from how the record ran (`: patience 10 → 30`): the
    method config (with the record's --set values), the epoch plan (`epoch_plan`) and the precision; "" where nothing
    differs; None where this install cannot say (the method's plugin is not installed, or the record has no
    config)."""
    if not record.get("method_config"):
        return None
    overrides = dict(record.get("config_overrides") or {})
    try:
        now = RunSpec.for_track(track, record["method"], record["dataset"], overrides=overrides).method_config()
    except ConfigError:  # a --set key the method no longer has
        return f": --set {', '.join(sorted(overrides))} no longer valid"
    except HarnessError:  # the plugin is not installed here
        return None
    was = {**record["method_config"], "(epoch plan)": planned_epochs(record),
           "(precision)": record.get("precision", "fp32")}
    return config_difference(was, {**now, "(epoch plan)": epoch_plan(now.get("epochs"), track.max_epochs),
                                   "(precision)": track.precision})


def off_pin_rows(groups: dict[str, list[dict[str, Any]]], track: Track) -> dict[str, str]:
    """Board rows (label → reason) whose records ran otherwise than the track runs today (its pins, or the method's
    defaults, changed since): they stand for an older track, so they are shown, not ranked, and retired by
    `harness export` once a row of the same label runs under today's pins (`superseded`)."""
    reasons = {}
    for label, records in groups.items():
        drift = pin_drift(records[0], track)  # a row's records share their config, epoch cap and precision
        if drift:
            reasons[label] = f"ran otherwise than the track runs today{drift} (record → today): re-run to rank"
    return reasons


class Unconverged(str):
    """Why a row is held back that keeps it from ranking only: the sections under a board (a peer beside ours,
    Gryphon's Table 2) still show it, as they do not rows made under older pins (`held_for_pins`)."""


def held_for_pins(held: dict[str, str]) -> dict[str, str]:
    return {label: why for label, why in held.items() if not isinstance(why, Unconverged)}


def unconverged_rows(groups: dict[str, list[dict[str, Any]]], track: Track) -> dict[str, str]:
    """Board rows (label → reason) that early stopping did not end in every seed (their best validation was their
    last, or the epoch cap came first): their number is what the epochs bought, not the method's, so they are
    shown, not ranked, unless the track ranks such rows (`rank_unconverged`, e.g. smoke's few-epoch runs)."""
    from harness.board.tables import convergence  # the board's statistics stack, only where a board is drawn
    if track.rank_unconverged:
        return {}
    reasons = {}
    for label, records in groups.items():
        verdict = convergence(records, track.primary_metric)[1]
        if verdict.startswith("no"):
            reasons[label] = Unconverged(f"not converged ({verdict[4:]}): a row ranks once early stopping ends "
                                         f"its seeds")
    return reasons


def superseded(results: Any, held: dict[str, str]) -> set[str]:
    """Run ids of held rows beside which a row of the same label now runs under today's pins: export retires them
    (git history keeps them), so the current row keeps the plain label that links and peer pairs use."""
    groups = results.groups()
    current = {row_label(records[0]) for name, records in groups.items() if name not in held}
    retired = {(row_label(records[0]), row_key(records[0])) for name, records in groups.items()
               if name in held and row_label(records[0]) in current}
    return {r["run_id"] for r in results.records if (row_label(r), row_key(r)) in retired}


def board_rules(track_name: str | None, results: Any = None
                ) -> tuple[str, list[int], Callable[[str], int], dict[str, str]]:
    """A board's primary metric, cut-offs, the seeds a ranked row of a method needs (the track's for it, at least
    3), and the rows of `results` held back from ranking, with why: they ran otherwise than the track runs today,
    or did not converge."""
    if not track_name:
        return "ndcg@10", list(DEFAULT_KS), (lambda method: 3), {}
    track = load_track(track_name)
    held = ({**unconverged_rows(results.groups(), track), **off_pin_rows(results.groups(), track)}
            if results is not None else {})
    return track.primary_metric, list(track.ks), track.ranked_seeds, held
