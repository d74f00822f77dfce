"""One run = method × dataset × seed × budget (× track) → a run record (DESIGN §6), stored.

The protocol is the referee: it holds the test targets, hands the plugin a `TrainView` without them, enforces the
budget from outside, evaluates on test exactly once after fit, and measures latency itself.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import random
import resource
import subprocess
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

import harness
from harness import registry
from harness.api import Budget, Method, TrainView
from harness.config import config_hash, merge_config
from harness.data import load_card, load_dataset, make_split
from harness.errors import BudgetExceeded, NonFiniteLoss, RunPruned
from harness.evaluate import DEFAULT_KS, EvaluationError, evaluate_method
from harness.store import RunStore

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunSpec:
    method: str
    dataset: str
    seed: int = 0
    budget_seconds: float | None = None
    max_epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # the user's --set (and tuned values)
    track_overrides: dict[str, Any] = field(default_factory=dict)  # the track's pins for this method
    protocol: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    ks: Sequence[int] = DEFAULT_KS
    track: str | None = None
    device: str = "auto"
    data_dir: str | None = None
    latency_users: int = 100
    throughput_batch: int = 256
    command: str | None = None
    evaluate_test: bool = True  # False for tuning trials: the test targets are then never touched
    purpose: str = "eval"  # "eval" runs go on the board; "tune" runs are trials of a study
    on_validate: Callable[[int, dict[str, float]], None] | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # stored in the record as is (e.g. tuning provenance)


class Validator:
    """The `validate()` callback: validation metrics by the harness's evaluator. Holds validation data only."""

    def __init__(self, evaluate: Callable[[Method], Any],
                 hook: Callable[[int, dict[str, float]], None] | None = None):
        self._evaluate = evaluate
        self._hook = hook
        self._start = time.monotonic()
        self.curve: list[dict[str, float]] = []

    def __call__(self, method: Method) -> dict[str, float]:
        result = self._evaluate(method)
        self.curve.append({"call": len(self.curve) + 1, "elapsed_s": round(time.monotonic() - self._start, 3),
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
    if split.protocol["name"] == "labelled":
        from harness.evaluate_labelled import evaluate_labelled
        return lambda method: evaluate_labelled(method, part, n_items, ks, exclude_history, **options)
    return lambda method: evaluate_method(method, part.histories, part.targets, n_items, ks, exclude_history,
                                          desc=desc or stage, users=part.users, **options)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Watchdog:
    """Raises BudgetExceeded inside the fitting thread once the hard deadline passes."""

    def __init__(self, seconds: float | None):
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._thread_id = threading.get_ident()
        self._timer = None
        if seconds is not None:
            self._timer = threading.Timer(seconds, self._fire)
            self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(BudgetExceeded))

    def __enter__(self):
        if self._timer:
            self._timer.start()
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._done = True
        if self._timer:
            self._timer.cancel()
        return False


def _git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _hardware(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def measure_latency(method: Method, histories: Sequence[np.ndarray], k: int, n_users: int, batch: int,
                    device: torch.device, users: np.ndarray | None = None,
                    exposures: Sequence[Any] | None = None) -> dict[str, Any]:
    """p50/p95/p99 of `recommend` per user at batch 1 after warm-up, and users/s at batch `batch`."""
    if not histories:
        return {}
    rng = np.random.default_rng(0)
    picks = rng.choice(len(histories), size=min(n_users, len(histories)), replace=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pass_users = getattr(method, "uses_user_ids", False) and users is not None
    pass_exposures = getattr(method, "uses_exposures", False) and exposures is not None

    def kw(index):
        out = {"users": np.asarray(users)[index]} if pass_users else {}
        if pass_exposures:
            out["exposures"] = [exposures[i] for i in index]
        return out
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
                          getattr(method_cls, "recipes", None))
    card = load_card(spec.dataset)
    dataset = load_dataset(card, spec.data_dir, **spec.dataset_options)
    protocol = dict(spec.protocol) if spec.protocol.get("name", card.protocol.get("name")) != card.protocol.get("name") \
        else {**card.protocol, **spec.protocol}
    split = make_split(dataset, protocol)
    return Prepared(method_cls, config, card, dataset, split)


def run(spec: RunSpec, store: RunStore | None = None, prepared: Prepared | None = None) -> dict[str, Any]:
    """Execute one run and store its record. User errors (unknown names, bad data, bad config) raise HarnessError
    before anything is stored; a failing plugin yields a stored `failed` record."""
    prepared = prepared or prepare(spec)
    method_cls, config, card, dataset, split = (prepared.method_cls, prepared.config, prepared.card,
                                                prepared.dataset, prepared.split)
    exclude_history = bool(split.protocol["exclude_history"])
    store = store or RunStore()
    device = resolve_device(spec.device)

    started = datetime.now(timezone.utc)
    run_id = f"{started.strftime('%Y%m%dT%H%M%S')}-{spec.method}-{card.name}-s{spec.seed}-{uuid.uuid4().hex[:6]}"
    record: dict[str, Any] = {
        "run_id": run_id, "status": "ok", "failure": None,
        "method": spec.method, "method_config": config, "config_overrides": spec.overrides,
        "method_config_hash": config_hash(config),
        "paper": method_cls.paper,
        "dataset": card.name, "dataset_fingerprint": dataset.fingerprint(), "split_id": split.split_id,
        "protocol": split.protocol, "track": spec.track, "seed": spec.seed,
        "budget": {"seconds": spec.budget_seconds, "max_epochs": spec.max_epochs},
        "used": {}, "metrics": {}, "diagnostics": {}, "latency": {}, "curves": {},
        "eval": {"ks": list(spec.ks), "n_items": dataset.n_items, "users": int(len(split.test.users)),
                 "full_catalogue": True, "exclude_history": exclude_history},
        "params": None, "peak_memory": {},
        "versions": {"harness": harness.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "git_sha": _git_sha(), "hardware": _hardware(device),
        "metric_version": harness.METRIC_VERSION, "protocol_version": harness.PROTOCOL_VERSION,
        "purpose": spec.purpose, **spec.extra,
        "command": spec.command, "started_at": started.isoformat(), "finished_at": None,
    }
    per_user: dict[str, dict[str, np.ndarray]] = {}

    seed_everything(spec.seed)
    labelled = split.protocol["name"] == "labelled"
    validator = Validator(stage_evaluator(split, "valid", dataset.n_items, spec.ks, desc="validate"), spec.on_validate)
    view = TrainView(sequences=split.train_sequences, n_items=dataset.n_items, items=dataset.items,
                     text_fields=dataset.text_fields, validate=validator, device=device, seed=spec.seed,
                     work_dir=store.run_dir(run_id) / "work", dataset=card.name,
                     exposures=split.train_exposures if labelled else None, users=getattr(dataset, "users", None),
                     protocol=split.protocol)
    budget = Budget(spec.budget_seconds, spec.max_epochs)
    hard_limit = None if spec.budget_seconds is None else spec.budget_seconds + max(2.0, 0.05 * spec.budget_seconds)
    method: Method | None = None
    fit_start = time.monotonic()
    try:
        method = method_cls(config)
        budget.start()
        with _Watchdog(hard_limit) as watchdog:
            method.fit(view, budget)
        if watchdog.fired:
            raise BudgetExceeded()
    except BudgetExceeded:
        record["status"] = "over_budget"
        record["failure"] = f"stopped by the harness after {time.monotonic() - fit_start:.1f}s " \
                            f"(budget {spec.budget_seconds}s)"
    except RunPruned as exc:
        record["status"], record["failure"] = "pruned", f"pruned after validation round {len(validator.curve)}: {exc}"
    except NonFiniteLoss as exc:
        record["status"], record["failure"] = "failed", f"NonFiniteLoss: {exc}"
    except Exception as exc:  # the plugin's fault: recorded, never raised past the referee
        record["status"], record["failure"] = "failed", f"{type(exc).__name__} in fit: {exc}"
        record["diagnostics"]["traceback"] = traceback.format_exc(limit=8)
    train_seconds = time.monotonic() - fit_start
    if record["status"] == "ok" and spec.budget_seconds is not None and train_seconds > hard_limit:
        record["status"], record["failure"] = "over_budget", f"fit took {train_seconds:.1f}s " \
                                                             f"(budget {spec.budget_seconds}s)"
    record["used"] = {"train_seconds": round(train_seconds, 3), "epochs": budget.epochs_done, "device": str(device)}
    record["curves"]["validation"] = validator.curve
    record["features"] = view.provenance

    if record["status"] == "ok":
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
    record["peak_memory"] = _peak_memory_mb(device)
    record["finished_at"] = datetime.now(timezone.utc).isoformat()
    store.save(record, per_user)
    return record
