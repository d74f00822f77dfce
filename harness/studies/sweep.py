"""`harness sweep`: a track (or a sweep file) expanded into runs — methods × datasets × seeds × config variants —
and executed through a joblib backend: `loky` (local processes, the default), `dask` (a dask.distributed cluster:
on a laptop, a cluster, or SLURM through dask-jobqueue) or `ray` (`ray.util.joblib`). No scheduler of our own: the
engine places the runs, the store (a shared SQLAlchemy URL for several machines) holds what finished.

A run already finished in the store (an evaluated record of the same configuration, split, epoch cap, track and
seed, under a safety cap it fits in: `finished_seeds`) is skipped, so re-issuing a sweep does only what is missing;
a run interrupted after a checkpoint continues from it (`checkpoint_every`), with the metrics of an uninterrupted run.

A sweep file (YAML):

    track: smoke                       # the pins every run gets
    methods: [pop, sasrec]             # default: every method the track pins, and pop
    datasets: [synthetic]              # default: the track's
    seeds: 3                           # a count or a list; default: the track's
    variants:                          # optional: named --set overrides, per method or for all ("*")
      sasrec: {bce: {loss: bce}}
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from joblib import Parallel, delayed
from tqdm import tqdm

from harness.board.store import RunStore
from harness.config import config_hash
from harness.errors import ConfigError, HarnessError
from harness.studies.backends import engine, jobs_for
from harness.run.referee import prepare, run
from harness.run.spec import RunSpec
from harness.run.tracks import Track, load_track
from harness.studies.seeds import finished_seeds, parse_seeds

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """The runs of a sweep, each a RunSpec under the track's pins; `label` names its variant."""
    specs: list[RunSpec]
    labels: list[str]


@dataclass
class SweepResult:
    records: list[dict[str, Any]] = field(default_factory=list)  # the runs done now
    skipped: list[str] = field(default_factory=list)  # labels of runs already finished in the store
    lost: list[tuple[str, str]] = field(default_factory=list)  # (label, why) of runs whose worker the engine lost
    interrupted: str | None = None  # why the engine stopped before every run had finished

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.lost and self.interrupted is None


def expand(track: Track, methods: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
           seeds: Any = None, variants: dict[str, dict[str, dict[str, Any]]] | None = None,
           **asked: Any) -> Sweep:
    """methods × datasets × variants × seeds, every run under the track's pins (what is asked laid over them)."""
    methods = list(methods or ["pop", *track.method_overrides])
    datasets = list(datasets or track.datasets)
    for dataset in datasets:
        track.check_dataset(dataset)
    specs, labels = [], []
    for dataset in datasets:
        for method in methods:
            seed_list = parse_seeds(seeds, default=track.seeds_for(method))
            named = {**(variants or {}).get("*", {}), **(variants or {}).get(method, {})} or {"": {}}
            for variant, overrides in named.items():
                for seed in seed_list:
                    specs.append(RunSpec.for_track(track, method, dataset, seed=seed, overrides=dict(overrides),
                                                   command=f"harness sweep --track {track.name}", **asked))
                    labels.append(f"{method}{f'[{variant}]' if variant else ''} {dataset} s{seed}")
    return Sweep(specs, labels)


def load_sweep_file(path: str | Path, **asked: Any) -> Sweep:
    """A sweep file (see the module's doc) → its runs."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sweep file {path} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"track", "methods", "datasets", "seeds", "variants"}
    if unknown or "track" not in spec:
        raise ConfigError(f"sweep file {path}: needs `track:`; allowed keys are track, methods, datasets, seeds, "
                          f"variants" + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    variants = spec.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError(f"sweep file {path}: `variants:` maps a method (or '*') to {{name: {{key: value}}}}")
    return expand(load_track(spec["track"]), spec.get("methods"), spec.get("datasets"), spec.get("seeds"),
                  variants, **asked)


def _todo(sweep: Sweep, store: RunStore) -> tuple[list[int], list[str]]:
    """Indices of the runs still to do; labels of those the store already has. User errors surface here, before any
    worker starts."""
    todo, skipped, done_by_key = [], [], {}
    for index, spec in enumerate(sweep.specs):
        prepared = prepare(spec)
        key = (spec.method, prepared.split.split_id, config_hash(prepared.config), spec.track, spec.budget_seconds,
               spec.max_epochs)
        if key not in done_by_key:
            done_by_key[key] = finished_seeds(store, spec, prepared.split.split_id, key[2])
        if spec.seed in done_by_key[key]:
            skipped.append(sweep.labels[index])
        else:
            todo.append(index)
    return todo, skipped


def _run_one(spec: RunSpec, store_url: str, runs_dir: str) -> dict[str, Any]:
    return run(dataclasses.replace(spec, resume=True), RunStore(store_url, runs_dir))


def run_sweep(sweep: Sweep, store: RunStore, backend: str = "loky", n_jobs: int | None = None,
              scheduler: str | None = None, address: str | None = None) -> SweepResult:
    """Every run of the sweep not yet finished in the store, through the backend; a bar over runs. A run that
    fails is a `failed` record and the others go on; a worker the engine loses (killed, out of memory) ends the
    sweep with `interrupted` set: re-issue it to do what is missing."""
    todo, skipped = _todo(sweep, store)
    result = SweepResult(skipped=skipped)
    if skipped:
        log.warning("%d of %d runs already finished in the store: skipped", len(skipped), len(sweep.specs))
    if not todo:
        return result
    first = sweep.specs[todo[0]]
    jobs = jobs_for(backend, n_jobs, len(todo), first.device, first.threads)
    with engine(backend, scheduler, address) as client, \
            tqdm(total=len(todo), desc="sweep", unit="run", disable=None) as bar:
        if client is not None:  # dask: one future per run, each lost run reported on its own
            from dask.distributed import as_completed
            futures = {client.submit(_run_one, sweep.specs[i], store.url, str(store.runs_dir), pure=False): i
                       for i in todo}
            for future in as_completed(futures):
                try:
                    result.records.append(future.result())
                except Exception as exc:  # noqa: BLE001 - a worker died under the run (killed, out of memory)
                    result.lost.append((sweep.labels[futures[future]], f"{type(exc).__name__}: {exc}"))
                bar.update()
            return result
        tasks = (delayed(_run_one)(sweep.specs[i], store.url, str(store.runs_dir)) for i in todo)
        try:
            for record in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks):
                result.records.append(record)
                bar.update()
        except HarnessError:
            raise
        except Exception as exc:  # the engine lost a worker: the finished runs are stored, the rest is missing
            result.interrupted = f"{type(exc).__name__}: {exc}"
    return result
