"""Where a plugin runs, and the referee's handle on it.

- `process`: a worker process of its own (`harness.run.worker`), forked from a forkserver that was started before
  any data was loaded, so it shares no memory with the referee: it holds the training view and nothing else.
- `sandbox`: a worker started as a fresh interpreter inside bubblewrap (`bwrap`): no network, and the data root,
  the run store, the published boards and the rest of /tmp are empty folders to it; it writes only to its own work
  folder and the feature cache.
- `none`: the referee's own process, for debugging a plugin; recorded as such and never published.
- `auto` (the default, or $HARNESS_ISOLATION): `sandbox` where bwrap can start one here, else `process`.

The referee kills the worker at the hard limit (SIGKILL), so no plugin outruns its budget by catching the stop, by
a thread of its own or in a long C call; a worker that dies (OOM, a segfault, `os.kill`) becomes a `failed` record
that says how it died.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from harness.errors import ConfigError
from harness.run.worker import BlockBuffer, from_wire

log = logging.getLogger(__name__)
MODES = ("auto", "sandbox", "process", "none")
# What a worker may not read: the environment variables that point at data, stores and submissions.
_PRIVATE_ENV = ("HARNESS_DATA_DIR", "HARNESS_STORE", "HARNESS_RUNS_DIR")
_START_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def sandbox_problem() -> str | None:
    """None when bubblewrap can start a sandbox on this machine, else why not (one line)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap is not installed (Debian package `bubblewrap`)"
    try:
        # the same kinds of mounts a worker's sandbox makes (sandbox_args), on a program that must then run
        probe = subprocess.run([exe, *sandbox_args([], []), "--", sys.executable, "-c", "pass"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap did not run: {exc}"
    if probe.returncode != 0:
        return f"bwrap cannot make a sandbox here ({probe.stderr.strip().splitlines()[-1:] or ['no user namespaces?']})"
    return None


def resolve_mode(asked: str) -> str:
    """The isolation a run gets: `auto` becomes sandbox or process; an unavailable sandbox asked for is a user
    error."""
    if asked not in MODES:
        raise ConfigError(f"unknown isolation {asked!r}; use one of {', '.join(MODES)}")
    problem = sandbox_problem() if asked in ("auto", "sandbox") else None
    if asked == "sandbox" and problem:
        raise ConfigError(f"--isolation sandbox: {problem}; use --isolation process")
    if asked == "auto":
        if problem:
            _say_once(f"plugins run in a worker process without a sandbox: {problem}")
            return "process"
        return "sandbox"
    return asked


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    log.warning(message)


def worker_environ() -> dict[str, str]:
    """The referee's environment less what points at data, stores and submissions."""
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


def sandbox_args(hidden: Sequence[Path], writable: Sequence[Path], readable: Sequence[Path] = ()) -> list[str]:
    """bwrap's arguments: the whole file system read-only, no network, /tmp and every `hidden` folder empty,
    `readable` folders inside them shown again (the track definitions), `writable` folders bound read-write (after
    the hiding, so a cache inside a hidden folder stays usable)."""
    args = ["--die-with-parent", "--unshare-net", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev",
            "--tmpfs", "/tmp"]
    for path in sorted({p.resolve() for p in hidden if p.exists()}):
        args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    for path in readable:
        if path.exists():
            args += ["--ro-bind", str(path.resolve()), str(path.resolve())]
    for path in writable:
        path.mkdir(parents=True, exist_ok=True)
        args += ["--bind", str(path.resolve()), str(path.resolve())]
    return args


class WorkerDied(Exception):
    """The worker process ended without answering (killed, out of memory, crashed, exited)."""


class RemoteError(Exception):
    """An exception the plugin raised in the worker, re-raised in the referee under the plugin's class name."""

    traceback: str = ""

    @classmethod
    def named(cls, name: str, message: str, tb: str) -> Exception:
        if name == "NotImplementedError":
            return NotImplementedError(message)
        error = type(name, (cls,), {})(message)
        error.traceback = tb
        return error


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "the worker stopped answering"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"the plugin's worker process was killed by {name}{hint}"
    return f"the plugin's worker process exited with code {exitcode}"


@contextlib.contextmanager
def _clean_start() -> Iterator[None]:
    """What a forkserver child is told of its parent, kept to what the worker needs: multiprocessing re-runs the
    caller's `__main__` in a child (to find functions defined there) and adopts the caller's start method (inside
    a joblib/loky worker, one the child does not know). The worker's code lives in harness; its start method is the
    forkserver's."""
    main = sys.modules["__main__"]
    method = multiprocessing.get_start_method(allow_none=True)
    sys.modules["__main__"] = types.ModuleType("__main__")
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        multiprocessing.set_start_method(method, force=True)


def _relay(fields: dict[str, Any]) -> None:
    """A log record of the worker, handled by the referee's logger of the same name."""
    record = logging.makeLogRecord(fields)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class Worker:
    """The referee's end: start, send, receive (while watching that the worker lives), kill."""

    POLL_SECONDS = 0.05

    def __init__(self, mode: str, hidden: Sequence[Path] = (), writable: Sequence[Path] = (),
                 readable: Sequence[Path] = (), block_bytes: int = 0):
        self.mode = mode
        self.blocks = BlockBuffer.make(block_bytes)
        # a daemonic process (a dask worker) may not fork children of its own: a fresh interpreter then
        if mode == "process" and not multiprocessing.current_process().daemon:
            from harness.run import worker as worker_module
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["harness.run.worker"])  # torch and the contract, imported once
            self.conn, child = context.Pipe(duplex=True)
            process = context.Process(target=worker_module.serve, args=(child,), daemon=True)
            with _START_LOCK, _clean_start():
                process.start()
            child.close()
            self._alive, self._kill = process.is_alive, process.kill
            self._exitcode = lambda: (process.join(1.0), process.exitcode)[1]
        else:  # a fresh interpreter (inside bubblewrap for the sandbox), talking over an inherited socket
            ours, theirs = socket.socketpair()
            command = [sys.executable, "-m", "harness.run.worker", str(theirs.fileno())]
            if mode == "sandbox":
                command = [shutil.which("bwrap"), *sandbox_args(hidden, writable, readable), "--", *command]
            popen = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=worker_environ())
            theirs.close()
            self.conn = Connection(ours.detach())
            self._alive, self._kill = (lambda: popen.poll() is None), popen.kill

            def exitcode() -> int | None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(1.0)
                return popen.returncode
            self._exitcode = exitcode

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, ConnectionError, EOFError, OSError):
            raise WorkerDied(_death(self._exitcode())) from None

    def recv(self, watch: Callable[[], None] | None = None) -> tuple:
        """The worker's next message; `watch()` runs between polls (the budget check: it may kill the worker)."""
        while True:
            try:
                if self.conn.poll(self.POLL_SECONDS):
                    message = self.conn.recv()
                    if message[0] != "log":
                        return message
                    _relay(message[1])
                    continue
            except (EOFError, ConnectionError, OSError):
                raise WorkerDied(_death(self._exitcode())) from None
            if not self._alive() and not self.conn.poll(0):
                raise WorkerDied(_death(self._exitcode()))
            if watch is not None:
                watch()

    def kill(self) -> None:
        if self._alive():
            self._kill()
        self._exitcode()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionError, EOFError, OSError):
            self.conn.send(("close",))
        for _ in range(20):  # up to 2 s to exit by itself
            if not self._alive():
                break
            time.sleep(0.1)
        self.kill()
        self.conn.close()
        if self.blocks is not None:
            self.blocks.close(remove=True)


class RemoteMethod:
    """The fitted plugin as the evaluator sees it, in the referee: each call is a request to the worker, each answer
    comes back by value. It holds the declared flags the worker reported, nothing of the plugin's code."""

    def __init__(self, worker: Worker, state: dict[str, Any], name: str, watch: Callable[[], None] | None = None):
        self._worker = worker
        self._watch = watch
        self.name = name
        self.update(state)

    def update(self, state: dict[str, Any]) -> None:
        self._has_score = bool(state.get("has_score"))
        self.uses_user_ids = bool(state.get("uses_user_ids"))
        self.uses_exposures = bool(state.get("uses_exposures"))
        self.probability_scores = bool(state.get("probability_scores"))
        self.retrieves_by_recommend = bool(state.get("retrieves_by_recommend"))
        group = state.get("item_group")
        self.item_group = None if group is None else np.asarray(group)
        self._scorers = dict(state.get("auc_scorers") or {})

    def call(self, name: str, *args: Any) -> Any:
        self._worker.send(("call", name, args))
        reply = self._worker.recv(self._watch)
        if reply[0] == "error":
            raise RemoteError.named(*reply[1:])
        if reply[0] == "block":  # copied out before the worker may write the next one
            _, shape, dtype = reply
            return torch.from_numpy(np.ndarray(shape, np.dtype(dtype), buffer=self._worker.blocks.buf).copy())
        return from_wire(reply[1])

    def has_score(self) -> bool:
        return self._has_score

    def recommend(self, histories: list[np.ndarray], k: int, **kwargs: Any):
        return self.call("recommend", list(histories), int(k), kwargs)

    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        items = None if items is None else np.asarray(items)
        return self.call("score", list(histories), items, kwargs)

    def auc_scorers(self) -> dict[str, Callable[..., Any]]:
        def scorer(name: str, pairs: bool) -> Callable[..., Any]:
            def ask(histories, items, **kwargs):
                items = [np.asarray(i) for i in items] if pairs else np.asarray(items)
                out = self.call("auc", name, list(histories), items, kwargs)
                return [np.asarray(s) for s in out] if pairs else out
            ask.pairs = pairs
            return ask
        return {name: scorer(name, pairs) for name, pairs in self._scorers.items()}

    def diagnostics(self) -> dict[str, Any]:
        return self.call("diagnostics")

    def parameters_count(self) -> int:
        return int(self.call("params"))

    def latency(self, k: int, n_users: int, batch: int) -> dict[str, Any]:
        return self.call("latency", k, n_users, batch)

    def work(self) -> dict[str, Any]:
        return self.call("work")


def unaccounted_work(calls: Sequence[Sequence[Any]], slack: float = 2.0, floor_s: float = 0.5) -> dict[str, Any]:
    """Work accounting: seconds that recommend / score calls took beyond what the plugin's fastest evaluation
    after fit (per user) would give, summed over the calls more than `slack` times slower and `floor_s` over it.
    Training deferred to the first call, or done inside the (uncharged) validation calls, shows up here."""
    after = [(users, seconds) for _, users, seconds, during_fit in calls if not during_fit and users]
    if not after:
        return {}
    rate = min(seconds / users for users, seconds in after)
    excess, slow = 0.0, 0
    for name, users, seconds, _ in calls:
        expected = rate * users
        if seconds > slack * expected + floor_s:
            excess += seconds - expected
            slow += 1
    return {"calls": len(calls), "fastest_ms_per_user": round(rate * 1000, 4), "slow_calls": slow,
            "unaccounted_s": round(excess, 3), "first_call_s": round(float(calls[0][2]), 3)}
