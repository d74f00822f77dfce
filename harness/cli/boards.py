"""`harness compare`, `harness leaderboard`, `harness export`: commands that read stored and published records."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.board.results import ResultSet


def board_args(p, dataset_required=True):
    p.add_argument("--track", default=None, help="track of the records (default: any)")
    p.add_argument("--dataset", required=dataset_required, help="dataset of the records")
    p.add_argument("--store", default=None, help="SQLAlchemy URL of the run store")
    p.add_argument("--runs-dir", default=None, help="folder of run directories (default: runs/)")
    p.add_argument("--no-published", action="store_true", help="ignore the published leaderboards/ records")
    p.add_argument("--no-store", action="store_true", help="ignore the local run store")
    p.add_argument("--include-stale", action="store_true", help="include records of older metric/protocol versions")
    p.add_argument("--correction", default="holm", choices=["holm", "bh", "none"], help="multiple comparisons")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level for ties (default 0.05)")
    p.add_argument("--format", default="plain", choices=["plain", "md", "csv", "json", "latex"])


def add_commands(sub) -> dict[str, Any]:
    compare = sub.add_parser("compare", help="paired statistics of methods against the best on one dataset",
                             description="Per-user metric arrays averaged over seeds; Wilcoxon, paired t, paired "
                             "bootstrap CI, seed-level Welch; corrected across the table; ties with the best.")
    board_args(compare)
    compare.add_argument("--methods", default=None, help="comma-separated methods or row labels (default: all)")
    compare.add_argument("--metric", default=None, help="metric (default: the track's primary metric or ndcg@10)")
    compare.add_argument("--test", default="wilcoxon", choices=["wilcoxon", "ttest", "bootstrap"],
                         help="the paired test that decides ties (default wilcoxon)")

    board = sub.add_parser("leaderboard", help="the leaderboard table of a track and dataset")
    board_args(board)

    export = sub.add_parser("export", help="write leaderboards/<track>/<dataset>.jsonl + per-user ranks + table")
    board_args(export, dataset_required=False)
    export.add_argument("--out", default=None, help="output folder (default: leaderboards/)")
    return {"compare": cmd_compare, "leaderboard": cmd_leaderboard, "export": cmd_export}


def read_results(args: argparse.Namespace, dataset: str | None) -> ResultSet:
    """The records a board command reads, with a warning for each broken source and a note on stale ones."""
    from harness.board.results import load_results
    from harness.board.store import RunStore
    store = None if args.no_store else RunStore(args.store, args.runs_dir)
    results = load_results(track=args.track, dataset=dataset, store=store, published=not args.no_published,
                           include_stale=args.include_stale)
    for problem in results.broken:
        print(f"warning: {problem}", file=sys.stderr)
    if results.stale:
        print(f"note: {len(results.stale)} stale record(s) (older metric/protocol version) left out; "
              f"--include-stale shows them", file=sys.stderr)
    return results


def extra_sections(results, ks: Sequence[int], fmt: str, held: dict[str, str] | None = None,
                   track: str | None = None) -> str:
    """What a board prints under its table: Gryphon's Table 2 per row with a beam pool, each peer beside ours (rows
    `held` back for older pins are left out; unconverged ones are shown), and the methods the track pins that have
    no run on this board yet."""
    from harness.board.tables import peer_sections, pool_sections
    from harness.registry import peer_pairs
    from harness.run.spec import held_for_pins
    from harness.run.tracks import not_run_note
    groups = {name: records for name, records in results.groups().items()
              if name not in held_for_pins(held or {})}
    parts = [pool_sections(groups, fmt), peer_sections(results, groups, peer_pairs(groups), ks, fmt)]
    parts.append(not_run_note(track, (r["method"] for r in results.records)))
    return "\n\n".join(p for p in parts if p)


def cmd_compare(args: argparse.Namespace, argv=None) -> int:
    from harness.board.results import records_for
    from harness.board.tables import compare_rows, render
    results = read_results(args, args.dataset)
    labels = records_for(results, args.methods.split(",") if args.methods else None)
    if not labels:
        raise HarnessError(f"no ok records for dataset {args.dataset!r}"
                           + (f" in track {args.track!r}" if args.track else "") + "; run `harness run` first")
    from harness.run.spec import board_rules
    metric = args.metric or board_rules(args.track)[0]
    rows = compare_rows(results, labels, metric, args.test, args.correction, args.alpha)
    print(render(rows, args.format))
    return 0


def cmd_leaderboard(args: argparse.Namespace, argv=None) -> int:
    from harness.board.tables import leaderboard_rows, render
    results = read_results(args, args.dataset)
    if not results.records:
        raise HarnessError(f"no ok records for dataset {args.dataset!r}"
                           + (f" in track {args.track!r}" if args.track else "") + "; run `harness run` first")
    from harness.run.spec import board_rules
    primary, ks, min_seeds, held = board_rules(args.track, results)
    print(render(leaderboard_rows(results, ks, primary, args.correction, args.alpha, min_seeds, held), args.format))
    if args.format in ("plain", "md"):
        extra = extra_sections(results, ks, args.format, held, args.track)
        if extra:
            print("\n" + extra)
    return 0


def cmd_export(args: argparse.Namespace, argv=None) -> int:
    from harness import METRIC_VERSION, PROTOCOL_VERSION
    from harness.board.results import export_board, is_stale, load_results
    from harness.board.store import RunStore
    from harness.board.tables import leaderboard_rows, render
    from harness.paths import LEADERBOARDS_DIR
    from harness.run.spec import board_rules, held_for_pins, superseded
    from harness.run.tracks import load_track
    if not args.track and not args.dataset:
        raise HarnessError("export needs --track, or --dataset for runs made outside any track")
    track = load_track(args.track) if args.track else None
    out = Path(args.out) if args.out else LEADERBOARDS_DIR
    for dataset in [args.dataset] if args.dataset else track.datasets:
        store = None if args.no_store else RunStore(args.store, args.runs_dir)
        results = load_results(track=args.track, dataset=dataset, store=store, published=not args.no_published,
                               include_stale=args.include_stale)
        if track is None:  # runs made outside any track go to leaderboards/untracked/
            results.records = [r for r in results.records if r.get("track") is None]
        if not results.records:
            print(f"{dataset}: no ok records, nothing exported")
            continue
        primary, ks, min_seeds, held = board_rules(args.track, results)
        retired = superseded(results, held_for_pins(held))
        if retired:  # a re-run under today's pins replaced them; git history keeps them
            results.records = [r for r in results.records if r["run_id"] not in retired]
            print(f"{dataset}: {len(retired)} records that ran otherwise than the track runs today retired "
                  f"(a row of the same label now runs under its pins)")
            primary, ks, min_seeds, held = board_rules(args.track, results)
        table = render(leaderboard_rows(results, ks, primary, args.correction, args.alpha, min_seeds, held), "md")
        extra = extra_sections(results, ks, "md", held, args.track)
        if extra:
            table += "\n\n" + extra
        stale = [r for r in results.records if is_stale(r)]
        if stale:  # kept for reference, never mixed silently with current runs
            table = (f"> {len(stale)} of {len(results.records)} records are stale (recorded under an older metric or "
                     f"protocol version; current {METRIC_VERSION}/{PROTOCOL_VERSION}): shown for reference, not "
                     f"comparable with current runs.\n\n" + table)
        path = export_board(results, track.name if track else "untracked", dataset, out, table)
        print(f"{dataset}: {len(results.records)} records → {path}")
    return 0
