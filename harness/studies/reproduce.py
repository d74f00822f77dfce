"""Re-running a run and holding it to its record: the one comparison behind `harness reproduce`, for a submission
bundle's seed (`harness.plugins.submit`) and for any published board record (by its run id).

A published record is re-run under its own track's pins, with the seed, config overrides, budget, protocol,
cut-offs and precision it was recorded with; the split and the resolved method config must come out the same, and
every test metric within the tolerance (exactly on the hardware and library versions that made it: runs are
deterministic there).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from harness.board.results import ledger_path, load_results
from harness.board.store import RunStore
from harness.errors import HarnessError
from harness.paths import LEADERBOARDS_DIR
from harness.run.record import hardware, versions
from harness.run.referee import prepare, resolve_device, run
from harness.run.spec import RunSpec, config_difference, pin_drift
from harness.run.tracks import load_track

# Absolute difference allowed on every test metric of the re-run seed. The same machine reproduces a CPU run exactly;
# the margin is for other hardware and library builds, where a few near-tied scores may swap places
# (one user of 300 moves Recall@k by 0.0033).
DEFAULT_TOLERANCE = 0.01


def metric_tolerances(records: Sequence[dict[str, Any]], same_machine: bool, override: float | None = None,
                      cap: float = DEFAULT_TOLERANCE) -> tuple[dict[str, float], str]:
    """Per test metric, how far a re-run may land from the record, and the rule that set it: exactly (0) on the
    hardware and library versions that made it (runs are deterministic there); elsewhere half the standard
    deviation of the row's seeds, at most `cap` (near-tied scores may swap places on other hardware);
    `override` (--tolerance) for every metric."""
    names = sorted({m for r in records for m in r.get("metrics", {}).get("test", {})})
    if override is not None:
        return {m: float(override) for m in names}, f"±{override:g} on every metric (--tolerance)"
    if same_machine:
        return {m: 0.0 for m in names}, "exactly (same hardware and library versions as the record)"
    if len(records) < 2:
        return {m: cap for m in names}, f"±{cap:g} (one seed: no spread to derive from)"
    spread = {m: float(np.std([r["metrics"]["test"][m] for r in records if m in r["metrics"].get("test", {})],
                              ddof=1)) for m in names}
    return ({m: min(cap, max(1e-6, 0.5 * spread[m])) for m in names},
            f"half the seeds' standard deviation per metric, at most ±{cap:g}")


def same_machine(record: dict[str, Any], spec: RunSpec) -> bool:
    """Whether this machine and these library versions are the ones that made `record` (a CPU run is then
    reproduced bit for bit)."""
    here, made = hardware(resolve_device(spec.device)), record.get("hardware", {})
    keys = ("platform", "machine", "cpu_count", "device") + (("cpu",) if "cpu" in made else ())  # older: no model
    return (all(made.get(k) == here.get(k) for k in keys)
            and record.get("versions") == versions() and here["device"] == "cpu")


@dataclass
class Reproduction:
    source: Path  # the bundle folder, or the board file the record was published in
    kind: str     # "bundle" or "published"
    dataset: str
    seed: int
    tolerance: dict[str, float]
    rule: str = ""
    problems: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)  # metric, submitted, reproduced, |diff|, ok
    record: dict[str, Any] | None = None
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)  # what a reader should know beside the verdict
    published_id: str | None = None  # the run id of the published record re-run (kind "published")

    @property
    def passed(self) -> bool:
        return not self.problems

    def render(self) -> str:
        table = tabulate(self.rows, headers=["metric (test)", self.kind, "reproduced", "|diff|", "allowed", "ok"],
                         floatfmt=".6f") if self.rows else ""
        same = " (identical to the recorded 6 decimals)" if self.max_abs_diff == 0 else ""
        verdict = (f"REPRODUCED: {self.dataset} seed {self.seed}, every test metric {self.rule}{same}"
                   if self.passed else "NOT REPRODUCED:\n" + "\n".join(f"- {p}" for p in self.problems))
        return "\n".join(part for part in (table, verdict, *(f"note: {n}" for n in self.notes)) if part)

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: str(self.source), "dataset": self.dataset, "seed": self.seed, "tolerance": self.tolerance,
                "rule": self.rule, "isolation": self.record.get("isolation") if self.record else None,
                "passed": self.passed, "problems": self.problems, "max_abs_diff": self.max_abs_diff,
                "metrics": [dict(zip(("metric", self.kind, "reproduced", "abs_diff", "allowed", "ok"), r))
                            for r in self.rows],
                "run_id": self.record["run_id"] if self.record else None, "notes": self.notes}




def compare(result: Reproduction, submitted: dict[str, Any], again: dict[str, Any]) -> Reproduction:
    """Hold the re-run record `again` to `submitted`: status, split, resolved config, every test metric."""
    result.record = again
    if again["status"] != "ok":
        result.problems.append(f"the re-run ended {again['status']}: {again['failure']}")
        return result
    if again["split_id"] != submitted["split_id"]:
        result.problems.append(f"different data: split_id {again['split_id'][:12]} here, "
                               f"{submitted['split_id'][:12]} in the {result.kind}")
    if again["method_config_hash"] != submitted["method_config_hash"]:
        result.problems.append(f"the resolved method config differs from the {result.kind}'s"
                               + config_difference(submitted.get("method_config"), again.get("method_config")))
    diffs = []
    by_cutoff = lambda n: (int(n.split("@")[1]) if "@" in n else 10**9, n)  # noqa: E731  recall@5 … mrr
    for name, value in sorted(submitted["metrics"]["test"].items(), key=lambda kv: by_cutoff(kv[0])):
        got = again["metrics"]["test"].get(name)
        if got is None:
            result.problems.append(f"{name} is missing from the re-run")
            continue
        diff = abs(got - value)
        diffs.append(diff)
        allowed = result.tolerance.get(name, DEFAULT_TOLERANCE)
        ok = diff <= allowed + 1e-12  # the records keep 6 decimals
        result.rows.append([name, value, got, diff, allowed, "yes" if ok else "NO"])
        if not ok:
            result.problems.append(f"{name}: {result.kind} {value:.4f}, reproduced {got:.4f} "
                                   f"(|diff| {diff:.6f} > {allowed:g}: {result.rule})")
    result.max_abs_diff = max(diffs) if diffs else None
    return result


def find_published(run_id: str, leaderboards_dir: Path = LEADERBOARDS_DIR) -> tuple[dict[str, Any], Path]:
    """The published record with this run id, and the board file it is in."""
    for path in sorted(Path(leaderboards_dir).glob("*/*.jsonl")):
        for line in path.read_text().splitlines():
            if run_id in line:
                record = json.loads(line)
                if record.get("run_id") == run_id:
                    return record, path
    raise HarnessError(f"no published record has run id {run_id!r} (boards under {leaderboards_dir}; "
                       f"`harness leaderboard --track T --dataset D --format json` lists them)")


def published_spec(record: dict[str, Any]) -> RunSpec:
    """The run a published record says it was: under its track, with the record's own resolved method config (the
    track's pins may have changed since), seed, budget, protocol, cut-offs and precision."""
    if not record.get("track"):
        raise HarnessError(f"run {record['run_id']} was made outside any track: re-run its command instead "
                           f"({record.get('command')})")
    budget = record.get("budget") or {}
    asked: dict[str, Any] = {"seed": int(record.get("seed", 0)), "overrides": dict(record.get("method_config") or {}),
                             "threads": (record.get("used") or {}).get("threads"),
                             "protocol": dict(record.get("protocol") or {}), "budget_seconds": budget.get("seconds"),
                             "max_epochs": budget.get("max_epochs"), "precision": record.get("precision", "fp32"),
                             "command": f"harness reproduce {record['run_id']}"}
    if (record.get("eval") or {}).get("ks"):
        asked["ks"] = list(record["eval"]["ks"])
    return RunSpec.for_track(load_track(record["track"]), record["method"], record["dataset"], **asked)


def reproduce_published(run_id: str, tolerance: float | None = None, device: str | None = None,
                        isolation: str | None = None, leaderboards_dir: Path = LEADERBOARDS_DIR) -> Reproduction:
    """Re-run one published record on this machine and compare (exactly where this machine made it)."""
    submitted, path = find_published(run_id, leaderboards_dir)
    if submitted.get("status") != "ok":
        raise HarnessError(f"run {run_id} ended {submitted.get('status')}: only a run that ended by its epochs or "
                           f"early stopping can be held to its metrics")
    spec = published_spec(submitted)
    drift = pin_drift(submitted, load_track(spec.track))  # how the track runs it today, where that differs
    if device:
        spec.device = device
    if isolation:
        spec.isolation = isolation
    # the seeds of its board row give the spread a reproduction elsewhere may land within
    board = load_results(track=submitted["track"], dataset=submitted["dataset"], store=None,
                         leaderboards_dir=Path(leaderboards_dir))
    row = next((records for records in board.groups().values() if any(r["run_id"] == run_id for r in records)),
               [submitted])
    tolerances, rule = metric_tolerances(row, same_machine(submitted, spec), tolerance)
    result = Reproduction(path, "published", submitted["dataset"], int(submitted.get("seed", 0)), tolerances, rule,
                          published_id=run_id)
    if drift:
        result.notes.append(f"the track now runs {spec.method} differently{drift} (record → today): this record "
                            f"is re-run as it was made, and stands for an older pin")
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        again = run(spec, RunStore(runs_dir=tmp), prepare(spec))
    return compare(result, submitted, again)


def log_reproduction(result: Reproduction) -> Path:
    """Append a published record's re-run, reproduced or not, to its board's ledger: which seed, on what hardware
    and library versions, at which commit, how close it came. The board's `reproduced` column reads it."""
    again = result.record or {}
    entry = {"run_id": result.published_id, "seed": result.seed, "passed": result.passed,
             "max_abs_diff": result.max_abs_diff, "rule": result.rule, "problems": result.problems,
             "rerun_id": again.get("run_id"), "reproduced_at": again.get("finished_at"),
             "git_sha": again.get("git_sha"), "hardware": again.get("hardware"), "versions": again.get("versions"),
             "isolation": again.get("isolation"), "train_seconds": (again.get("used") or {}).get("train_seconds")}
    path = ledger_path(result.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as ledger:
        ledger.write(json.dumps(entry, sort_keys=True) + "\n")
    return path
