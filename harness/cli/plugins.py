"""`harness new-method`, `validate-plugin`, `submit`, `reproduce`: the plugin author's commands (docs/plugins.md)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from harness.errors import HarnessError


def add_commands(sub) -> dict[str, Any]:
    new = sub.add_parser("new-method", help="scaffold an installable method plugin package",
                         description="Writes DIR/NAME/: pyproject.toml (entry point in harness.methods), a Method "
                         "subclass with a working baseline, its config and search space, a README and a test.")
    new.add_argument("name", help="method name, e.g. item-knn")
    new.add_argument("--dir", default=".", help="parent folder of the package (default: the current folder)")

    val = sub.add_parser("validate-plugin", help="conformance checks of a method plugin on the smoke track",
                         description="Metadata, budget, output shapes/dtypes, catalogue ids, duplicates, NaN, "
                         "determinism, no reach to test targets, score/recommend agreement, latency and memory. "
                         "Exit code 1 when any check fails.")
    val.add_argument("method")
    val.add_argument("--json", action="store_true", help="print the report as JSON")
    val.add_argument("--out", default=None, help="also write the JSON report to this file")
    val.add_argument("--isolation", default=None, metavar="MODE",
                     help="where the plugin runs (default: $HARNESS_ISOLATION or auto, as for harness run)")

    sub_ = sub.add_parser("submit", help="validate, run a track's seeds, write a submission bundle")
    sub_.add_argument("--method", required=True)
    sub_.add_argument("--track", required=True)
    sub_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="method config override (repeatable)")
    sub_.add_argument("--out", default=None, help="bundle folder (default: submissions/<method>-<track>-<time>)")
    sub_.add_argument("--jobs", type=int, default=None, help="parallel processes for the seeds")
    sub_.add_argument("--tolerance", type=float, default=None,
                      help="absolute tolerance a reproduction must meet on every test metric (default 0.01)")

    rep = sub.add_parser("reproduce", help="re-run a seed of a submission bundle, or a published record, and check "
                         "its metrics",
                         description="BUNDLE: re-runs one seed from the bundle's run spec on this machine; checks the "
                         "plugin's source hash, the records against their per-user ranks, the split and config, "
                         "and every test metric within the bundle's tolerance. RUN_ID (a record on a published "
                         "board): re-runs it under its track with its own seed, overrides, budget and precision, and "
                         "checks the split, the resolved config and every test metric (exactly on the hardware and "
                         "library versions that made it). Exit code 1 when not reproduced.")
    rep.add_argument("bundle", metavar="BUNDLE|RUN_ID", help="a submission bundle folder, or the run id of a "
                     "published record (the run_id field of leaderboards/<track>/<dataset>.jsonl)")
    rep.add_argument("--seed", type=int, default=None, help="one seed to re-run (default: every seed of the bundle)")
    rep.add_argument("--dataset", default=None, help="one dataset to re-run (default: every dataset of the bundle)")
    rep.add_argument("--tolerance", type=float, default=None, help="one absolute tolerance for every metric "
                     "(default: exact on the bundle's hardware and library versions, else half the seeds' standard "
                     "deviation, at most the bundle's tolerance)")
    rep.add_argument("--device", default=None, help="device of the re-run (default: the bundle's)")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--publish", action="store_true", help="BUNDLE: re-run in the bubblewrap sandbox and, when "
                     "reproduced, add the records to leaderboards/ with a verified mark. RUN_ID: log the outcome, "
                     "reproduced or not, in leaderboards/<track>/reproduced/<dataset>.jsonl, which the board's "
                     "`reproduced` column reads")
    rep.add_argument("--leaderboards", default=None, help="leaderboards folder for --publish, and where a run id is "
                     "looked up (default: leaderboards/)")
    return {"new-method": cmd_new_method, "validate-plugin": cmd_validate_plugin, "submit": cmd_submit,
            "reproduce": cmd_reproduce}


def cmd_new_method(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.plugins.scaffold import names, scaffold

    target = scaffold(args.name, args.dir)
    package = names(args.name)["package"]
    print(f"wrote {target}/ (package {package}, entry point {args.name})\nnext:\n"
          f"  pip install -e {target}\n  harness validate-plugin {args.name}\n"
          f"  edit {target}/{package}/method.py and method.yaml, validate again, then\n"
          f"  harness submit --method {args.name} --track smoke")
    return 0


def cmd_validate_plugin(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.plugins.validate import validate_plugin

    report = validate_plugin(args.method, isolation=args.isolation)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.render())
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0 if report.passed else 1


def cmd_submit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.config import parse_overrides
    from harness.plugins.submit import DEFAULT_TOLERANCE, read_bundle, submit
    from harness.plugins.validate import validate_plugin

    overrides = parse_overrides(args.overrides)
    report = validate_plugin(args.method)
    print(report.render())
    if not report.passed:
        print(f"error: {args.method} fails validation; no bundle written", flush=True)
        return 1
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    bundle = submit(args.method, args.track, overrides, args.out, args.jobs, tolerance,
                    "harness " + " ".join(shlex.quote(a) for a in argv), report)
    meta, records = read_bundle(bundle)
    for dataset, recs in records.items():
        print(f"\n{dataset}: {len(recs)} seeds")
        test = recs[0]["metrics"]["test"]
        columns = [n for k in recs[0]["eval"]["ks"] for n in (f"recall@{k}", f"ndcg@{k}") if n in test]
        print(tabulate([[r["seed"], *(r["metrics"]["test"][n] for n in columns)] for r in recs],
                       headers=["seed", *columns], floatfmt=".4f"))
    print(f"\nbundle written to {bundle}\nreproduce it: harness reproduce {bundle}")
    return 0


def cmd_reproduce(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.paths import LEADERBOARDS_DIR
    from harness.plugins.submit import publish, reproduce_all
    from harness.studies.reproduce import log_reproduction, reproduce_published

    is_bundle = Path(args.bundle).is_dir()
    if "/" in args.bundle and not is_bundle:  # a run id has no slash
        raise HarnessError(f"{args.bundle}: no such bundle folder")
    if is_bundle:
        # a reproduction that may be published runs the plugin in the sandbox (a user error where there is none)
        results = reproduce_all(args.bundle, None if args.seed is None else [args.seed], args.dataset,
                                args.tolerance, args.device, "sandbox" if args.publish else None)
    else:
        if args.seed is not None or args.dataset:
            raise HarnessError("a run id names one published record: --seed and --dataset are for bundles")
        results = [reproduce_published(args.bundle, args.tolerance, args.device,
                                       leaderboards_dir=Path(args.leaderboards) if args.leaderboards
                                       else LEADERBOARDS_DIR)]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n\n".join(r.render() for r in results))
    passed = all(r.passed for r in results)
    if args.publish and not is_bundle:  # logged whichever way it came out: failures show too
        print(f"logged beside the board: {log_reproduction(results[0])}", file=sys.stderr if args.json else sys.stdout)
    if passed and args.publish and is_bundle:  # each dataset's reproduced seeds, marked
        for dataset in dict.fromkeys(r.dataset for r in results):
            path = publish(args.bundle, [r for r in results if r.dataset == dataset],
                           Path(args.leaderboards) if args.leaderboards else LEADERBOARDS_DIR)
            print(f"published with a verified mark: {path}")
    return 0 if passed else 1
