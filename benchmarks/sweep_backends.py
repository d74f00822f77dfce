"""A smoke sweep through each engine, side by side in one process: the same 12 runs (pop, sasrec, argus, tiger ×
3 seeds on the smoke track) with `--backend loky` and on a local dask.distributed cluster of the same number of
worker processes, each into a fresh store. Prints wall seconds per backend, the ratio, and whether every run is ok
with the same metrics under both. Usage: python benchmarks/sweep_backends.py [--workers 2] [--methods pop,sasrec]
"""
from __future__ import annotations

import argparse
import tempfile
import time

from tabulate import tabulate

from harness.board.store import RunStore
from harness.run.tracks import load_track
from harness.studies.sweep import expand, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="pop,sasrec,argus,tiger")
    parser.add_argument("--seeds", default="3")
    args = parser.parse_args()
    from dask.distributed import LocalCluster
    plan = expand(load_track("smoke"), args.methods.split(","), None, args.seeds)
    rows, metrics = [], {}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        for backend, scheduler in (("loky", None), ("dask", cluster.scheduler_address)):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = run_sweep(plan, RunStore(runs_dir=tmp), backend, args.workers, scheduler)
                seconds = time.perf_counter() - start
            metrics[backend] = {(r["method"], r["seed"]): r["metrics"] for r in result.records}
            rows.append([backend, len(result.records), sum(r["status"] == "ok" for r in result.records),
                         round(seconds, 1)])
    base = rows[0][3]
    for row in rows:
        row.append(f"{row[3] / base:.2f}")
    print(tabulate(rows, headers=["backend", "runs", "ok", "wall s", "vs loky"]))
    print(f"\nsame metrics under both: {metrics['loky'] == metrics['dask']}")


if __name__ == "__main__":
    main()
