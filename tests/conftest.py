from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import registry
from harness.board.store import RunStore
from harness.paths import SHARED_DATASETS
from harness.run.spec import RunSpec

# The suite's plugins run in worker processes forked from a clean forkserver (milliseconds per run); the bubblewrap
# sandbox, a fresh interpreter per run (seconds), is exercised by the tests that ask for it by name.
os.environ.setdefault("HARNESS_ISOLATION", "process")

SHARED = SHARED_DATASETS
# Small synthetic data so a full SASRec run takes seconds.
TINY = {"n_users": 300, "n_items": 120, "n_topics": 4}

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not found at {SHARED}")


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(runs_dir=tmp_path / "runs")


@pytest.fixture
def tiny_spec():
    def make(method: str, **kwargs) -> RunSpec:
        kwargs.setdefault("dataset_options", dict(TINY))
        kwargs.setdefault("latency_users", 10)
        return RunSpec(method=method, dataset="synthetic", **kwargs)
    return make


@pytest.fixture
def plugin():
    """Register a test-only method class for the duration of a test."""
    added = []

    def add(cls):
        registry.register_builtin(cls)
        added.append(cls.name)
        return cls
    yield add
    for name in added:
        registry.unregister(name)


def run_two_workers(target, args_per_worker, timeout: float = 300) -> None:
    """Start one spawned process per argument tuple, wait for all, and fail if any did not exit cleanly."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=target, args=args) for args in args_per_worker]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout)
        assert w.exitcode == 0
