"""The plugin's side of an isolated run: a process of its own that holds the plugin and what `TrainView` promises,
never the split's held-out items, the evaluator, the store or the record.

The referee (`harness.run.isolation`) starts it clean (a forkserver started before any data was loaded, or a fresh
interpreter inside a sandbox), sends it the training view once, and then drives it over one connection:

    referee → worker   ("fit", setup)                        build the TrainView, fit the plugin
    worker → referee   ("started",)                          the plugin is built: fit (and the clock) begins
                       ("pause",) / ("resume",)              a stage (`train.stage`) began / ended: not charged
                       ("checkpoint", bytes)                 `train.save_checkpoint`: the referee keeps it
                       ("validate", state)                   `train.validate(self)` was called: the referee scores
                                                             the plugin's answers to its ("call", ...) requests and
                                                             replies ("validated", metrics)
                       ("fitted", info) | ("fit_error", ...) fit returned / raised
    referee → worker   ("call", name, args)                  recommend / score / auc / diagnostics / params / latency
    worker → referee   ("result", value) | ("block", shape, dtype) | ("error", ...)   (a block: in shared memory)
    referee → worker   ("close",)

Tensors travel as numpy arrays (copied, never shared storage). The referee keeps its own clock: it kills this
process at the hard limit, whatever the plugin does with its own threads and signals.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import mmap
import os
import random
import resource
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from harness.api import Budget, Method, TopK, TrainView
from harness.errors import NonFiniteLoss
from harness.run.evaluate import plugin_kwargs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def measure_latency(method: Method, histories: Sequence[np.ndarray], k: int, n_users: int, batch: int,
                    device: torch.device, users: np.ndarray | None = None,
                    exposures: Sequence[Any] | None = None) -> dict[str, Any]:
    """p50/p95/p99 of `recommend` per user at batch 1 after warm-up, and users/s at batch `batch`: measured where
    the plugin runs, so that no transport is counted."""
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


# --- what crosses the connection -------------------------------------------------------------------------------------

def to_wire(value: Any) -> Any:
    """Tensors become numpy arrays (by value); TopK a tagged dict; containers recursively."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, TopK):
        return {"__topk__": True, "items": to_wire(value.items), "scores": to_wire(value.scores),
                "extras": {k: to_wire(v) for k, v in (value.extras or {}).items()}}
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_wire(v) for v in value)
    return value


def from_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value) if value.dtype != object else value
    if isinstance(value, dict) and value.get("__topk__"):
        return TopK(items=from_wire(value["items"]), scores=from_wire(value["scores"]),
                    extras={k: from_wire(v) for k, v in value["extras"].items()})
    if isinstance(value, dict):
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


class BlockBuffer:
    """A file in /dev/shm mapped by the referee and the worker: score blocks cross in it, one copy in and one copy
    out, instead of being pickled through the pipe. Made only where /dev/shm has room for it twice over (a full
    /dev/shm would kill the writer with SIGBUS); removed when the worker is closed."""

    def __init__(self, path: str | Path, size: int, create: bool = False):
        self.path, self.size = Path(path), size  # a Path: no data (a content digest of the view skips it)
        with open(path, "r+b" if not create else "w+b") as handle:
            if create:
                handle.truncate(size)
            self.buf = mmap.mmap(handle.fileno(), size)

    @classmethod
    def make(cls, size: int) -> "BlockBuffer | None":
        try:
            free = os.statvfs("/dev/shm")
            if size <= 0 or free.f_bavail * free.f_frsize < 2 * size:
                return None
            fd, path = tempfile.mkstemp(prefix="harness-blocks-", dir="/dev/shm")
            os.close(fd)
            return cls(path, size, create=True)
        except OSError:
            return None

    def close(self, remove: bool = False) -> None:
        self.buf.close()
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def state_of(method: Method | None) -> dict[str, Any]:
    """What the evaluator reads from a plugin besides its answers: its declared flags and the item → SID group map."""
    if method is None:
        return {}
    scorers = method.auc_scorers()
    return {"has_score": type(method).has_score(), "uses_user_ids": bool(method.uses_user_ids),
            "uses_exposures": bool(method.uses_exposures), "probability_scores": bool(method.probability_scores),
            "retrieves_by_recommend": bool(method.retrieves_by_recommend),
            "item_group": None if method.item_group is None else np.asarray(method.item_group),
            "auc_scorers": {name: bool(getattr(fn, "pairs", False)) for name, fn in scorers.items()}}


def plugin_class(path: str) -> type:
    """`module:QualName` → the class, imported here (the worker), not in the referee's memory."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _stray_threads() -> list[str]:
    """Python threads of the plugin still running after fit (tqdm's monitor is the harness's own)."""
    main = threading.main_thread()
    return sorted(t.name for t in threading.enumerate()
                  if t is not main and t.is_alive() and type(t).__name__ != "TMonitor")


class Channel:
    """The worker's end of the connection: the clock's pauses announced, validation and calls served."""

    def __init__(self, conn, budget: Budget, device: torch.device, valid: dict[str, Any]):
        self.conn = conn
        self._lock = threading.Lock()  # the plugin's own threads may log while the main thread answers
        self.budget = budget
        self.device = device
        self.valid = valid  # validation histories / users / exposures, for the latency measurement only
        self._depth = 0
        self.blocks: Any = None  # the referee's BlockBuffer for score blocks
        self.fitting = True
        # (call, users, seconds, during fit) of every recommend / score / auc call: the work accounting's data
        self.call_times: list[tuple[str, int, float, bool]] = []

    def send(self, message: tuple) -> None:
        with self._lock:
            self.conn.send(message)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        outer = self._depth == 0
        self._depth += 1
        if outer:
            self.send(("pause",))
        try:
            with self.budget.paused():
                yield
        finally:
            self._depth -= 1
            if outer:
                self.send(("resume",))

    def validate(self, method: Method) -> dict[str, float]:
        with self.budget.paused():
            self.send(("validate", self.budget.epochs_done, state_of(method)))
            return self.serve(method)

    def serve(self, method: Method) -> dict[str, float]:
        """Answer the referee's calls until it sends the validation metrics (returned) or closes (the process
        ends)."""
        while True:
            message = self.conn.recv()
            if message[0] == "validated":
                return message[1]
            if message[0] == "close":
                self.conn.close()
                os._exit(0)
            _, name, args = message
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    value = self.answer(method, name, *args)
                reply = self.block_reply(value) or ("result", to_wire(value))
            except Exception as exc:  # the plugin's fault: the referee records it
                reply = ("error", type(exc).__name__, str(exc), traceback.format_exc(limit=8))
            users = len(args[0]) if name in ("recommend", "score", "auc") and args and isinstance(args[0], list) \
                else 0
            if users:
                self.call_times.append((name, users, time.perf_counter() - start, self.fitting))
            self.send(reply)

    def block_reply(self, value: Any) -> tuple | None:
        """A score block goes through the shared-memory buffer the referee made for it (when it fits): one copy in,
        one copy out, instead of pickling it through the pipe."""
        if self.blocks is None or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return None
        array = value.detach().cpu().numpy()
        if array.nbytes > self.blocks.size or array.dtype.kind != "f":
            return None
        np.ndarray(array.shape, array.dtype, buffer=self.blocks.buf)[...] = array
        return ("block", array.shape, array.dtype.str)

    def answer(self, method: Method, name: str, *args: Any) -> Any:
        if name == "recommend":
            histories, k, kwargs = args
            return method.recommend(histories, k, **kwargs)
        if name == "score":
            histories, items, kwargs = args
            return method.score(histories, None if items is None else torch.as_tensor(items), **kwargs)
        if name == "auc":
            scorer, histories, items, kwargs = args
            fn = method.auc_scorers()[scorer]
            out = fn(histories, items if getattr(fn, "pairs", False) else torch.as_tensor(items), **kwargs)
            return [np.asarray(s) for s in out] if getattr(fn, "pairs", False) else out
        if name == "state":
            return state_of(method)
        if name == "diagnostics":
            return method.diagnostics()
        if name == "params":
            return method.parameters_count()
        if name == "latency":
            k, n_users, batch = args
            return measure_latency(method, self.valid["histories"], k, n_users, batch, self.device,
                                   self.valid["users"], self.valid["exposures"])
        if name == "work":
            from harness.run.record import peak_memory_mb
            return {"calls": list(self.call_times), "peak_memory": peak_memory_mb(self.device)}
        raise ValueError(f"unknown call {name!r}")


class _ToReferee(logging.Handler):
    """The plugin's log records (the training plan, progress, warnings) go to the referee's loggers."""

    def __init__(self, channel: Channel):
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {**record.__dict__, "msg": record.getMessage(), "args": None, "exc_info": None,
                      "exc_text": self.format(record) if record.exc_info else None}
            self.channel.send(("log", {k: v for k, v in fields.items() if isinstance(v, (str, int, float,
                                                                                          type(None)))}))
        except Exception:  # noqa: BLE001 - a log line must never break the run
            self.handleError(record)


def serve(conn) -> None:
    """The worker process: receive the setup, fit, then answer calls until closed."""
    _, setup = conn.recv()
    # progress bars of one process need no cross-process lock (tqdm's default would leave a semaphore behind)
    tqdm.set_lock(threading.RLock())
    sys.path[:0] = [p for p in setup["sys_path"] if p not in sys.path]  # where the referee found the plugin
    os.environ.clear()
    os.environ.update(setup["environ"])
    if setup["threads"]:  # torch's threads and the BLAS / OpenMP pools of numpy, scipy and scikit-learn
        torch.set_num_threads(setup["threads"])
        threadpool_limits(setup["threads"])
    seed_everything(setup["seed"])
    device = torch.device(setup["device"])
    budget = Budget(setup["budget_seconds"], setup["max_epochs"])
    channel = Channel(conn, budget, device, setup["valid"])
    if setup.get("blocks"):
        channel.blocks = BlockBuffer(*setup["blocks"])
    root = logging.getLogger()
    root.handlers[:] = [_ToReferee(channel)]
    root.setLevel(logging.INFO)
    method = None
    try:
        cls = plugin_class(setup["plugin"])
        from harness.sid import semantic_ids  # the SID provider runs beside the plugin, on the training view only
        view = TrainView(**setup["view"], validate=channel.validate, device=device, pause=channel.paused,
                         sid_provider=semantic_ids, checkpoint=lambda state: channel.send(("checkpoint", state)))
        if setup["memory_mb"]:  # past the cap an allocation fails inside the plugin: a failed run, not a dead machine
            resource.setrlimit(resource.RLIMIT_DATA, (setup["memory_mb"] * 2 ** 20, resource.RLIM_INFINITY))
        method = cls(setup["config"])
        channel.send(("started",))  # the referee's clock starts here, as the plugin's does
        budget.start()
        cpu = time.process_time()
        method.fit(view, budget)
        info = {"epochs": budget.epochs_done, "exhausted": budget.exhausted(), "provenance": view.provenance,
                "state": state_of(method), "threads": _stray_threads(), "cpu_seconds": time.process_time() - cpu}
    except BaseException as exc:  # noqa: BLE001 - whatever fit raised is the plugin's outcome, reported as such
        channel.send(("fit_error", type(exc).__name__, str(exc), traceback.format_exc(limit=8),
                      isinstance(exc, NonFiniteLoss), budget.epochs_done))
        conn.close()
        os._exit(0)
    channel.fitting = False
    channel.send(("fitted", to_wire(info)))
    channel.serve(method)


if __name__ == "__main__":  # the sandbox's entry: `python -m harness.run.worker FD` (FD: the referee's socket)
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("harness.run.worker is started by the referee (harness run), not by hand")
    from multiprocessing.connection import Connection
    serve(Connection(int(sys.argv[1])))
