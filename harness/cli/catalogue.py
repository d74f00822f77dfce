"""`harness datasets`, `harness methods`, `harness sids`: what there is to run on and with."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.cli.boards import board_args, read_results


def add_commands(sub) -> dict[str, Any]:
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

    sids = sub.add_parser("sids", help="Semantic-ID tools", description="Semantic-ID tools.")
    ssub = sids.add_subparsers(dest="action", metavar="ACTION")
    report = ssub.add_parser("report", help="fit (or load cached) SIDs for a dataset and print their diagnostics",
                             description="Per-level utilisation and entropy, unique SIDs, collisions (items in "
                             "collision groups and the largest group; for letter also before and after its "
                             "collision-resolution rounds), prefix fan-out, reconstruction error and neighbourhood "
                             "agreement with training transitions.")
    compare_sids = ssub.add_parser("compare", help="the tokenizer reports of stored generative runs side by side "
                                   "(one column per method configuration, mean ± sd over seeds)",
                                   description="Reads `tokenizer_report` from each run record (tiger, letter, "
                                   "etegrec, gr, ...) of a track and dataset, with the retrieval they led to.")
    board_args(compare_sids)
    compare_sids.add_argument("--methods", default=None, help="comma-separated board rows (default: all with a report)")
    report.add_argument("--dataset", required=True)
    report.add_argument("--tokenizer", default="rkmeans", help="rkmeans, rvq, rqvae, balanced, index-file, letter "
                        "(letter also reads sasrec-cf collaborative embeddings)")
    report.add_argument("--embedder", default="tfidf-svd", help="tfidf-svd, sentence-transformers, attributes, "
                        "precomputed, sasrec-cf (a SASRec's item table trained on the training split)")
    report.add_argument("--levels", type=int, default=3)
    report.add_argument("--width", type=int, default=256)
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="tokenizer option, e.g. --set epochs=50 or --set path=Beauty.index.json")
    report.add_argument("--embedder-set", dest="embedder_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="embedder option, e.g. --embedder-set dim=64 or --embedder-set model=/path/to/model")
    report.add_argument("--collaborative-set", dest="collaborative_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="sasrec-cf option for collaborative tokenizers, e.g. dim=32")
    report.add_argument("--collisions", default="none", help="dedup-token, none, random-pick (default none)")
    report.add_argument("--data-dir", default=None)
    report.add_argument("--runs-dir", default=None, help="reports are stored in <runs-dir>/sids/ (default runs/)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    sids.set_defaults(group_help=sids.print_help)
    return {"datasets": cmd_datasets, "methods": cmd_methods, "sids": cmd_sids}


def cmd_datasets(args: argparse.Namespace, argv=None) -> int:
    from harness.data import leave_one_out
    from harness.data.cards import DEFAULT_BASE_URL, card_paths, data_root, fetch, file_status, load_card
    from harness.data.loaders import load_dataset

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
        for line in fetch(card, root, args.base_url or DEFAULT_BASE_URL):
            print(line)
        return 0
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
    print(f"split_id (leave-one-out): {leave_one_out(dataset, card.protocol).split_id}")
    if card.notes:
        print(f"notes: {card.notes.strip()}")
    return 0


def cmd_methods(args: argparse.Namespace, argv=None) -> int:
    from harness import registry
    rows = []
    for name, cls in sorted(registry.available().items()):
        rows.append([name, cls.paper, ", ".join(cls.needs) or "-", "yes" if cls.has_score() else "no",
                     cls.__module__])
    print(tabulate(rows, headers=["method", "paper", "needs", "score()", "module"]))
    return 0


def cmd_sids(args: argparse.Namespace, argv=None) -> int:
    if args.action == "compare":
        return cmd_sids_compare(args)
    if args.action != "report":
        args.group_help()
        return 0
    return cmd_sids_report(args)


def cmd_sids_compare(args: argparse.Namespace) -> int:
    from harness.board.results import records_for
    from harness.board.tables import render, tokenizer_rows
    from harness.errors import HarnessError
    results = read_results(args, args.dataset)
    groups = records_for(results, args.methods.split(",") if args.methods else None)
    rows = tokenizer_rows(groups)
    if not rows:
        raise HarnessError(f"no run records with a tokenizer report for dataset {args.dataset!r}"
                           + (f" in track {args.track!r}" if args.track else "") + " (generative methods store one)")
    print(render(rows, args.format))
    return 0


def cmd_sids_report(args: argparse.Namespace) -> int:
    from harness.board.store import default_runs_dir
    from harness.config import parse_overrides
    from harness.sid.report import dataset_sid_report

    report, path = dataset_sid_report(
        args.dataset, args.tokenizer, args.embedder, args.levels, args.width, args.seed, args.collisions,
        tokenizer_options=parse_overrides(args.overrides), embedder_options=parse_overrides(args.embedder_overrides),
        collaborative_options=parse_overrides(args.collaborative_overrides), data_dir=args.data_dir,
        out_dir=Path(args.runs_dir) if args.runs_dir else default_runs_dir())
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    emb_info, tok_info, seconds = report["embedder"], report["tokenizer"], report["seconds"]
    embed = "cached" if emb_info["cached"] else f"{seconds['embed']:.1f}s"
    fit = "cached" if tok_info["cached"] else f"{seconds['fit']:.1f}s"
    print(f"{report['dataset']}: {report['items']} items; embedder {args.embedder} (dim {emb_info['dim']}, {embed}); "
          f"tokenizer {args.tokenizer} {'x'.join(map(str, report['widths']))} ({fit})")
    print(tabulate([[l["level"], f"{l['utilisation']:.3f}", l["entropy_bits"], l["entropy_ratio"], l["prefix_fanout"]]
                    for l in report["per_level"]],
                   headers=["level", "utilisation", "entropy (bits)", "entropy / max", "prefix fan-out"]))
    recon = "n/a" if report["recon_error"] is None else f"{report['recon_error']:.4f}"
    print(f"unique SIDs {report['unique_sids']} / {report['items']}  collision rate {report['collision_rate']:.4f}  "
          f"mean group {report['mean_group_size']}  reconstruction MSE {recon}")
    for line in collision_lines(report, args.tokenizer):
        print(line)
    print(tabulate([[n["prefix_len"], n["same_prefix"], n["chance"], n["lift"]] for n in report["neighbourhood"]],
                   headers=["prefix length", "consecutive pairs sharing it", "chance", "lift"]))
    print(f"report stored in {path}")
    return 0


def _collision_figures(figures: dict[str, Any]) -> str:
    groups = figures.get("collision_groups")
    return (f"items in collision groups {figures['items_in_collisions']}"
            + (f" ({groups} groups)" if groups is not None else "")
            + f", largest group {figures['largest_group']} items"
            + (f", unique SIDs {figures['unique_sids']}" if "unique_sids" in figures else ""))


def collision_lines(report: dict[str, Any], tokenizer: str) -> list[str]:
    """The report's collision lines: items in collision groups and the largest group of the tokenizer's codes
    (before any collision strategy), what the strategy does with them, and for LETTER the same figures before and
    after its collision-resolution rounds."""
    table = report.get("collisions") or {}
    figures = {"items_in_collisions": report["items_in_collisions"], "largest_group": report["largest_group"],
               "collision_groups": table.get("collision_groups")}
    lines = [f"collisions: {_collision_figures(figures)}"]
    strategy = table.get("strategy")
    if strategy == "dedup-token":
        lines.append("  strategy dedup-token: a counter level numbers the items of each group, so every SID is unique")
    elif strategy == "none":
        lines.append("  strategy none: a generated SID yields its whole group (item_recall / item_ndcg credit it in "
                     "expectation)")
    elif strategy == "random-pick":
        lines.append(f"  strategy random-pick: each SID resolves to one member; {table.get('unreachable_items', 0)} "
                     "items unreachable")
    resolution = report.get("collision_resolution")
    if resolution:
        lines.append(f"{tokenizer} collision resolution: {resolution['rounds_run']} of "
                     f"{resolution['rounds_allowed']} rounds run")
        lines.append(f"  before resolution: {_collision_figures(resolution['before'])}")
        lines.append(f"  after resolution:  {_collision_figures(resolution['after'])}")
    elif tokenizer == "letter":
        lines.append("letter collision resolution: the figures before it are not in this cached entry (computed "
                     "before they were kept; clear $HARNESS_CACHE_DIR/sids to refit)")
    return lines
