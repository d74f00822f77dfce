"""The referee: one run = method × dataset × seed × budget (× track) → a run record (DESIGN §6), stored.

It holds the test targets, hands the plugin a `TrainView` without them (with the training interactions and the SID
provider), enforces the budget from outside, evaluates on test exactly once after fit, and measures latency itself.
"""
from __future__ import annotations

import ctypes
import logging
import random
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np
import torch

from harness import registry
from harness.api import Budget, Method, TrainView
from harness.board.store import RunStore
from harness.config import merge_config
from harness.data import load_card, load_dataset, make_split
from harness.data.interactions import TrainInteractions
from harness.data.protocols import is_labelled, resolve
from harness.errors import BudgetExceeded, ConfigError, EvaluationError, NonFiniteLoss, RunPruned
from harness.run.evaluate import evaluate_method, plugin_kwargs
from harness.run.evaluate_labelled import evaluate_labelled
from harness.run.record import new_record, new_run_id, peak_memory_mb
from harness.run.spec import RunSpec
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Watchdog:
    """Raises BudgetExceeded inside the fitting thread once the budget's clock (paused stages excluded) passes the
    hard limit."""

    POLL_SECONDS = 0.1

    def __init__(self, budget: Budget, limit: float | None):
        self.fired = False
        self._budget = budget
        self._limit = limit
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread_id = threading.get_ident()
        self._thread = None if limit is None else threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        # raised again at every poll until fit returns: a plugin that swallows the exception does not escape it
        while not self._done.wait(self.POLL_SECONDS):
            if self._budget.elapsed >= self._limit:
                with self._lock:
                    if self._done.is_set():
                        return
                    self.fired = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id),
                                                               ctypes.py_object(BudgetExceeded))

    def __enter__(self):
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._done.set()
        return False


def measure_latency(method: Method, histories: Sequence[np.ndarray], k: int, n_users: int, batch: int,
                    device: torch.device, users: np.ndarray | None = None,
                    exposures: Sequence[Any] | None = None) -> dict[str, Any]:
    """p50/p95/p99 of `recommend` per user at batch 1 after warm-up, and users/s at batch `batch`."""
    if not histories:
        return {}
    rng = np.random.default_rng(0)
    picks = rng.choice(len(histories), size=min(n_users, len(histories)), replace=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def kw(index):
        return plugin_kwargs(method, None if users is None else np.asarray(users)[index],
                             None if exposures is None else [exposures[i] for i in index])
    times = []
    with torch.no_grad():
        for i in picks[:3]:  # warm-up
            method.recommend([histories[i]], k, **kw([i]))
        for i in picks:
            sync()
            start = time.perf_counter()
            method.recommend([histories[i]], k, **kw([i]))
            sync()
            times.append((time.perf_counter() - start) * 1000)
        chosen = rng.choice(len(histories), size=min(batch, len(histories)), replace=False)
        chunk = [histories[i] for i in chosen]
        sync()
        start = time.perf_counter()
        method.recommend(chunk, k, **kw(chosen))
        sync()
        elapsed = time.perf_counter() - start
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
            "users_per_s": round(len(chunk) / elapsed, 1), "batch": len(chunk), "k": k, "device": str(device)}


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
    config = merge_config(method_cls.default_config, {**spec.track_overrides, **spec.overrides}, spec.method,
                          method_cls.recipes)
    resolve_device(spec.device)  # an unknown or absent device is a user error, before anything runs
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


def run(spec: RunSpec, store: RunStore | None = None, prepared: Prepared | None = None) -> dict[str, Any]:
    """Execute one run and store its record. User errors (unknown names, bad data, bad config) raise HarnessError
    before anything is stored; a failing plugin yields a stored `failed` record. The run uses the spec's threads
    (a track pins them) and gives the caller's back afterwards."""
    prepared = prepared or prepare(spec)
    threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        return _referee(spec, store or RunStore(), prepared)
    finally:
        torch.set_num_threads(threads)


def _referee(spec: RunSpec, store: RunStore, prepared: Prepared) -> dict[str, Any]:
    method_cls, config, card, dataset, split = (prepared.method_cls, prepared.config, prepared.card,
                                                prepared.dataset, prepared.split)
    device = resolve_device(spec.device)
    started = datetime.now(timezone.utc)
    run_id = new_run_id(spec, card.name, started)
    record = new_record(spec, run_id, started, method_cls.paper, config, card.name, dataset.fingerprint(), split,
                        dataset.n_items, device)
    per_user: dict[str, dict[str, np.ndarray]] = {}
    seed_everything(spec.seed)
    labelled = is_labelled(split.protocol)
    budget = Budget(spec.budget_seconds, spec.max_epochs)
    validator = Validator(stage_evaluator(split, "valid", dataset.n_items, spec.ks, desc="validate"), budget,
                          spec.on_validate)
    view = TrainView(sequences=split.train_sequences, n_items=dataset.n_items,
                     items=dataset.items, text_fields=dataset.text_fields, validate=validator, device=device,
                     seed=spec.seed, work_dir=store.run_dir(run_id) / "work", dataset=card.name,
                     exposures=split.train_exposures if labelled else None, users=dataset.users,
                     protocol=split.protocol, interactions=TrainInteractions.from_split(split, dataset.n_items),
                     sid_provider=semantic_ids, pause=budget.paused, timed=dataset.timed)
    hard_limit = None if spec.budget_seconds is None else spec.budget_seconds + max(2.0, 0.05 * spec.budget_seconds)
    method: Method | None = None
    fit_start, cpu_start = time.monotonic(), time.process_time()
    watchdog = _Watchdog(budget, hard_limit)
    try:
        method = method_cls(config)
        budget.start()
        with watchdog:
            method.fit(view, budget)
        if watchdog.fired:
            raise BudgetExceeded()
    except BudgetExceeded:
        record["status"] = "over_budget"
        record["failure"] = f"stopped by the harness after {budget.elapsed:.1f}s of training " \
                            f"(safety cap {spec.budget_seconds}s)"
    except RunPruned as exc:
        record["status"], record["failure"] = "pruned", f"pruned after validation round {len(validator.curve)}: {exc}"
    except NonFiniteLoss as exc:
        record["status"], record["failure"] = "failed", f"NonFiniteLoss: {exc}"
    except Exception as exc:  # the plugin's fault: recorded, never raised past the referee
        if watchdog.fired:  # the harness's stop, caught and re-raised as something else by the plugin
            record["status"] = "over_budget"
            record["failure"] = f"stopped by the harness after {budget.elapsed:.1f}s of training " \
                                f"(safety cap {spec.budget_seconds}s; the plugin turned the stop into {type(exc).__name__})"
        else:
            record["status"], record["failure"] = "failed", f"{type(exc).__name__} in fit: {exc}"
            record["diagnostics"]["traceback"] = traceback.format_exc(limit=8)
    train_seconds = budget.elapsed  # what the clock was charged: stages and validation excluded
    if record["status"] == "ok" and spec.budget_seconds is not None:
        if train_seconds > hard_limit:
            record["status"], record["failure"] = "over_budget", f"fit took {train_seconds:.1f}s " \
                                                                 f"(safety cap {spec.budget_seconds}s)"
        elif train_seconds >= spec.budget_seconds:  # the clock, not the epochs or early stopping, ended training
            record["status"] = "budget_bound"
            record["failure"] = (f"the {spec.budget_seconds:g}s safety cap ended training after "
                                 f"{budget.epochs_done} epochs: not converged, not ranked")
    stages = view.provenance.get("stages", [])
    record["used"] = {"train_seconds": round(train_seconds, 3), "epochs": budget.epochs_done, "device": str(device),
                      "wall_seconds": round(time.monotonic() - fit_start, 3),
                      "cpu_seconds": round(time.process_time() - cpu_start, 3),
                      "stage_seconds": round(sum(s["seconds"] for s in stages), 3),
                      "validations": len(validator.curve), "threads": torch.get_num_threads()}
    record["curves"]["validation"] = validator.curve
    record["features"] = view.provenance

    if record["status"] in EVALUATED:
        try:
            with torch.no_grad():
                valid = stage_evaluator(split, "valid", dataset.n_items, spec.ks, desc="validate")(method)
                record["metrics"] = {"valid": _round(valid.metrics)}
                record["eval"]["mode"] = valid.mode
                record["diagnostics"].update({f"valid_{k}": v for k, v in valid.diagnostics.items()})
                per_user = {"valid": valid.per_user, "users": {"index": split.valid.users}}
                if spec.evaluate_test:  # once, after fit; never for tuning trials
                    test = stage_evaluator(split, "test", dataset.n_items, spec.ks)(method)
                    record["metrics"]["test"] = _round(test.metrics)
                    record["diagnostics"].update(test.diagnostics)
                    per_user["test"] = test.per_user
            record["diagnostics"].update(method.diagnostics())
            record["latency"] = measure_latency(method, split.valid.histories, max(spec.ks), spec.latency_users,
                                                spec.throughput_batch, device, split.valid.users,
                                                split.valid.exposures if labelled else None)
        except (EvaluationError, NotImplementedError) as exc:
            record["status"], record["failure"] = "failed", f"{type(exc).__name__} in evaluation: {exc}"
        except Exception as exc:
            record["status"], record["failure"] = "failed", f"{type(exc).__name__} in recommend/score: {exc}"
            record["diagnostics"]["traceback"] = traceback.format_exc(limit=8)
    if method is not None:
        record["params"] = method.parameters_count()
    record["peak_memory"] = peak_memory_mb(device)
    record["finished_at"] = datetime.now(timezone.utc).isoformat()
    store.save(record, per_user)
    return record
