"""Several seeds of one configuration, in parallel processes (joblib) where cores and memory allow.

Every seed's record is kept; a seed whose plugin fails is recorded `failed` and the others go on. A record is
written only when its run has finished, so an interrupted multi-seed run leaves no `ok` record for an unfinished
seed, and rerunning the same command completes the missing seeds only.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import torch
from joblib import Parallel, delayed

from harness.board.results import planned_epochs
from harness.board.store import RunStore
from harness.config import config_hash
from harness.errors import ConfigError
from harness.run.referee import prepare, run
from harness.run.spec import RunSpec
from harness.schema import EVALUATED

log = logging.getLogger(__name__)
MEMORY_PER_JOB_GB = 2.0


def parse_seeds(text: str | int | Sequence[int] | None, default: int = 1) -> list[int]:
    """`5` → [0..4]; `"3,7,11"` → [3, 7, 11]; `"0,"` → [0]. A count must be at least 1."""
    if text is None:
        return list(range(default))
    if isinstance(text, int):
        return list(range(text))
    if not isinstance(text, str):
        return [int(s) for s in text]
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        count = int(text)
    except ValueError:
        raise ConfigError(f"malformed --seeds {text!r}: give a count (5) or a list (0,1,2)") from None
    if count < 1:
        raise ConfigError(f"--seeds {text!r} is a count of seeds and must be at least 1; for seed {text} alone "
                          f"give a list: --seeds {text},")
    return list(range(count))


def available_memory_gb() -> float:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def default_jobs(n_seeds: int, device: str = "auto", threads: int | None = None) -> int:
    """One process per seed, bounded by cores (each run takes `threads` of them) and by memory; a GPU run stays in
    one process."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    by_memory = max(1, int(available_memory_gb() // MEMORY_PER_JOB_GB))
    by_cores = max(1, (os.cpu_count() or 1) // (threads or 1))
    return max(1, min(n_seeds, by_cores, by_memory))


def _run_one(spec: RunSpec, store_url: str, runs_dir: str) -> dict[str, Any]:
    return run(spec, RunStore(store_url, runs_dir))


def finished_seeds(store: RunStore, spec: RunSpec, split_id: str, cfg_hash: str) -> dict[int, dict[str, Any]]:
    """Seeds that already have an evaluation record for exactly this configuration, data, epoch plan and track. Of the
    clock's safety cap (a stricter form of the board's `row_key`): a run that ended by its epochs or early stopping
    trained the same under any cap its training time stays under (training never reads the clock); a run the clock
    ended is finished only under the same cap."""
    done = {}
    for record in store.records(method=spec.method, split_id=split_id):
        if record["status"] not in EVALUATED:
            continue
        budget, cap = record.get("budget", {}), spec.budget_seconds
        within_cap = budget.get("seconds") == cap or (record["status"] != "budget_bound" and (
            cap is None or (record.get("used") or {}).get("train_seconds", float("inf")) < cap))
        if (record.get("method_config_hash") == cfg_hash and record.get("track") == spec.track
                and record.get("purpose", "eval") == spec.purpose and within_cap
                and planned_epochs(record) == planned_epochs(record, spec.max_epochs)  # one config: the hash
                and "test" in record.get("metrics", {})):
            done[record["seed"]] = record
    return done


def run_seeds(spec: RunSpec, seeds: Sequence[int], store: RunStore, n_jobs: int | None = None,
              resume: bool = True) -> list[dict[str, Any]]:
    prepared = prepare(spec)  # user errors surface here, once, before any process starts
    cfg_hash = config_hash(prepared.config)
    done = finished_seeds(store, spec, prepared.split.split_id, cfg_hash) if resume else {}
    done = {seed: record for seed, record in done.items() if seed in seeds}
    todo = [s for s in seeds if s not in done]
    if done:
        log.warning("seeds %s already have evaluated records for this configuration; running %s", sorted(done), todo)
    records = {s: done[s] for s in seeds if s in done}
    if todo:
        jobs = n_jobs or default_jobs(len(todo), spec.device, spec.threads)
        # a run's threads are the track's, whether seeds run side by side or alone; unpinned runs share the cores
        threads = spec.threads or max(1, (os.cpu_count() or 1) // jobs)
        specs = [dataclasses.replace(spec, seed=s, on_validate=None, threads=threads) for s in todo]
        if jobs == 1:
            results = [run(s, store, prepared) for s in specs]
        else:
            results = Parallel(n_jobs=jobs, backend="loky")(
                delayed(_run_one)(s, store.url, str(store.runs_dir)) for s in specs)
        records.update({r["seed"]: r for r in results})
    return [records[s] for s in seeds]
