from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
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


# --- a PostgreSQL server on loopback (tuning studies, run stores) ---------------------------------------------------

def postgres_bin() -> Path | None:
    candidates = []
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    pytest.importorskip("psycopg", reason="psycopg (a core dependency) is not installed")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="harness-pg-", dir="/tmp"))
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port()
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True, timeout=120)
    try:
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"  # the form the README writes, no dialect suffix
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


# --- a dask.distributed cluster of 2 worker processes on loopback --------------------------------------------------

@pytest.fixture
def dask_cluster():
    pytest.importorskip("distributed", reason="dask.distributed is not installed (the `dask` extra)")
    import dask
    from dask.distributed import LocalCluster
    # a worker lost mid-run fails its run at once (the engine would otherwise retry it elsewhere)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        try:
            yield cluster
        finally:
            cluster.close()
