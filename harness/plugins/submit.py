"""Submission bundles and their reproduction.

`harness submit` validates a plugin, runs every seed of a track and writes a bundle folder:

    bundle.json            what was run (each dataset's run spec, the resolved config), the plugin's package, version
                           and source hash, the environment, the tolerance a reproduction must meet
    validation.json        the validator's report
    records/<dataset>.jsonl  one run record per seed (with provenance: split_id, versions, git sha, hardware, command)
    per_user/<run_id>.npz  per-user validation/test ranks (every metric at every cut-off follows from them)

`harness reproduce BUNDLE` re-runs one seed from the bundle's own run spec (not the track file as it is today) on this
machine and compares the metrics; `--publish` then adds the bundle's records to `leaderboards/<track>/` with a
`verified` mark, the only way such a mark is written.
"""
from __future__ import annotations

import json
import shlex
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from harness import registry
from harness.board.results import bundle_digest, export_board, load_results
from harness.board.store import RunStore
from harness.board.tables import leaderboard_rows, render
from harness.errors import HarnessError
from harness.metrics import metrics_from_groups, metrics_from_ranks
from harness.paths import LEADERBOARDS_DIR
from harness.plugins.validate import Report, validate_plugin
from harness.run.record import environment, plugin_info
from harness.run.referee import prepare, run
from harness.run.spec import RunSpec, board_rules
from harness.run.tracks import load_track
from harness.studies.reproduce import DEFAULT_TOLERANCE, Reproduction, compare, metric_tolerances, same_machine
from harness.studies.seeds import run_seeds

BUNDLE_FORMAT = 1
SPEC_FIELDS = ("method", "dataset", "budget_seconds", "max_epochs", "overrides", "track_overrides", "protocol",
               "dataset_options", "ks", "track", "device", "threads")


class SubmissionError(HarnessError):
    """The plugin failed validation or a seed failed: no bundle is written."""


def _ranks(per_user: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The per-user arrays a bundle keeps: the rank, and the collision-group slot and size the item_ metrics need."""
    return {f"{stage}/{name}": per_user[stage][name] for stage in ("valid", "test")
            for name in ("rank", "group_slot", "group_size") if name in per_user.get(stage, {})}


def submit(method: str, track_name: str, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
           n_jobs: int | None = None, tolerance: float = DEFAULT_TOLERANCE, command: str | None = None,
           report: Report | None = None) -> Path:
    """Validate, run the track's seeds on each of its datasets, and write the bundle. Returns its folder."""
    track = load_track(track_name)
    report = report or validate_plugin(method)
    if not report.passed:
        raise SubmissionError(f"{method} fails validation, no bundle written:\n{report.render()}")
    stamp = datetime.now(timezone.utc)
    bundle = Path(out) if out else Path("submissions") / f"{method}-{track.name}-{stamp:%Y%m%dT%H%M%S}"
    if bundle.exists() and any(bundle.iterdir()):
        raise SubmissionError(f"{bundle} already exists and is not empty")
    plugin = report.plugin
    seeds = list(range(track.seeds_for(method)))
    specs, record_sets = {}, {}
    with tempfile.TemporaryDirectory(prefix="submit-") as tmp:
        store = RunStore(runs_dir=tmp)
        for dataset in track.datasets:
            spec = RunSpec.for_track(track, method, dataset, overrides=dict(overrides or {}), command=command,
                                     extra={"plugin": {k: plugin[k] for k in ("package", "version", "source_hash")}})
            records = run_seeds(spec, seeds, store, n_jobs=n_jobs, resume=False)
            if any(r.get("isolation") == "none" for r in records):
                raise SubmissionError("these runs shared the referee's process (isolation none, a debugging mode): "
                                      "a submission's runs are isolated; unset HARNESS_ISOLATION=none")
            failed = [r for r in records if r["status"] != "ok"]
            if failed:
                raise SubmissionError("; ".join(f"{dataset} seed {r['seed']} {r['status']}: {r['failure']}"
                                                for r in failed) + " (no bundle written)")
            specs[dataset] = {k: getattr(spec, k) for k in SPEC_FIELDS}
            record_sets[dataset] = [(r, _ranks(store.per_user(r["run_id"]))) for r in records]
        (bundle / "records").mkdir(parents=True, exist_ok=True)
        (bundle / "per_user").mkdir(exist_ok=True)
        for dataset, pairs in record_sets.items():
            with open(bundle / "records" / f"{dataset}.jsonl", "w") as handle:
                for record, ranks in pairs:
                    record = {**record, "diagnostics": {k: v for k, v in record["diagnostics"].items()
                                                       if k != "traceback"}}
                    handle.write(json.dumps(record, sort_keys=True) + "\n")
                    np.savez_compressed(bundle / "per_user" / f"{record['run_id']}.npz", **ranks)
    first = record_sets[track.datasets[0]][0][0]
    (bundle / "validation.json").write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    meta = {
        "format": BUNDLE_FORMAT, "method": method, "track": track.name, "created_at": stamp.isoformat(),
        "command": command, "seeds": seeds, "datasets": track.datasets, "specs": specs,
        "config": first["method_config"], "config_hash": first["method_config_hash"],
        "plugin": plugin, "environment": environment(),
        "validation": {"passed": True, "file": "validation.json", "seconds": round(report.seconds, 1)},
        "tolerance": {"metrics": "test", "abs": tolerance},
        "records": {d: {"file": f"records/{d}.jsonl", "run_ids": [r["run_id"] for r, _ in pairs]}
                    for d, pairs in record_sets.items()},
    }
    (bundle / "bundle.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return bundle


# --- reproduction ----------------------------------------------------------------------------------------------------

def read_bundle(bundle: str | Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    path = Path(bundle) / "bundle.json"
    if not path.exists():
        raise HarnessError(f"{bundle} is not a submission bundle (no bundle.json)")
    meta = json.loads(path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise HarnessError(f"{path}: unknown bundle format {meta.get('format')!r}")
    records = {}
    for dataset, entry in meta["records"].items():
        lines = (Path(bundle) / entry["file"]).read_text().splitlines()
        records[dataset] = [json.loads(line) for line in lines if line.strip()]
    return meta, records


def _consistency_problems(bundle: Path, record: dict[str, Any]) -> list[str]:
    """A record's test metrics must follow from its per-user ranks (an edited number does not)."""
    path = bundle / "per_user" / f"{record['run_id']}.npz"
    if not path.exists():
        return [f"seed {record['seed']}: per-user ranks missing ({path.name})"]
    with np.load(path) as data:
        ranks = torch.as_tensor(data["test/rank"].astype(np.float64))
        groups = (data["test/group_slot"], data["test/group_size"]) if "test/group_slot" in data.files \
            and "test/group_size" in data.files else None
    ranks[ranks < 0] = float("inf")
    per_user = metrics_from_ranks(ranks, record["eval"]["ks"])
    if groups is not None:  # the item_ metrics follow from the collision-group slot and size (metric_version 3)
        slots = torch.as_tensor(groups[0].astype(np.float64))
        slots[slots < 0] = float("inf")
        per_user.update(metrics_from_groups(slots, torch.as_tensor(groups[1].astype(np.int64)), record["eval"]["ks"]))
    problems = []
    for name, value in record["metrics"]["test"].items():
        if name in per_user and abs(float(per_user[name].mean()) - value) > 1e-6:
            problems.append(f"seed {record['seed']}: {name} is {value:.4f} in the record but "
                            f"{per_user[name].mean():.4f} from its per-user ranks")
    return problems


def reproduce(bundle: str | Path, seed: int | None = None, dataset: str | None = None,
              tolerance: float | None = None, device: str | None = None,
              isolation: str | None = None) -> Reproduction:
    """Re-run one seed of the bundle and compare every test metric within `metric_tolerances`. A reproduction
    meant for publishing runs the plugin in the sandbox (`isolation="sandbox"`)."""
    bundle = Path(bundle)
    meta, records = read_bundle(bundle)
    dataset = dataset or meta["datasets"][0]
    if dataset not in records:
        raise HarnessError(f"the bundle has no records for dataset {dataset!r} (it has {', '.join(records)})")
    seed = meta["seeds"][0] if seed is None else seed
    submitted = next((r for r in records[dataset] if r["seed"] == seed), None)
    if submitted is None:
        raise HarnessError(f"the bundle has no seed {seed} for {dataset} (seeds {meta['seeds']})")
    spec = RunSpec(seed=seed, **meta["specs"][dataset])
    spec.command = f"harness reproduce {shlex.quote(str(bundle))} --seed {seed}"
    if device:
        spec.device = device
    if isolation:
        spec.isolation = isolation
    tolerances, rule = metric_tolerances(records[dataset], same_machine(submitted, spec), tolerance,
                                         meta["tolerance"]["abs"])
    result = Reproduction(bundle, "bundle", dataset, seed, tolerances, rule)

    installed = plugin_info(registry.get(meta["method"]))
    if installed["source_hash"] != meta["plugin"]["source_hash"]:
        result.problems.append(f"the installed plugin's source ({installed['package']} {installed['version']}, "
                               f"{installed['source_hash'][:12]}) differs from the submitted one "
                               f"({meta['plugin']['package']} {meta['plugin']['version']}, "
                               f"{meta['plugin']['source_hash'][:12]}): install the submitted code")
    for record in records[dataset]:
        result.problems += _consistency_problems(bundle, record)

    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        again = run(spec, RunStore(runs_dir=tmp), prepare(spec))
    return compare(result, submitted, again)


def reproduce_all(bundle: str | Path, seeds: Sequence[int] | None = None, dataset: str | None = None,
                  tolerance: float | None = None, device: str | None = None,
                  isolation: str | None = None) -> list[Reproduction]:
    """Every seed of the bundle (or `seeds`) on every dataset (or `dataset`), re-run one by one."""
    meta, _ = read_bundle(bundle)
    return [reproduce(bundle, seed, name, tolerance, device, isolation) for name in ([dataset] if dataset else meta["datasets"])
            for seed in (list(seeds) if seeds is not None else meta["seeds"])]


def publish(bundle: str | Path, result: Reproduction | Sequence[Reproduction],
            leaderboards_dir: Path = LEADERBOARDS_DIR) -> Path:
    """Add the bundle's records of the reproduced dataset to `<leaderboards>/<track>/<dataset>.jsonl`, keeping the
    records already published there. Only the records of the seeds that were re-run and matched are marked
    `verified`; the mark carries the bundle's content hash, which the board checks when it reads the mark."""
    results_ = [result] if isinstance(result, Reproduction) else list(result)
    if not results_ or not all(r.passed for r in results_):
        raise HarnessError("only a reproduced bundle can be published")
    unsandboxed = sorted({r.record.get("isolation") for r in results_} - {"sandbox"})
    if unsandboxed:
        raise HarnessError(f"only a reproduction in the sandbox can be published (this one ran with isolation "
                           f"{', '.join(map(str, unsandboxed))}): run `harness reproduce --publish` where bubblewrap "
                           f"works")
    if len({r.dataset for r in results_}) != 1:
        raise HarnessError("publish one dataset's reproductions at a time")
    result = results_[0]
    bundle = Path(bundle)
    meta, records = read_bundle(bundle)
    track, dataset = meta["track"], result.dataset
    try:
        where = str(bundle.resolve().relative_to(Path(leaderboards_dir).resolve().parent))
    except ValueError:
        where = str(bundle.resolve())
    reproduced = sorted(r.seed for r in results_)
    mark = {"by": "harness reproduce", "at": datetime.now(timezone.utc).isoformat(), "bundle": where,
            "bundle_sha256": bundle_digest(bundle), "seed": reproduced[0], "reproduced_seeds": reproduced,
            "reproducing_run_ids": [r.record["run_id"] for r in results_], "tolerance": result.tolerance,
            "tolerance_rule": result.rule, "isolation": "sandbox",
            "max_abs_diff": max(r.max_abs_diff or 0.0 for r in results_),
            "plugin_source_hash": meta["plugin"]["source_hash"], "hardware": result.record["hardware"]}
    results = load_results(track=track, dataset=dataset, published=True, include_stale=True,
                           leaderboards_dir=Path(leaderboards_dir))
    ours = {r["run_id"] for r in records[dataset]}
    results.records = [r for r in results.records if r["run_id"] not in ours]
    for record in records[dataset]:
        marked = {**record, "verified": mark} if record["seed"] in reproduced else record
        results.add(marked, bundle / "per_user" / f"{record['run_id']}.npz")
    primary, ks, min_seeds, held = board_rules(track, results)  # the rules `harness export` writes boards by
    table = render(leaderboard_rows(results, ks, primary, min_seeds=min_seeds, held=held), "md")
    return export_board(results, track, dataset, Path(leaderboards_dir), table)
