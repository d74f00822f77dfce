"""Optuna tuning on validation only, with an equal trial budget per method, then the best config over the track's seeds.

Trials are runs with `evaluate_test=False`: the referee never evaluates the test targets for them, so the objective
(which reads the trial's record) has nothing test-derived to read. Intermediate validation metrics feed the pruner.
Several workers (processes or machines) share a study through its storage: a SQLite file by default, or any
Optuna RDB URL (e.g. PostgreSQL).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import optuna
import sqlalchemy.exc
from joblib import Parallel, delayed
from optuna.trial import TrialState

from harness import registry
from harness.board.store import RunStore
from harness.errors import ConfigError, RunPruned
from harness.run.referee import run
from harness.run.spec import RunSpec
from harness.schema import EVALUATED
from harness.studies.backends import engine

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PRUNER = {"n_startup_trials": 3, "n_warmup_steps": 2}


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Search-space YAML → Optuna suggestions. Types: categorical (choices), int/float (low, high, log, step)."""
    params = {}
    for name, spec in space.items():
        kind = spec.get("type")
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))
        elif kind == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))
        else:
            raise ConfigError(f"search space entry {name!r} has unknown type {kind!r} (categorical, int, float)")
    return params


def _fits(spec: dict[str, Any], value: Any) -> bool:
    """Whether a default value lies inside its search-space entry (else the sampler picks that parameter)."""
    if spec.get("type") == "categorical":
        return value in spec["choices"]
    if not isinstance(value, (int, float)) or not spec["low"] <= value <= spec["high"]:
        return False
    return not (spec.get("log") and value <= 0)


def default_storage(store: RunStore) -> str:
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store.runs_dir / 'optuna.db'}"


def study_name(spec: RunSpec, metric: str, space: dict[str, dict[str, Any]] | None = None) -> str:
    """method--dataset--track--metric, then a digest of the search space: a study never mixes trials of two spaces."""
    space = space or registry.get(spec.method).search_space
    digest = hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:8]
    return f"{spec.method}--{spec.dataset}--{spec.track or 'notrack'}--{metric}--{digest}"


def tune(spec: RunSpec, trials: int, store: RunStore, metric: str = "ndcg@10", storage: str | None = None,
         name: str | None = None, sampler_seed: int = 0, space: dict[str, dict[str, Any]] | None = None
         ) -> optuna.Study:
    """Run trials until the study holds `trials` finished ones (shared across workers). Returns the study.
    `space`: the search space (a track's, e.g. at its pinned model sizes); default the plugin's."""
    method_cls = registry.get(spec.method)
    space = space or method_cls.search_space
    if not space:
        raise ConfigError(f"method {spec.method!r} declares no search space; nothing to tune")
    storage = storage or default_storage(store)
    name = name or study_name(spec, metric, space)
    # workers starting together race to create the storage's schema (a table created meanwhile: IntegrityError on
    # SQLite, DuplicateTable, a ProgrammingError, on PostgreSQL): retry
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                                        pruner=optuna.pruners.MedianPruner(**PRUNER))
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError,
                optuna.exceptions.DuplicatedStudyError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    if study.trials and study.user_attrs.get("search_space") != space:
        raise ConfigError(f"study {name!r} in {storage} searched another space than {spec.method}'s here "
                          f"({study.user_attrs.get('search_space')}): name a new study (--study)")
    if not study.trials:
        # provenance every final record carries (best_spec): what was searched, and how
        study.set_user_attr("search_space", space)
        study.set_user_attr("sampler", f"TPE, seed {sampler_seed}")
        study.set_user_attr("pruner", f"median ({PRUNER['n_startup_trials']} startup trials, "
                                      f"{PRUNER['n_warmup_steps']} warm-up validations)")
        # The plugin's defaults (as this track configures them) are always the first trial.
        defaults = {**method_cls.default_config, **spec.track_overrides, **spec.overrides}
        study.enqueue_trial({k: defaults[k] for k in space if k in defaults and _fits(space[k], defaults[k])},
                            skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)

        def report(step: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[metric], step)
            if trial.should_prune():
                raise RunPruned(f"{metric}={metrics[metric]:.4f} below the median of earlier trials")

        trial_spec = dataclasses.replace(spec, overrides={**spec.overrides, **params}, evaluate_test=False,
                                         purpose="tune", on_validate=report,
                                         extra={"study": {"name": name, "trial": trial.number}})
        record = run(trial_spec, store)
        trial.set_user_attr("run_id", record["run_id"])
        trial.set_user_attr("pid", os.getpid())
        if record["status"] == "pruned":
            raise optuna.TrialPruned()
        if record["status"] not in EVALUATED:
            trial.set_user_attr("failure", f"{record['status']}: {record['failure']}")
            raise RuntimeError(f"trial run {record['run_id']} {record['status']}: {record['failure']}")
        return record["metrics"]["valid"][metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, catch=(RuntimeError,),
                   callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED)])
    return study


def _tune_worker(spec: RunSpec, trials: int, store_url: str, runs_dir: str, metric: str, storage: str, name: str,
                 sampler_seed: int, space: dict[str, dict[str, Any]] | None) -> int:
    tune(spec, trials, RunStore(store_url, runs_dir), metric, storage, name, sampler_seed, space)
    return os.getpid()


def tune_workers(spec: RunSpec, trials: int, store: RunStore, workers: int, backend: str = "loky",
                 scheduler: str | None = None, metric: str = "ndcg@10", storage: str | None = None,
                 name: str | None = None, sampler_seed: int = 0,
                 space: dict[str, dict[str, Any]] | None = None) -> optuna.Study:
    """`workers` Optuna workers on one study in its storage (an RDB: every worker reads and writes the same trials),
    each with its own sampler seed, run by the backend's engine (local processes or a dask cluster)."""
    storage = storage or default_storage(store)
    name = name or study_name(spec, metric, space)
    args = [(spec, trials, store.url, str(store.runs_dir), metric, storage, name, sampler_seed + i, space)
            for i in range(workers)]
    with engine(backend, scheduler) as client:
        if client is not None:
            client.gather([client.submit(_tune_worker, *a, pure=False) for a in args])
        else:
            Parallel(n_jobs=workers)(delayed(_tune_worker)(*a) for a in args)
    study = optuna.load_study(study_name=name, storage=storage)
    if workers > 1:  # each worker sampled with its own seed
        study.set_user_attr("sampler", f"TPE, seeds {sampler_seed}-{sampler_seed + workers - 1} (one per worker)")
    return study


def best_spec(study: optuna.Study, spec: RunSpec, metric: str) -> RunSpec:
    """The evaluation spec for the study's best trial, carrying the tuning provenance into every seed's record."""
    finished = [t for t in study.trials if t.state in FINISHED]
    tuning = {"study": study.study_name, "trials": len(finished), "metric": metric,
              "best_trial": study.best_trial.number, "best_valid": study.best_value, "params": study.best_params,
              **{k: study.user_attrs[k] for k in ("search_space", "sampler", "pruner") if k in study.user_attrs}}
    return dataclasses.replace(spec, overrides={**spec.overrides, **study.best_params},
                               extra={**spec.extra, "tuning": tuning})
