"""The referee: one run = method × dataset × seed × budget (× track) → a run record (DESIGN §6), stored.

It holds the test targets, hands the plugin a `TrainView` without them (with the training interactions and the SID
provider), enforces the budget from outside, evaluates on test exactly once after fit, and measures latency itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from harness import registry
from harness.api import Budget, Method, TrainView
from harness.board.store import DEFAULT_RUNS_DIR, RunStore, default_runs_dir
from harness.data import data_root, load_card, load_dataset, make_split
from harness.data.interactions import TrainInteractions
from harness.data.protocols import is_labelled, resolve
from harness.engines.training import PRECISIONS
from harness.errors import ConfigError, EvaluationError
from harness.features.cache import cache_dir
from harness.paths import LEADERBOARDS_DIR, SHARED_DATASETS, TRACKS_DIR
from harness.run.evaluate import evaluate_method
from harness.run.evaluate_labelled import evaluate_labelled
from harness.run.fit import Fitted, fit_here, fit_in_worker, plugin_path
from harness.run.isolation import RemoteError, RemoteMethod, WorkerDied, resolve_mode, unaccounted_work
from harness.run.record import new_record, new_run_id, peak_memory_mb
from harness.run.spec import RunSpec
from harness.run.worker import measure_latency, seed_everything
from harness.schema import EVALUATED
from harness.sid import semantic_ids

log = logging.getLogger(__name__)


class Validator:
    """The `validate()` callback: validation metrics by the harness's evaluator. Holds validation data only."""

    def __init__(self, evaluate: Callable[[Method], Any], budget: Budget,
                 hook: Callable[[int, dict[str, float]], None] | None = None):
        self._evaluate = evaluate
        self._budget = budget
        self._hook = hook
        self._start = time.monotonic()
        self.curve: list[dict[str, float]] = []

    def __call__(self, method: Method) -> dict[str, float]:
        with self._budget.paused():  # the harness's evaluation (and a tuner's hook) is not the method's training
            with torch.no_grad():
                result = self._evaluate(method)
            return self._record(result)

    def _record(self, result: Any) -> dict[str, float]:
        self.curve.append({"call": len(self.curve) + 1, "epoch": self._budget.epochs_done,
                           "elapsed_s": round(time.monotonic() - self._start, 3),
                           **{k: round(v, 6) for k, v in result.metrics.items()}})
        log.info("validation %d at %.0fs: recall@10 %.4f ndcg@10 %.4f", len(self.curve), self.curve[-1]["elapsed_s"],
                 result.metrics.get("recall@10", float("nan")), result.metrics.get("ndcg@10", float("nan")))
        if self._hook is not None:
            self._hook(len(self.curve), result.metrics)
        return result.metrics


def stage_evaluator(split, stage: str, n_items: int, ks: Sequence[int], desc: str | None = None,
                    **options: Any) -> Callable[[Method], Any]:
    """Evaluation of one stage (valid/test) under the split's protocol, as a function of the fitted method."""
    part = getattr(split, stage)
    exclude_history = bool(split.protocol["exclude_history"])
    if is_labelled(split.protocol):
        return lambda method: evaluate_labelled(method, part, n_items, ks, exclude_history, **options)
    return lambda method: evaluate_method(method, part.histories, part.targets, n_items, ks, exclude_history,
                                          desc=desc or stage, users=part.users, **options)


def resolve_device(name: str) -> torch.device:
    """auto (a GPU where there is one), cpu, cuda or cuda:N; anything else, or CUDA without a GPU, is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch build sees no CUDA GPU (torch {torch.__version__}); "
                          f"use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def _round(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}


@dataclass
class Prepared:
    method_cls: type
    config: dict[str, Any]
    card: Any
    dataset: Any
    split: Any


def prepare(spec: RunSpec) -> Prepared:
    """Resolve the method and its config, load and verify the data, split it. Raises HarnessError on user errors."""
    method_cls = registry.get(spec.method)
    config = spec.method_config()
    resolve_device(spec.device)  # an unknown or absent device is a user error, before anything runs
    if resolve_mode(spec.isolation) != "none":
        plugin_path(method_cls)  # a class its worker cannot import: a user error too
    check_spec(spec)
    card = load_card(spec.dataset)
    dataset = load_dataset(card, spec.data_dir, **spec.dataset_options)
    split = make_split(dataset, resolve(card.protocol, spec.protocol))
    if max(spec.ks) > dataset.n_items:
        raise ConfigError(f"cut-off {max(spec.ks)} is larger than the catalogue ({dataset.n_items} items of "
                          f"{card.name}); pick --ks up to {dataset.n_items}")
    return Prepared(method_cls, config, card, dataset, split)


def check_spec(spec: RunSpec) -> None:
    """Budgets that cannot mean anything are refused rather than stored as runs."""
    if spec.max_epochs is not None and spec.max_epochs < 1:
        raise ConfigError(f"--epochs {spec.max_epochs}: the epoch cap must be at least 1")
    if spec.budget_seconds is not None and spec.budget_seconds <= 0:
        raise ConfigError(f"budget of {spec.budget_seconds:g}s: a safety cap must be positive (or none)")
    if not spec.ks or min(spec.ks) < 1:
        raise ConfigError(f"cut-offs {list(spec.ks)}: each must be at least 1")
    if spec.precision not in PRECISIONS:
        raise ConfigError(f"--precision {spec.precision}: use one of {', '.join(PRECISIONS)}")


class Observer(Protocol):
    """What the plugin validator watches of a run: the training view it was given and the fitted plugin, which it
    may check and wrap (to keep its outputs) before the referee evaluates it."""

    def given(self, view: dict[str, Any]) -> None: ...

    def fitted(self, method: Any, time_bound: bool) -> Any: ...


def run(spec: RunSpec, store: RunStore | None = None, prepared: Prepared | None = None,
        observer: Observer | None = None) -> dict[str, Any]:
    """Execute one run and store its record. User errors (unknown names, bad data, bad config) raise HarnessError
    before anything is stored; a failing plugin yields a stored `failed` record. The run uses the spec's threads (a
    track pins them: torch's and the BLAS / OpenMP pools', whose sums depend on them) and gives the caller's back."""
    prepared = prepared or prepare(spec)
    threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        with threadpool_limits(spec.threads) if spec.threads else contextlib.nullcontext():
            return _referee(spec, store or RunStore(), prepared, observer)
    finally:
        torch.set_num_threads(threads)


def _hidden_from_plugins(spec: RunSpec, store: RunStore) -> list[Path]:
    """What a sandboxed plugin must not read: data roots, run stores, the published boards, the harness's caches of
    downloaded data (the feature cache inside them stays writable)."""
    return [data_root(spec.data_dir), SHARED_DATASETS, LEADERBOARDS_DIR, store.runs_dir, default_runs_dir(),
            Path(DEFAULT_RUNS_DIR), Path("~/.cache/gr-harness").expanduser()]


def _referee(spec: RunSpec, store: RunStore, prepared: Prepared, observer: Observer | None) -> dict[str, Any]:
    method_cls, config, card, dataset, split = (prepared.method_cls, prepared.config, prepared.card,
                                                prepared.dataset, prepared.split)
    device = resolve_device(spec.device)
    mode = resolve_mode(spec.isolation)
    started = datetime.now(timezone.utc)
    run_id = new_run_id(spec, card.name, started)
    record = new_record(spec, run_id, started, method_cls.paper, config, card.name, dataset.fingerprint(), split,
                        dataset.n_items, device, method_cls.peer, method_cls.peer_of)
    record["isolation"] = mode
    per_user: dict[str, dict[str, np.ndarray]] = {}
    seed_everything(spec.seed)
    labelled = is_labelled(split.protocol)
    budget = Budget(spec.budget_seconds, spec.max_epochs)
    validator = Validator(stage_evaluator(split, "valid", dataset.n_items, spec.ks, desc="validate"), budget,
                          spec.on_validate)
    work_dir = Path(tempfile.mkdtemp(prefix="harness-work-"))  # the plugin's own folder, removed after the run
    checkpoints = Checkpoints(store, spec, record["method_config_hash"], split.split_id, validator)
    restored = checkpoints.restore(record) if spec.resume else None
    view = dict(sequences=split.train_sequences, n_items=dataset.n_items, items=dataset.items,
                text_fields=dataset.text_fields, seed=spec.seed, work_dir=work_dir, dataset=card.name,
                exposures=split.train_exposures if labelled else None, users=dataset.users, protocol=split.protocol,
                interactions=TrainInteractions.from_split(split, dataset.n_items), timed=dataset.timed,
                checkpoint_every=spec.checkpoint_every, restored=restored, precision=spec.precision)
    keep = checkpoints.save if spec.checkpoint_every else None
    if observer is not None:
        observer.given(view)
    valid = {"histories": split.valid.histories, "users": split.valid.users,
             "exposures": split.valid.exposures if labelled else None}
    hard_limit = None if spec.budget_seconds is None else spec.budget_seconds + max(2.0, 0.05 * spec.budget_seconds)
    fit_start, cpu_start = time.monotonic(), time.process_time()
    fitted = Fitted()
    try:
        if mode == "none":
            fitted = fit_here(method_cls, config, TrainView(**view, validate=validator, device=device,
                                                             sid_provider=semantic_ids, pause=budget.paused,
                                                             checkpoint=keep),
                              budget, spec, hard_limit)
        else:
            fitted = fit_in_worker(mode, plugin_path(method_cls), config, view, validator, budget, spec,
                                    hard_limit, device, valid,
                                    {"hidden": _hidden_from_plugins(spec, store), "readable": [TRACKS_DIR],
                                     "writable": [work_dir, cache_dir()]}, keep)
        _evaluate(spec, record, per_user, fitted, budget, split, dataset, device, labelled, hard_limit, fit_start,
                  cpu_start, validator, observer)
    finally:
        if fitted.worker is not None:
            fitted.worker.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    record["peak_memory"] = record["peak_memory"] or peak_memory_mb(device)
    record["finished_at"] = datetime.now(timezone.utc).isoformat()
    store.save(record, per_user)
    checkpoints.discard()  # the run has its record: nothing is left to resume
    return record


class Checkpoints:
    """Where an interrupted run's last checkpoint waits for `--resume`: beside the store's runs, keyed by what
    makes two runs the same run (method config, split, seed, track, budget), with the validation curve so far."""

    def __init__(self, store: RunStore, spec: RunSpec, config_hash: str, split_id: str, validator: Validator):
        key = json.dumps([spec.method, config_hash, split_id, spec.seed, spec.track, spec.budget_seconds,
                          spec.max_epochs, spec.purpose], default=str)
        self.path = store.runs_dir / "checkpoints" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.ckpt"
        self.validator = validator

    def save(self, state: bytes) -> None:
        """One file, replaced whole (a kill mid-write leaves the previous one): the validation curve so far as JSON,
        then the plugin's state as opaque bytes, which only the worker unpickles."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        curve = json.dumps(self.validator.curve).encode()
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(len(curve).to_bytes(8, "big") + curve + state)
        os.replace(partial, self.path)

    def restore(self, record: dict[str, Any]) -> bytes | None:
        if not self.path.exists():
            return None
        content = self.path.read_bytes()
        size = int.from_bytes(content[:8], "big")
        self.validator.curve[:] = json.loads(content[8:8 + size])
        record["resumed"] = {"checkpoint": self.path.name, "validations_before": len(self.validator.curve)}
        return content[8 + size:]

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _evaluate(spec: RunSpec, record: dict[str, Any], per_user: dict[str, Any], fitted: Fitted, budget: Budget,
              split: Any, dataset: Any, device: torch.device, labelled: bool, hard_limit: float | None,
              fit_start: float, cpu_start: float, validator: Validator, observer: Observer | None) -> None:
    """The status from how fit ended and what it cost, then (for a run that counts) valid and test metrics,
    latency and the work accounting."""
    record["status"], record["failure"] = fitted.status, fitted.failure
    if fitted.status == "pruned":
        record["failure"] = f"pruned after validation round {len(validator.curve)}: {fitted.failure}"
    if fitted.traceback:
        record["diagnostics"]["traceback"] = fitted.traceback
    train_seconds = budget.elapsed  # what the clock was charged: stages and validation excluded
    if record["status"] == "ok" and fitted.threads:
        record["status"] = "over_budget"
        record["failure"] = (f"{len(fitted.threads)} thread(s) of the plugin still running after fit "
                             f"({', '.join(fitted.threads)}): training belongs inside fit")
    if record["status"] == "ok" and spec.budget_seconds is not None:
        if train_seconds > hard_limit:
            record["status"], record["failure"] = "over_budget", f"fit took {train_seconds:.1f}s " \
                                                                 f"(safety cap {spec.budget_seconds}s)"
        elif train_seconds >= spec.budget_seconds:  # the clock, not the epochs or early stopping, ended training
            record["status"] = "budget_bound"
            record["failure"] = (f"the {spec.budget_seconds:g}s safety cap ended training after "
                                 f"{budget.epochs_done} epochs: not converged, not ranked")
    stages = fitted.provenance.get("stages", [])
    record["used"] = {"train_seconds": round(train_seconds, 3), "epochs": budget.epochs_done, "device": str(device),
                      "wall_seconds": round(time.monotonic() - fit_start, 3),
                      "cpu_seconds": round(time.process_time() - cpu_start if fitted.cpu_seconds is None
                                           else fitted.cpu_seconds, 3),
                      "stage_seconds": round(sum(s["seconds"] for s in stages), 3),
                      "validations": len(validator.curve), "threads": spec.threads or torch.get_num_threads()}
    record["curves"]["validation"] = validator.curve
    record["features"] = fitted.provenance
    method = fitted.method
    if record["status"] in EVALUATED and observer is not None:
        method = observer.fitted(method, fitted.time_bound)
    if record["status"] in EVALUATED:
        try:
            with torch.no_grad():
                valid = stage_evaluator(split, "valid", dataset.n_items, spec.ks, desc="validate")(method)
                record["metrics"] = {"valid": _round(valid.metrics)}
                record["eval"]["mode"] = valid.mode
                record["diagnostics"].update({f"valid_{k}": v for k, v in valid.diagnostics.items()})
                per_user.update({"valid": valid.per_user, "users": {"index": split.valid.users}})
                if spec.evaluate_test:  # once, after fit; never for tuning trials
                    test = stage_evaluator(split, "test", dataset.n_items, spec.ks)(method)
                    record["metrics"]["test"] = _round(test.metrics)
                    record["diagnostics"].update(test.diagnostics)
                    per_user["test"] = test.per_user
            record["diagnostics"].update(method.diagnostics())
            args = (max(spec.ks), spec.latency_users, spec.throughput_batch)
            if isinstance(fitted.method, RemoteMethod):  # measured in the worker; its calls accounted for
                record["latency"] = fitted.method.latency(*args)
                work = fitted.method.work()
                record["peak_memory"] = work["peak_memory"]  # the plugin's process, not the referee's
                _account(record, work, train_seconds, spec, hard_limit)
            else:
                record["latency"] = measure_latency(method, split.valid.histories, *args, device,
                                                    split.valid.users, split.valid.exposures if labelled else None)
        except (EvaluationError, NotImplementedError) as exc:
            record["status"], record["failure"] = "failed", f"{type(exc).__name__} in evaluation: {exc}"
        except WorkerDied as exc:
            record["status"], record["failure"] = "failed", f"{exc} during evaluation"
        except Exception as exc:
            record["status"], record["failure"] = "failed", f"{type(exc).__name__} in recommend/score: {exc}"
            record["diagnostics"]["traceback"] = getattr(exc, "traceback", None) or traceback.format_exc(limit=8)
    if method is not None:
        with contextlib.suppress(WorkerDied, RemoteError):
            record["params"] = method.parameters_count()


def _account(record: dict[str, Any], work: dict[str, Any], train_seconds: float, spec: RunSpec,
             hard_limit: float | None) -> None:
    """Work outside fit's clock (a first call far slower than the rest, training inside validation calls) is
    charged to it; past the hard limit the run is over budget."""
    accounting = unaccounted_work(work.get("calls", []))
    record["used"]["work"] = accounting
    excess = accounting.get("unaccounted_s", 0.0)
    if hard_limit is not None and record["status"] in EVALUATED and train_seconds + excess > hard_limit:
        record["status"] = "over_budget"
        record["failure"] = (f"{accounting['slow_calls']} recommend/score call(s) took {excess:.1f}s more than "
                             f"{accounting['fastest_ms_per_user']:.3f} ms/user (the plugin's own rate after fit) "
                             f"would give: with {train_seconds:.1f}s of fit that is past the "
                             f"{spec.budget_seconds:g}s safety cap (work deferred out of fit)")
