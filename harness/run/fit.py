"""How fit runs, wherever the plugin runs: in its worker process (the default: the referee's clock, the worker
killed at the hard limit) or, for debugging, in the referee's own process (a watchdog thread raises the stop).
Either way the outcome is a `Fitted`: the fitted plugin (or its `RemoteMethod`), how fit ended, what it drew."""
from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.api import Budget, TrainView
from harness.errors import BudgetExceeded, ConfigError, NonFiniteLoss, RunPruned
from harness.run.evaluate import EVAL_BATCH
from harness.run.isolation import RemoteMethod, Worker, WorkerDied, worker_environ
from harness.run.spec import RunSpec
from harness.run.worker import from_wire


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


@dataclass
class Fitted:
    """How fit ended, wherever the plugin ran."""
    method: Any = None  # the fitted plugin (isolation none) or its RemoteMethod
    status: str = "ok"
    failure: str | None = None
    traceback: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    time_bound: bool = False  # the plugin's clock said exhausted when fit returned
    threads: list[str] = field(default_factory=list)
    cpu_seconds: float | None = None  # CPU time of fit in the plugin's worker (None: the referee's own process)
    worker: Worker | None = None


def _stopped(budget: Budget, spec: RunSpec) -> str:
    return f"stopped by the harness after {budget.elapsed:.1f}s of training (safety cap {spec.budget_seconds}s)"


def fit_here(method_cls: type, config: dict[str, Any], view: TrainView, budget: Budget, spec: RunSpec,
              hard_limit: float | None) -> Fitted:
    """Isolation `none`: the plugin in the referee's own process, stopped by an exception from a watchdog thread."""
    out = Fitted()
    watchdog = _Watchdog(budget, hard_limit)
    try:
        out.method = method_cls(config)
        budget.start()
        with watchdog:
            out.method.fit(view, budget)
        if watchdog.fired:
            raise BudgetExceeded()
    except BudgetExceeded:
        out.status, out.failure = "over_budget", _stopped(budget, spec)
    except RunPruned as exc:
        out.status, out.failure = "pruned", str(exc)
    except NonFiniteLoss as exc:
        out.status, out.failure = "failed", f"NonFiniteLoss: {exc}"
    except Exception as exc:  # the plugin's fault: recorded, never raised past the referee
        if watchdog.fired:  # the harness's stop, caught and re-raised as something else by the plugin
            out.status = "over_budget"
            out.failure = _stopped(budget, spec)[:-1] + f"; the plugin turned the stop into {type(exc).__name__})"
        else:
            out.status, out.failure = "failed", f"{type(exc).__name__} in fit: {exc}"
            out.traceback = traceback.format_exc(limit=8)
    out.provenance, out.time_bound = view.provenance, budget.exhausted()
    return out


def fit_in_worker(mode: str, plugin: str, config: dict[str, Any], view: dict[str, Any], validator: Callable[[Any], dict[str, float]],
                   budget: Budget, spec: RunSpec, hard_limit: float | None, device: torch.device,
                   valid: dict[str, Any], sandbox: dict[str, list[Path]],
                   checkpoint: Callable[[bytes], None] | None = None) -> Fitted:
    """Isolation `process` / `sandbox`: the plugin in a worker that gets the view and nothing else. The clock is
    the referee's own (less validation and the stages the worker announces); at the hard limit the worker is
    killed."""
    out = Fitted()
    setup = {"plugin": plugin, "config": config, "view": view, "seed": spec.seed, "threads": spec.threads,
             "device": str(device), "budget_seconds": spec.budget_seconds, "max_epochs": spec.max_epochs,
             "environ": worker_environ(), "valid": valid, "sys_path": list(sys.path), "memory_mb": spec.memory_mb}
    pauses = contextlib.ExitStack()

    def watch() -> None:
        if hard_limit is not None and budget.elapsed >= hard_limit:
            out.worker.kill()
            raise BudgetExceeded()
    try:
        # a full-catalogue score block of the evaluator's batch, in float32
        out.worker = Worker(mode, **sandbox, block_bytes=EVAL_BATCH * view["n_items"] * 4)
        blocks = out.worker.blocks
        setup["blocks"] = None if blocks is None else (blocks.path, blocks.size)
        out.worker.send(("fit", setup))
        remote = RemoteMethod(out.worker, {}, spec.method)
        while True:
            message = out.worker.recv(watch)
            if message[0] == "started":
                budget.start()
            elif message[0] == "pause":
                pauses.enter_context(budget.paused())
            elif message[0] == "resume":
                pauses.close()
            elif message[0] == "checkpoint":
                if checkpoint is not None:
                    checkpoint(message[1])
            elif message[0] == "validate":
                budget.epochs_done = message[1]
                remote.update(from_wire(message[2]))
                out.worker.send(("validated", validator(remote)))
            elif message[0] == "fitted":
                info = from_wire(message[1])
                budget.epochs_done = info["epochs"]
                remote.update(info["state"])
                out.method, out.provenance = remote, info["provenance"]
                out.time_bound, out.threads = info["exhausted"], info["threads"]
                out.cpu_seconds = info["cpu_seconds"]
                return out
            else:  # ("fit_error", type, message, traceback, non-finite, epochs)
                _, name, text, tb, non_finite, epochs = message
                budget.epochs_done = epochs
                out.status = "failed"
                out.failure = f"NonFiniteLoss: {text}" if non_finite else f"{name} in fit: {text}"
                if name == "MemoryError" and spec.memory_mb:
                    out.failure += f" (the run's memory cap is {spec.memory_mb} MB)"
                out.traceback = None if non_finite else tb
                return out
    except BudgetExceeded:
        out.status, out.failure = "over_budget", _stopped(budget, spec) + ": its worker process was killed"
    except RunPruned as exc:
        out.status, out.failure = "pruned", str(exc)
    except WorkerDied as exc:
        out.status, out.failure = "failed", f"{exc} during fit"
    except Exception as exc:  # raised by the harness's validation of the plugin's answers: the plugin's fault
        out.status, out.failure = "failed", f"{type(exc).__name__} in fit: {exc}"
        out.traceback = getattr(exc, "traceback", None) or traceback.format_exc(limit=8)
    finally:
        pauses.close()
    return out


def plugin_path(cls: type) -> str:
    """`module:QualName`, by which the worker imports the plugin; a class it cannot import is a user error."""
    if "<locals>" in cls.__qualname__:
        raise ConfigError(f"plugin class {cls.__qualname__} is defined inside a function: its worker process cannot "
                          f"import it; define it at module level (or run with --isolation none to debug)")
    return f"{cls.__module__}:{cls.__qualname__}"
