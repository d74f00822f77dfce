"""`harness` console script."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Any, Sequence

from tabulate import tabulate

from harness import plugin_cli
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
    run.add_argument("--dataset", default=None, help="dataset card name or path to a card .yaml "
                     "(default: synthetic, or every dataset of --track)")
    run.add_argument("--seed", type=int, default=None, help="seed for init, data order and sampling (default 0)")
    run.add_argument("--seeds", default=None, help="several seeds: a count (5 → 0..4) or a list (0,1,2); run in "
                     "parallel processes where cores and memory allow; seeds with an ok record are skipped")
    run.add_argument("--jobs", type=int, default=None, help="parallel processes for --seeds (default: by cores/memory)")
    run.add_argument("--force", action="store_true", help="with --seeds: rerun seeds that already have ok records")
    run.add_argument("--budget", default=None, help="training wall-clock budget, e.g. 90s, 20m, 1h (default: none)")
    run.add_argument("--epochs", type=int, default=None, help="cap on training epochs")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a method config value (repeatable), e.g. --set loss=bce")
    run.add_argument("--data-set", dest="data_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a dataset option, e.g. --data-set n_users=300 for synthetic")
    run.add_argument("--exclude-history", action="store_true",
                     help="exclude history items from ranking (a protocol parameter; default: not excluded)")
    run.add_argument("--protocol", default=None, choices=["leave-one-out", "labelled"],
                     help="evaluation protocol (default: the card's, leave-one-out); labelled = rated exposures, "
                     "label = rating >= threshold, AUC/gAUC beside retrieval (cards with ratings only)")
    run.add_argument("--protocol-set", dest="protocol_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="protocol parameter, e.g. --protocol-set threshold=4 --protocol-set test_exposures=10")
    run.add_argument("--ks", type=_ks, default=None, help="metric cut-offs (default 5,10,20,50 or the track's)")
    run.add_argument("--track", default=None, help="run under a track's pins (datasets, protocol, budget, device, "
                     "cut-offs, seeds, method sizes); see leaderboards/tracks/")
    run.add_argument("--device", default=None, help="auto (GPU if present; the default), cpu, cuda, cuda:1 ...")
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

    sids = sub.add_parser("sids", help="Semantic-ID tools", description="Semantic-ID tools.")
    ssub = sids.add_subparsers(dest="action", metavar="ACTION")
    report = ssub.add_parser("report", help="fit (or load cached) SIDs for a dataset and print their diagnostics",
                             description="Per-level utilisation and entropy, unique SIDs, collisions, prefix fan-out, "
                             "reconstruction error and neighbourhood agreement with training transitions.")
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

    tune = sub.add_parser("tune", help="Optuna tuning on validation, then the best config over the track's seeds",
                          description="TPE over the plugin's search space; objective on validation only; defaults "
                          "enqueued first; median pruning on intermediate validation metrics.")
    tune.add_argument("--method", required=True)
    tune.add_argument("--track", required=True)
    tune.add_argument("--dataset", required=True)
    tune.add_argument("--trials", type=int, default=None, help="finished trials in the study (default: the track's)")
    tune.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/optuna.db); share "
                      "it between workers on several machines, e.g. postgresql://...")
    tune.add_argument("--study", default=None, help="study name (default: method--dataset--track--metric)")
    tune.add_argument("--sampler-seed", type=int, default=0, help="TPE seed (give each worker its own)")
    tune.add_argument("--no-final", action="store_true", help="only tune; do not run the best config on test")
    tune.add_argument("--seeds", default=None, help="seeds of the final evaluation (default: the track's)")
    tune.add_argument("--data-dir", default=None)
    tune.add_argument("--store", default=None)
    tune.add_argument("--runs-dir", default=None)

    ablate = sub.add_parser("ablate", help="run a method and its declared ablation variants over seeds on one split, "
                            "then print the paper-shaped tables with paired tests",
                            description="Variants and tables come from the plugin's YAML (`ablations:`); seeds "
                            "that already have records are reused, so a second call only prints.")
    ablate.add_argument("--method", required=True)
    ablate.add_argument("--dataset", required=True)
    ablate.add_argument("--track", default=None, help="run under a track's pins (protocol, budget, sizes, seeds)")
    ablate.add_argument("--protocol", default=None, choices=["leave-one-out", "labelled"])
    ablate.add_argument("--protocol-set", dest="protocol_overrides", action="append", default=[], metavar="KEY=VALUE")
    ablate.add_argument("--seeds", default=None, help="a count or a list (default: the track's seeds, else 3)")
    ablate.add_argument("--jobs", type=int, default=None, help="parallel processes per variant")
    ablate.add_argument("--budget", default=None)
    ablate.add_argument("--epochs", type=int, default=None)
    ablate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to every variant")
    ablate.add_argument("--data-set", dest="data_overrides", action="append", default=[], metavar="KEY=VALUE")
    ablate.add_argument("--variants", default=None, help="comma-separated subset of the variants to run")
    ablate.add_argument("--force", action="store_true", help="rerun seeds that already have records")
    ablate.add_argument("--format", default="md", choices=["md", "plain", "latex", "csv", "json"])
    ablate.add_argument("--device", default=None)
    ablate.add_argument("--data-dir", default=None)
    ablate.add_argument("--store", default=None)
    ablate.add_argument("--runs-dir", default=None)

    plugin_cli.add_commands(sub)  # new-method, validate-plugin, submit, reproduce
    return parser


def make_spec(args: argparse.Namespace, dataset: str, argv: Sequence[str]):
    """A RunSpec from CLI flags, under the track's pins when --track is given (flags still win)."""
    from harness.config import parse_budget, parse_overrides
    from harness.protocol import RunSpec
    from harness.tracks import load_track

    overrides = parse_overrides(getattr(args, "overrides", []))
    data_options = parse_overrides(getattr(args, "data_overrides", []))
    protocol = {"exclude_history": True} if getattr(args, "exclude_history", False) else {}
    if getattr(args, "protocol", None):
        protocol["name"] = args.protocol
    protocol.update(parse_overrides(getattr(args, "protocol_overrides", None) or []))
    budget = getattr(args, "budget", None)
    spec = RunSpec(method=args.method, dataset=dataset, overrides=overrides, dataset_options=data_options,
                   protocol=protocol, data_dir=args.data_dir,
                   command="harness " + " ".join(shlex.quote(a) for a in argv))
    if args.track:
        track = load_track(args.track)
        track.check_dataset(dataset)
        spec.track = track.name
        spec.budget_seconds = track.budget_seconds
        spec.max_epochs = track.max_epochs
        spec.protocol = {**track.protocol, **protocol}
        spec.dataset_options = {**track.dataset_options.get(dataset, {}), **data_options}
        spec.ks = list(track.ks)
        spec.device = track.device
        spec.track_overrides = dict(track.method_overrides.get(args.method, {}))
        from harness.registry import get as get_method
        if "embedder" in get_method(args.method).default_config:  # the track pins the embedder of SID methods
            spec.track_overrides.setdefault("embedder", track.embedder)
    if budget is not None:
        spec.budget_seconds = parse_budget(budget)
    if getattr(args, "epochs", None) is not None:
        spec.max_epochs = args.epochs
    if getattr(args, "ks", None):
        spec.ks = args.ks
    if getattr(args, "device", None):
        spec.device = args.device
    return spec


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.multiseed import parse_seeds, run_seeds
    from harness.protocol import run
    from harness.stats import seed_summary
    from harness.store import RunStore
    from harness.tables import pool_views
    from harness.tracks import load_track

    track = load_track(args.track) if args.track else None
    datasets = [args.dataset] if args.dataset else (track.datasets if track else ["synthetic"])
    store = RunStore(args.store, args.runs_dir)
    if args.seeds is not None and args.seed is not None:
        from harness.errors import ConfigError
        raise ConfigError("give either --seed or --seeds, not both")
    multi = args.seeds is not None or (track is not None and args.seed is None)
    failed = 0
    for dataset in datasets:
        spec = make_spec(args, dataset, argv)
        if not multi:
            spec.seed = args.seed or 0
            records = [run(spec, store)]
        else:
            seeds = parse_seeds(args.seeds, default=track.seeds if track else 1)
            records = run_seeds(spec, seeds, store, n_jobs=args.jobs, resume=not args.force)
        for record in records:
            if args.json:
                print(json.dumps(record, indent=2, sort_keys=True))
            else:
                print(summary(record))
                views = pool_views(record)
                if views:
                    print(f"\nthe same beam pool, three ways (Gryphon Table 2):\n{views}")
            if record["status"] != "ok":
                failed += 1
                print(f"error: run {record['run_id']} {record['status']}: {record['failure']}", file=sys.stderr)
        ok = [r for r in records if r["status"] == "ok"]
        if len(records) > 1 and ok and not args.json:
            rows = []
            for name in ok[0]["metrics"]["test"]:
                s = seed_summary([r["metrics"]["test"][name] for r in ok])
                rows.append([name, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]"])
            print(f"\n{args.method} on {dataset}: {len(ok)}/{len(records)} seeds ok")
            print(tabulate(rows, headers=["metric", "mean", "std", "95% CI (t)"]))
    return 1 if failed else 0


def _results(args: argparse.Namespace, dataset: str | None):
    from harness.results import load_results
    from harness.store import RunStore
    store = None if args.no_store else RunStore(args.store, args.runs_dir)
    results = load_results(track=args.track, dataset=dataset, store=store, published=not args.no_published,
                           include_stale=args.include_stale)
    for problem in results.broken:
        print(f"warning: {problem}", file=sys.stderr)
    if results.stale:
        print(f"note: {len(results.stale)} stale record(s) (older metric/protocol version) left out; "
              f"--include-stale shows them", file=sys.stderr)
    return results


def _primary(args: argparse.Namespace) -> tuple[str, list[int]]:
    from harness.tracks import load_track
    if args.track:
        track = load_track(args.track)
        return track.primary_metric, list(track.ks)
    return "ndcg@10", [5, 10, 20, 50]


def cmd_ablate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness import registry
    from harness.ablations import ablation_tables, run_ablations
    from harness.multiseed import parse_seeds
    from harness.store import RunStore
    from harness.tables import render
    from harness.tracks import load_track

    track = load_track(args.track) if args.track else None
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(track.seeds if track else 3))
    store = RunStore(args.store, args.runs_dir)
    spec = make_spec(args, args.dataset, argv)
    only = [v.strip() for v in args.variants.split(",")] if args.variants else None
    records = run_ablations(spec, seeds, store, args.jobs, args.force, only)
    failed = {name: [r["seed"] for r in recs if r["status"] != "ok"] for name, recs in records.items()}
    records = {name: [r for r in recs if r["status"] == "ok"] for name, recs in records.items()}
    split_ids = {r["split_id"] for recs in records.values() for r in recs}
    print(f"{args.method} on {args.dataset}: split {', '.join(sorted(s[:12] for s in split_ids))}, seeds {seeds}")
    for name, bad in failed.items():
        if bad:
            print(f"note: {name}: seeds {bad} did not finish ok (see their records)")
    for title, rows in ablation_tables(registry.get(args.method), records,
                                       lambda r: store.per_user(r["run_id"]).get("test")):
        print(f"\n{title}\n")
        print(render(rows, args.format))
    return 0


def cmd_sids_compare(args: argparse.Namespace) -> int:
    from harness.results import records_for
    from harness.tables import render, tokenizer_rows
    results = _results(args, args.dataset)
    groups = records_for(results, args.methods.split(",") if args.methods else None)
    rows = tokenizer_rows(groups)
    if not rows:
        raise HarnessError(f"no run records with a tokenizer report for dataset {args.dataset!r}"
                           + (f" in track {args.track!r}" if args.track else "") + " (generative methods store one)")
    print(render(rows, args.format))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.results import records_for
    from harness.tables import compare_rows, render
    results = _results(args, args.dataset)
    labels = records_for(results, args.methods.split(",") if args.methods else None)
    if not labels:
        raise HarnessError(f"no ok records for dataset {args.dataset!r}"
                           + (f" in track {args.track!r}" if args.track else "") + "; run `harness run` first")
    metric = args.metric or _primary(args)[0]
    rows = compare_rows(results, labels, metric, args.test, args.correction, args.alpha)
    print(render(rows, args.format))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.tables import leaderboard_rows, render
    results = _results(args, args.dataset)
    if not results.records:
        raise HarnessError(f"no ok records for dataset {args.dataset!r}"
                           + (f" in track {args.track!r}" if args.track else "") + "; run `harness run` first")
    primary, ks = _primary(args)
    print(render(leaderboard_rows(results, ks, primary, args.correction, args.alpha), args.format))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path
    from harness.results import LEADERBOARDS_DIR, export_board, load_results
    from harness.store import RunStore
    from harness.tables import leaderboard_rows, render
    from harness.tracks import load_track
    if not args.track and not args.dataset:
        raise HarnessError("export needs --track, or --dataset for runs made outside any track")
    track = load_track(args.track) if args.track else None
    out = Path(args.out) if args.out else LEADERBOARDS_DIR
    for dataset in [args.dataset] if args.dataset else track.datasets:
        results = load_results(track=args.track, dataset=dataset, store=RunStore(args.store, args.runs_dir),
                               published=not args.no_published)
        if track is None:  # runs made outside any track go to leaderboards/untracked/
            results.records = [r for r in results.records if r.get("track") is None]
        if not results.records:
            print(f"{dataset}: no ok records, nothing exported")
            continue
        ks, primary = (track.ks, track.primary_metric) if track else ([5, 10, 20, 50], "ndcg@10")
        table = render(leaderboard_rows(results, ks, primary, args.correction, args.alpha), "md")
        path = export_board(results, track.name if track else "untracked", dataset, out, table)
        print(f"{dataset}: {len(results.records)} records → {path}")
    return 0


def cmd_sids_report(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from harness.config import parse_overrides
    from harness.data import leave_one_out, load_card, load_dataset
    from harness.features import embed_items
    from harness.sid import TOKENIZERS, TrainInteractions, build_table, fit_codes, sid_report
    from harness.store import default_runs_dir

    card = load_card(args.dataset)
    dataset = load_dataset(card, args.data_dir)
    split = leave_one_out(dataset, card.protocol)
    train = TrainInteractions.from_split(split, dataset.n_items)  # behaviour-derived inputs: training split only
    start = time.perf_counter()
    x, emb_info = embed_items(dataset.items, dataset.text_fields, args.embedder, train,
                              **parse_overrides(args.embedder_overrides))
    collaborative = None
    if getattr(TOKENIZERS.get(args.tokenizer), "uses_collaborative", False):
        collaborative, _ = embed_items(dataset.items, dataset.text_fields, "sasrec-cf", train,
                                       **parse_overrides(args.collaborative_overrides))
    embed_s = time.perf_counter() - start
    options = {"levels": args.levels, "width": args.width, "seed": args.seed, **parse_overrides(args.overrides)}
    if args.tokenizer == "index-file":
        options = {k: v for k, v in options.items() if k not in ("levels", "width")}
    start = time.perf_counter()
    codes, tok_info = fit_codes(x, args.tokenizer, collaborative, **options)
    fit_s = time.perf_counter() - start
    table = build_table(codes.codes, codes.widths, args.collisions, args.seed)
    report = sid_report(codes.codes, codes.widths, codes.recon_error, train)
    report.update({"dataset": card.name, "split_id": split.split_id, "embedder": emb_info, "tokenizer": tok_info,
                   "collisions": {"strategy": args.collisions, **table.info},
                   "seconds": {"embed": round(embed_s, 2), "fit": round(fit_s, 2)}})
    out = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    (out / "sids").mkdir(parents=True, exist_ok=True)
    path = out / "sids" / f"{card.name}-{args.tokenizer}-{tok_info['key'][:12]}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"{card.name}: {dataset.n_items} items; embedder {args.embedder} (dim {emb_info['dim']}, "
          f"{'cached' if emb_info['cached'] else f'{embed_s:.1f}s'}); tokenizer {args.tokenizer} "
          f"{'x'.join(map(str, codes.widths))} ({'cached' if tok_info['cached'] else f'{fit_s:.1f}s'})")
    print(tabulate([[l["level"], f"{l['utilisation']:.3f}", l["entropy_bits"], l["entropy_ratio"], l["prefix_fanout"]]
                    for l in report["per_level"]],
                   headers=["level", "utilisation", "entropy (bits)", "entropy / max", "prefix fan-out"]))
    recon = "n/a" if report["recon_error"] is None else f"{report['recon_error']:.4f}"
    print(f"unique SIDs {report['unique_sids']} / {report['items']}  collision rate {report['collision_rate']:.4f}  "
          f"items in collisions {report['items_in_collisions']}  largest group {report['largest_group']}  "
          f"mean group {report['mean_group_size']}  reconstruction MSE {recon}")
    print(tabulate([[n["prefix_len"], n["same_prefix"], n["chance"], n["lift"]] for n in report["neighbourhood"]],
                   headers=["prefix length", "consecutive pairs sharing it", "chance", "lift"]))
    print(f"report stored in {path}")
    return 0


def cmd_tune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.multiseed import parse_seeds, run_seeds
    from harness.store import RunStore
    from harness.tracks import load_track
    from harness.tune import best_spec, tune
    track = load_track(args.track)
    store = RunStore(args.store, args.runs_dir)
    spec = make_spec(args, args.dataset, argv)
    metric = track.tuning.get("metric", track.primary_metric)
    trials = args.trials or int(track.tuning.get("trials", 20))
    study = tune(spec, trials, store, metric, args.storage, args.study, args.sampler_seed)
    finished = [t for t in study.trials if t.state.is_finished()]
    print(f"study {study.study_name}: {len(finished)} finished trials; best valid {metric} "
          f"{study.best_value:.4f} with {study.best_params}")
    if args.no_final:
        return 0
    final = best_spec(study, spec, metric)
    records = run_seeds(final, parse_seeds(args.seeds, default=track.seeds), store)
    for record in records:
        print(summary(record))
    return 0 if all(r["status"] == "ok" for r in records) else 1


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
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "leaderboard":
            return cmd_leaderboard(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "tune":
            return cmd_tune(args, argv)
        if args.command == "ablate":
            return cmd_ablate(args, argv)
        if args.command in plugin_cli.COMMANDS:
            return plugin_cli.dispatch(args, argv)
        if args.command == "sids":
            if args.action == "compare":
                return cmd_sids_compare(args)
            if args.action != "report":
                parser.parse_args(["sids", "--help"])
            return cmd_sids_report(args)
        parser.print_help()
        return 0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0


if __name__ == "__main__":
    sys.exit(main())
