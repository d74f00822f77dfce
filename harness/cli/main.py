"""The `harness` console script: the parser assembled from one module per command group, one dispatch table."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from harness.cli import boards, catalogue, plugins, run
from harness.errors import HarnessError

EPILOG = "Docs: README.md. Every command has --help."
GROUPS = (run, catalogue, boards, plugins)  # each: add_commands(sub) -> {command: handler(args, argv) -> exit code}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace, Sequence[str]], int]]]:
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark harness for generative recommendation "
                                     "with Semantic IDs.", epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace, Sequence[str]], int]] = {}
    for group in GROUPS:
        handlers.update(group.add_commands(sub))
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # the plan line (model size, epoch cost, an estimate of the run) on a terminal, not under --json
    if sys.stderr.isatty() and not getattr(args, "json", False):
        plan = logging.getLogger("harness.plan")
        plan.setLevel(logging.INFO)
        plan.propagate = False
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("plan: %(message)s"))
        plan.addHandler(handler)
    if args.command not in handlers:
        parser.print_help()
        return 0
    try:
        return handlers[args.command](args, argv)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
