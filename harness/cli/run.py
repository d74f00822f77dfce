"""`harness run`, `harness tune`, `harness ablate`: commands that make runs.

The command modules import the machinery inside their handlers, so that `harness --help` does not load torch.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any, Sequence

from tabulate import tabulate

from harness.errors import ConfigError, HarnessError


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks expects comma-separated integers, got {text!r}") from None
    if not ks:
        raise argparse.ArgumentTypeError("--ks needs at least one cut-off")
    return ks  # whether each is at least 1 and fits the catalogue: the referee checks, for every caller


def add_commands(sub) -> dict[str, Any]:
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
    run.add_argument("--protocol", default=None, metavar="NAME",
                     help="split protocol (default: the card's, leave-one-out); labelled = rated exposures, "
                     "label = rating >= threshold, AUC/gAUC beside retrieval (cards with ratings only); temporal = "
                     "one global cut-off time, training strictly before it (cards with real timestamps)")
    run.add_argument("--protocol-set", dest="protocol_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="protocol parameter, e.g. --protocol-set threshold=4 --protocol-set test_exposures=10")
    run.add_argument("--ks", type=_ks, default=None, help="metric cut-offs (default 5,10,20,50 or the track's)")
    run.add_argument("--track", default=None, help="run under a track's pins (datasets, protocol, budget, device, "
                     "cut-offs, seeds, method sizes); see leaderboards/tracks/")
    run.add_argument("--device", default=None, help="auto (GPU if present; the default), cpu, cuda, cuda:1 ...")
    run.add_argument("--isolation", default=None, metavar="MODE",
                     help="where the plugin runs: sandbox (bubblewrap), process (a worker process of its own) or "
                     "none (the harness's own process: debugging only, never published); default "
                     "$HARNESS_ISOLATION or auto (sandbox where bwrap works, else process)")
    run.add_argument("--precision", default=None, help="fp32 (default) or bf16: training forward passes under bf16 "
                     "autocast, weights and optimiser in fp32 (pays on CPUs with AVX-512-BF16 / AMX, and on CUDA)")
    run.add_argument("--checkpoint-every", type=int, default=None, metavar="EPOCHS",
                     help="keep a checkpoint of the training state every EPOCHS epochs (shared training loop)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint (same "
                     "method, config, data, seed and track); it reaches the metrics of an uninterrupted run")
    run.add_argument("--memory-mb", type=int, default=None, help="cap on the plugin worker's data memory in MB: "
                     "past it allocations fail and the run is recorded failed (default: none)")
    run.add_argument("--data-dir", default=None, help="data root (default: $HARNESS_DATA_DIR, "
                     "../shared/datasets, ~/.cache/gr-harness)")
    run.add_argument("--store", default=None, help="SQLAlchemy URL of the run store (default sqlite:///runs/harness.db)")
    run.add_argument("--runs-dir", default=None, help="folder for run directories (default: runs/)")
    run.add_argument("--json", action="store_true", help="print the full run record as JSON")

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
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="a config value fixed for every trial (e.g. --set epochs=5)")
    tune.add_argument("--workers", type=int, default=1, help="Optuna workers on the one study (each its own sampler "
                      "seed: --sampler-seed + i)")
    tune.add_argument("--backend", default="loky", choices=["loky", "dask"], help="where the workers run: local "
                      "processes, or a dask cluster (--scheduler); several machines need an RDB --storage")
    tune.add_argument("--scheduler", default=None, help="dask scheduler address (default: a local cluster)")
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
    ablate.add_argument("--protocol", default=None, metavar="NAME", help="split protocol: leave-one-out, labelled or temporal")
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
    sweep = sub.add_parser("sweep", help="a track (or a sweep file) as runs through joblib: local processes, a dask "
                           "cluster or Ray; runs the store already has are skipped",
                           description="methods x datasets x seeds x config variants, each run under the track's "
                           "pins. Re-issuing a sweep runs only what is missing (and resumes a run from its "
                           "checkpoint). Exit code 0 when every run is ok.")
    sweep.add_argument("file", nargs="?", default=None, help="a sweep file (YAML: track, methods, datasets, seeds, "
                       "variants); or use --track")
    sweep.add_argument("--track", default=None)
    sweep.add_argument("--methods", default=None, help="comma-separated (default: the track's methods and pop)")
    sweep.add_argument("--datasets", default=None, help="comma-separated (default: the track's)")
    sweep.add_argument("--seeds", default=None, help="a count (5) or a list (0,1,2) (default: the track's)")
    sweep.add_argument("--backend", default="loky", choices=["loky", "dask", "ray"])
    sweep.add_argument("--scheduler", default=None, help="dask scheduler address, e.g. tcp://HOST:8786 (default: a "
                       "local cluster of processes)")
    sweep.add_argument("--address", default=None, help="Ray cluster address (default: auto)")
    sweep.add_argument("--jobs", type=int, default=None, help="runs at once (default: loky by cores and memory, a "
                       "cluster all its workers)")
    sweep.add_argument("--checkpoint-every", type=int, default=None, metavar="EPOCHS",
                       help="checkpoint each run every EPOCHS epochs, so that a re-issued sweep resumes it")
    sweep.add_argument("--device", default=None)
    sweep.add_argument("--data-dir", default=None)
    sweep.add_argument("--store", default=None, help="SQLAlchemy URL of the shared run store (several machines: "
                       "postgresql://...)")
    sweep.add_argument("--runs-dir", default=None)
    return {"run": cmd_run, "tune": cmd_tune, "ablate": cmd_ablate, "sweep": cmd_sweep}


def cmd_sweep(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.board.store import RunStore
    from harness.run.tracks import load_track
    from harness.studies.sweep import expand, load_sweep_file, run_sweep

    asked: dict[str, Any] = {"data_dir": args.data_dir}
    for key in ("device", "checkpoint_every"):
        if getattr(args, key):
            asked[key] = getattr(args, key)
    if args.file and args.track:
        raise ConfigError("give a sweep file or --track, not both")
    if args.file:
        plan = load_sweep_file(args.file, **asked)
    elif args.track:
        split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
        plan = expand(load_track(args.track), split(args.methods), split(args.datasets), args.seeds, **asked)
    else:
        raise ConfigError("harness sweep needs a sweep file or --track NAME")
    store = RunStore(args.store, args.runs_dir)
    result = run_sweep(plan, store, args.backend, args.jobs, args.scheduler, args.address)
    done = len(result.records)
    print(f"sweep: {len(plan.specs)} runs, {len(result.skipped)} already in the store, {done} run now, "
          f"{done - len(result.failures)} ok" + (f", {len(result.lost)} lost" if result.lost else ""))
    for record in result.failures:
        print(f"  {record['status']}: {record['method']} {record['dataset']} seed {record['seed']}: "
              f"{record['failure']}", file=sys.stderr)
    for label, why in result.lost:
        print(f"  lost: {label}: its worker died ({why})", file=sys.stderr)
    if result.lost:
        print(f"error: {len(result.lost)} runs lost their worker: re-issue the same command to run them",
              file=sys.stderr)
    if result.interrupted:
        missing = len(plan.specs) - len(result.skipped) - done
        print(f"error: the sweep was interrupted ({result.interrupted}); {missing} runs did not finish: re-issue the "
              f"same command to run them", file=sys.stderr)
    return 0 if result.ok else 1


def make_spec(args: argparse.Namespace, dataset: str, argv: Sequence[str]):
    """A RunSpec from CLI flags, under the track's pins when --track is given (flags still win)."""
    from harness.config import parse_budget, parse_overrides
    from harness.run.spec import RunSpec
    from harness.run.tracks import load_track
    overrides = parse_overrides(getattr(args, "overrides", []))
    data_options = parse_overrides(getattr(args, "data_overrides", []))
    protocol = {"exclude_history": True} if getattr(args, "exclude_history", False) else {}
    if getattr(args, "protocol", None):
        protocol["name"] = args.protocol
    protocol.update(parse_overrides(getattr(args, "protocol_overrides", None) or []))
    asked: dict[str, Any] = {"overrides": overrides, "dataset_options": data_options, "protocol": protocol,
                             "data_dir": args.data_dir,
                             "command": "harness " + " ".join(shlex.quote(a) for a in argv)}
    if getattr(args, "budget", None) is not None:
        asked["budget_seconds"] = parse_budget(args.budget)
    if getattr(args, "epochs", None) is not None:
        asked["max_epochs"] = args.epochs
    # only what was given
    for key in ("ks", "device", "isolation", "memory_mb", "checkpoint_every", "resume", "precision"):
        if getattr(args, key, None):
            asked[key] = getattr(args, key)
    if args.track:
        track = load_track(args.track)
        track.check_dataset(dataset)
        return RunSpec.for_track(track, args.method, dataset, **asked)
    return RunSpec(method=args.method, dataset=dataset, **asked)


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.board.stats import seed_summary
    from harness.board.store import RunStore
    from harness.board.tables import pool_views
    from harness.run.referee import run
    from harness.run.tracks import load_track
    from harness.studies.seeds import parse_seeds, run_seeds

    track = load_track(args.track) if args.track else None
    datasets = [args.dataset] if args.dataset else (track.datasets if track else ["synthetic"])
    store = RunStore(args.store, args.runs_dir)
    if args.seeds is not None and args.seed is not None:
        raise ConfigError("give either --seed or --seeds, not both")
    multi = args.seeds is not None or (track is not None and args.seed is None)
    failed = 0
    for dataset in datasets:
        spec = make_spec(args, dataset, argv)
        if not multi:
            spec.seed = args.seed or 0
            records = [run(spec, store)]
        else:
            seeds = parse_seeds(args.seeds, default=track.seeds_for(args.method) if track else 1)
            # said before the long part: `--seeds 2` is a count (seeds 0 and 1), `--seeds 2,` seed 2 alone
            print(f"{args.method} on {dataset}: seed{'s' if len(seeds) > 1 else ''} "
                  f"{', '.join(map(str, seeds))}", file=sys.stderr)
            records = run_seeds(spec, seeds, store, n_jobs=args.jobs, resume=not args.force)
        for record in records:
            if args.json:
                print(json.dumps(record, indent=2, sort_keys=True))
            else:
                print(summary(record))
                views = pool_views(record)
                if views:
                    print(f"\nthe same beam pool, three ways (Gryphon Table 2):\n{views}")
            if record["status"] == "budget_bound":
                print(f"warning: run {record['run_id']} budget_bound: {record['failure']}", file=sys.stderr)
            elif record["status"] != "ok":
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


def cmd_tune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.board.store import RunStore
    from harness.run.tracks import load_track
    from harness.studies.seeds import parse_seeds, run_seeds
    from harness.studies.tune import best_spec, tune, tune_workers

    track = load_track(args.track)
    store = RunStore(args.store, args.runs_dir)
    spec = make_spec(args, args.dataset, argv)
    metric = track.tuning.get("metric", track.primary_metric)
    trials = args.trials or int(track.tuning.get("trials", 20))
    if args.workers > 1 or args.backend != "loky":
        study = tune_workers(spec, trials, store, args.workers, args.backend, args.scheduler, metric, args.storage,
                             args.study, args.sampler_seed, track.search_space(spec.method))
    else:
        study = tune(spec, trials, store, metric, args.storage, args.study, args.sampler_seed,
                     track.search_space(spec.method))
    finished = [t for t in study.trials if t.state.is_finished()]
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        failures = sorted({str(t.user_attrs.get("failure") or t.state.name) for t in finished})
        raise HarnessError(f"study {study.study_name}: none of its {len(finished)} trials finished ok ("
                           + "; ".join(failures[:3]) + "); see the trial records in the run store")
    print(f"study {study.study_name}: {len(finished)} finished trials; best valid {metric} "
          f"{study.best_value:.4f} with {study.best_params}")
    if args.no_final:
        return 0
    final = best_spec(study, spec, metric)
    records = run_seeds(final, parse_seeds(args.seeds, default=track.seeds_for(spec.method)), store)
    for record in records:
        print(summary(record))
    return 0 if all(r["status"] in ("ok", "budget_bound") for r in records) else 1


def cmd_ablate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness import registry
    from harness.board.store import RunStore
    from harness.board.tables import render
    from harness.run.tracks import load_track
    from harness.studies.ablations import ablation_tables, run_ablations
    from harness.studies.seeds import parse_seeds

    track = load_track(args.track) if args.track else None
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(track.seeds_for(args.method) if track else 3))
    store = RunStore(args.store, args.runs_dir)
    spec = make_spec(args, args.dataset, argv)
    only = [v.strip() for v in args.variants.split(",")] if args.variants else None
    records = run_ablations(spec, seeds, store, args.jobs, args.force, only)
    failed = {name: [r["seed"] for r in recs if r["status"] != "ok"] for name, recs in records.items()}
    records = {name: [r for r in recs if r["status"] == "ok"] for name, recs in records.items()}
    split_ids = {r["split_id"] for recs in records.values() for r in recs}
    print(f"{args.method} on {args.dataset}: split {', '.join(sorted(s[:12] for s in split_ids))}, seeds {seeds}; "
          f"mean ± sd over seeds, Δ paired over users (Holm-adjusted over each table's metrics)")
    for name, bad in failed.items():
        if bad:
            print(f"note: {name}: seeds {bad} did not finish ok (see their records)")
    for title, rows in ablation_tables(registry.get(args.method), records,
                                       lambda r: store.per_user(r["run_id"]).get("test")):
        print(f"\n{title}\n")
        print(render(rows, args.format))
    return 0


def summary(record: dict[str, Any]) -> str:
    test = record["metrics"].get("test", {})
    valid = record["metrics"].get("valid", {})
    rows = [[name, f"{valid.get(name, float('nan')):.4f}", f"{value:.4f}"] for name, value in test.items()]
    head = (f"run {record['run_id']}  status={record['status']}\n"
            f"method={record['method']} dataset={record['dataset']} seed={record['seed']} "
            f"split_id={record['split_id'][:12]}  train {record['used'].get('train_seconds')}s, "
            f"{record['used'].get('epochs')} epochs on {record['used'].get('device')}, "
            f"plugin isolation: {record.get('isolation')}")
    lat = record.get("latency") or {}
    tail = (f"latency p50 {lat.get('p50_ms')} ms  p99 {lat.get('p99_ms')} ms  {lat.get('users_per_s')} users/s   "
            f"params {record.get('params')}") if lat else ""
    table = tabulate(rows, headers=["metric", "valid", "test"]) if rows else ""
    return "\n".join(part for part in (head, table, tail) if part)
