"""The engines that run many runs at once, behind joblib's one interface: `loky` (local processes), `dask`
(dask.distributed: a LocalCluster, a scheduler at tcp://HOST:8786, or SLURM through dask-jobqueue) and `ray`
(`ray.util.joblib`). The harness places no work itself; it says which engine, and the engine does.

Each dask or ray worker runs one run at a time with the run's own pinned threads: start workers with
`--nthreads 1` (dask) so that runs do not share cores.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from joblib import parallel_config

from harness.errors import ConfigError
from harness.studies.seeds import default_jobs

BACKENDS = ("loky", "dask", "ray")


@contextlib.contextmanager
def engine(backend: str, scheduler: str | None = None, address: str | None = None) -> Iterator[Any]:
    """joblib's backend for the runs inside the block: loky; ray at `address` (default: auto); for dask the block
    gets the `Client` of `scheduler` (default: a local cluster of processes), whose futures report each lost run
    on its own (joblib's dask backend waits for ever on a task whose worker died)."""
    if backend == "loky":
        with parallel_config(backend="loky"):
            yield None
    elif backend == "dask":
        try:
            from dask.distributed import Client
        except ImportError:
            raise ConfigError("--backend dask needs dask.distributed: pip install -e '.[dask]'") from None
        client = Client(scheduler) if scheduler else Client(processes=True, threads_per_worker=1)
        try:
            with parallel_config(backend="dask"):
                yield client
        finally:
            client.close()
    elif backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'ray[default]'") from None
        register_ray()
        ray.init(address=address or "auto", ignore_reinit_error=True)
        with parallel_config(backend="ray"):
            yield None
    else:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")


def jobs_for(backend: str, asked: int | None, n_runs: int, device: str = "auto", threads: int | None = None) -> int:
    """How many runs at once: what was asked; for loky what the cores and memory allow; for a cluster, its
    workers (-1)."""
    if asked:
        return asked
    return default_jobs(n_runs, device, threads) if backend == "loky" else -1
