"""What isolating the plugin costs: the same runs with `--isolation none`, `process` and `sandbox`, side by side in
one process, each mode measured in turn (interleaved, `--repeats` times) so that machine load hits them alike.

Prints per run and mode the wall seconds of the whole run, the overhead against `none` in seconds and as a fraction
of the run, and whether the metrics are identical (they must be: the same seed, the same numbers). Default runs: pop
and sasrec on the smoke track, and sasrec on Scientific for one epoch (its evaluation ships [1024, n_items] score
blocks from the worker). Usage: python benchmarks/isolation_overhead.py [--repeats 2] [--no-scientific] [--json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from harness.board.store import RunStore
from harness.paths import SHARED_DATASETS
from harness.run.isolation import sandbox_problem
from harness.run.referee import prepare, run
from harness.run.spec import RunSpec
from harness.run.tracks import load_track


def cases(scientific: bool) -> list[tuple[str, RunSpec]]:
    smoke = load_track("smoke")
    out = [("smoke pop", RunSpec.for_track(smoke, "pop", "synthetic")),
           ("smoke sasrec", RunSpec.for_track(smoke, "sasrec", "synthetic"))]
    if scientific and (SHARED_DATASETS / "LLM-RecSys-ID").exists():
        small = load_track("cpu-small")
        out.append(("scientific sasrec, 1 epoch", RunSpec.for_track(small, "sasrec", "scientific", max_epochs=1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-scientific", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = ["none", "process"] + ([] if sandbox_problem() else ["sandbox"])
    rows = []
    for label, spec in cases(not args.no_scientific):
        prepared = prepare(spec)  # data loading is the referee's either way: not part of what is compared
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        metrics: dict[str, dict] = {}
        for _ in range(args.repeats):
            for mode in modes:
                spec.isolation = mode
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    record = run(spec, RunStore(runs_dir=tmp), prepared)
                    seconds[mode].append(time.perf_counter() - start)
                metrics[mode] = record["metrics"]
        base = float(np.median(seconds["none"]))
        for mode in modes:
            wall = float(np.median(seconds[mode]))
            rows.append({"run": label, "isolation": mode, "wall_s": round(wall, 2),
                         "overhead_s": round(wall - base, 2), "overhead": round((wall - base) / base, 3),
                         "same_metrics": metrics[mode] == metrics["none"]})
    if args.json:
        print(json.dumps({"sandbox": sandbox_problem() or "available", "rows": rows}, indent=2))
        return
    from tabulate import tabulate
    print(tabulate([[r["run"], r["isolation"], r["wall_s"], r["overhead_s"], f"{100 * r['overhead']:+.1f}%",
                     r["same_metrics"]] for r in rows],
                   headers=["run", "isolation", "wall s (median)", "overhead s", "overhead", "same metrics"]))
    if sandbox_problem():
        print(f"\nno sandbox here: {sandbox_problem()}")


if __name__ == "__main__":
    main()
