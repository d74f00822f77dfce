"""The `harness` subcommands for method plugins: new-method, validate-plugin, submit, reproduce (docs/plugins.md)."""
from __future__ import annotations

import argparse
from typing import Sequence

COMMANDS = ("new-method", "validate-plugin", "submit", "reproduce")


def add_commands(sub) -> None:
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

    sub_ = sub.add_parser("submit", help="validate, run a track's seeds, write a submission bundle")
    sub_.add_argument("--method", required=True)
    sub_.add_argument("--track", required=True)
    sub_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="method config override (repeatable)")
    sub_.add_argument("--out", default=None, help="bundle folder (default: submissions/<method>-<track>-<time>)")
    sub_.add_argument("--jobs", type=int, default=None, help="parallel processes for the seeds")
    sub_.add_argument("--tolerance", type=float, default=None,
                      help="absolute tolerance a reproduction must meet on every test metric (default 0.01)")

    rep = sub.add_parser("reproduce", help="re-run a seed of a submission bundle and check its metrics",
                         description="Re-runs one seed from the bundle's run spec on this machine; checks the "
                         "plugin's source hash, the records against their per-user ranks, the split and config, "
                         "and every test metric within the bundle's tolerance. Exit code 1 when not reproduced.")
    rep.add_argument("bundle")
    rep.add_argument("--seed", type=int, default=None, help="seed to re-run (default: the bundle's first)")
    rep.add_argument("--dataset", default=None, help="dataset to re-run (default: the bundle's first)")
    rep.add_argument("--tolerance", type=float, default=None, help="override the bundle's tolerance")
    rep.add_argument("--device", default=None, help="device of the re-run (default: the bundle's)")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--publish", action="store_true", help="when reproduced, add the records to leaderboards/ "
                     "with a verified mark")
    rep.add_argument("--leaderboards", default=None, help="leaderboards folder for --publish (default: leaderboards/)")


def dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.command == "new-method":
        from harness.scaffold import cmd_new_method
        return cmd_new_method(args)
    if args.command == "validate-plugin":
        from harness.validate_plugin import cmd_validate_plugin
        return cmd_validate_plugin(args)
    if args.command == "submit":
        from harness.submit import DEFAULT_TOLERANCE, cmd_submit
        args.tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
        return cmd_submit(args, argv)
    from harness.submit import cmd_reproduce
    return cmd_reproduce(args)
