"""`harness` console script."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Any, Sequence

from tabulate import tabulate

from harness.errors import HarnessError

EPILOG = "Docs: README.md. Every command has --help."


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks expects comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--ks needs positive cut-offs")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark harness for generative recommendation "
                                     "with Semantic IDs.", epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="train and evaluate one method on one dataset (one seed) and store the record",
                         description="One run = method × dataset × seed × budget → a stored run record.")
    run.add_argument("--method", required=True, help="registered method name (see `harness methods`)")
    run.add_argument("--dataset", default="synthetic", help="dataset card name or path to a card .yaml "
                     "(default: synthetic, generated in-process)")
    run.add_argument("--seed", type=int, default=0, help="seed for init, data order and sampling (default 0)")
    run.add_argument("--budget", default=None, help="training wall-clock budget, e.g. 90s, 20m, 1h (default: none)")
    run.add_argument("--epochs", type=int, default=None, help="cap on training epochs")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a method config value (repeatable), e.g. --set loss=bce")
    run.add_argument("--data-set", dest="data_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a dataset option, e.g. --data-set n_users=300 for synthetic")
    run.add_argument("--exclude-history", action="store_true",
                     help="exclude history items from ranking (a protocol parameter; default: not excluded)")
    run.add_argument("--ks", type=_ks, default=[5, 10, 20, 50], help="metric cut-offs (default 5,10,20,50)")
    run.add_argument("--track", default=None, help="track name recorded with the run")
    run.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 ...")
    run.add_argument("--data-dir", default=None, help="data root (default: $HARNESS_DATA_DIR, "
                     "../shared/datasets, ~/.cache/gr-harness)")
    run.add_argument("--store", default=None, help="SQLAlchemy URL of the run store (default sqlite:///runs/harness.db)")
    run.add_argument("--runs-dir", default=None, help="folder for run directories (default: runs/)")
    run.add_argument("--json", action="store_true", help="print the full run record as JSON")

    datasets = sub.add_parser("datasets", help="list dataset cards; show one; fetch its files",
                              description="Dataset cards live in datasets/*.yaml.")
    dsub = datasets.add_subparsers(dest="action", metavar="ACTION")
    dsub.add_parser("list", help="list dataset cards (the default)")
    show = dsub.add_parser("show", help="load a dataset and print its statistics and file sha256 status")
    show.add_argument("name")
    show.add_argument("--data-dir", default=None)
    fetch = dsub.add_parser("fetch", help="download a card's pinned upstream files and verify their sha256")
    fetch.add_argument("name")
    fetch.add_argument("--data-dir", default=None)
    fetch.add_argument("--base-url", default=None, help="mirror serving <repo>/<commit>/<path> (default: GitHub raw)")

    sub.add_parser("methods", help="list registered method plugins with their paper and needs")
    return parser


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.config import parse_budget, parse_overrides
    from harness.protocol import RunSpec, run
    from harness.store import RunStore

    spec = RunSpec(method=args.method, dataset=args.dataset, seed=args.seed, budget_seconds=parse_budget(args.budget),
                   max_epochs=args.epochs, overrides=parse_overrides(args.overrides),
                   dataset_options=parse_overrides(args.data_overrides),
                   protocol={"exclude_history": True} if args.exclude_history else {}, ks=args.ks,
                   track=args.track, device=args.device, data_dir=args.data_dir,
                   command="harness " + " ".join(shlex.quote(a) for a in argv))
    record = run(spec, RunStore(args.store, args.runs_dir))
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        print(summary(record))
    if record["status"] != "ok":
        print(f"error: run {record['run_id']} {record['status']}: {record['failure']}", file=sys.stderr)
        return 1
    return 0


def summary(record: dict[str, Any]) -> str:
    test = record["metrics"].get("test", {})
    valid = record["metrics"].get("valid", {})
    rows = [[name, f"{valid.get(name, float('nan')):.4f}", f"{value:.4f}"] for name, value in test.items()]
    head = (f"run {record['run_id']}  status={record['status']}\n"
            f"method={record['method']} dataset={record['dataset']} seed={record['seed']} "
            f"split_id={record['split_id'][:12]}  train {record['used'].get('train_seconds')}s, "
            f"{record['used'].get('epochs')} epochs on {record['used'].get('device')}")
    lat = record.get("latency") or {}
    tail = (f"latency p50 {lat.get('p50_ms')} ms  p99 {lat.get('p99_ms')} ms  {lat.get('users_per_s')} users/s   "
            f"params {record.get('params')}") if lat else ""
    table = tabulate(rows, headers=["metric", "valid", "test"]) if rows else ""
    return "\n".join(part for part in (head, table, tail) if part)


def cmd_datasets(args: argparse.Namespace) -> int:
    from harness.data.cards import card_paths, data_root, file_status, load_card

    if args.action in (None, "list"):
        rows = []
        for name in card_paths():
            card = load_card(name)
            stats = card.stats
            rows.append([name, card.title, card.format, stats.get("users", ""), stats.get("items", ""),
                         stats.get("interactions", "")])
        print(tabulate(rows, headers=["name", "title", "format", "users", "items", "interactions"]))
        return 0
    card = load_card(args.name)
    root = data_root(args.data_dir)
    if args.action == "fetch":
        from harness.data.cards import DEFAULT_BASE_URL, fetch
        for line in fetch(card, root, args.base_url or DEFAULT_BASE_URL):
            print(line)
        return 0
    from harness.data.loaders import load_dataset
    print(f"{card.name}: {card.title}\ncard: {card.path}\ndata root: {root}")
    rows = []
    for f in card.files:
        status, actual = file_status(f, root)
        rows.append([f.role, f.local, status + (" (optional)" if f.optional and status != "ok" else ""),
                     f.sha256[:16], f.licence])
    if rows:
        print(tabulate(rows, headers=["role", "file", "sha256", "expected", "licence"]))
    dataset = load_dataset(card, args.data_dir)
    stats = dataset.stats()
    published = card.stats
    stat_rows = [[k, v if not isinstance(v, float) else f"{v:.5g}", published.get(k, "")] for k, v in stats.items()]
    print(tabulate(stat_rows, headers=["statistic", "loaded", "published"]))
    mismatch = [k for k in ("users", "items", "interactions") if k in published and published[k] != stats[k]]
    if mismatch:
        print(f"warning: loaded counts differ from the published ones for {', '.join(mismatch)}")
    from harness.data.split import leave_one_out
    print(f"split_id (leave-one-out): {leave_one_out(dataset, card.protocol).split_id}")
    if card.notes:
        print(f"notes: {card.notes.strip()}")
    return 0


def cmd_methods() -> int:
    from harness.registry import available
    rows = []
    for name, cls in sorted(available().items()):
        rows.append([name, cls.paper, ", ".join(cls.needs) or "-", "yes" if cls.has_score() else "no",
                     cls.__module__])
    print(tabulate(rows, headers=["method", "paper", "needs", "score()", "module"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "datasets":
            return cmd_datasets(args)
        if args.command == "methods":
            return cmd_methods()
        parser.print_help()
        return 0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
