"""The run store: records and per-user arrays round-trip; parallel writer processes lose nothing."""
import multiprocessing as mp
import uuid
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from conftest import TINY
from harness.board.store import RunStore
from harness.run.referee import run
from harness.run.spec import RunSpec


def _write_many(args):
    runs_dir, worker, count = args
    store = RunStore(runs_dir=runs_dir)
    for i in range(count):
        store.save({"run_id": f"w{worker}-{i}-{uuid.uuid4().hex[:6]}", "status": "ok", "method": "m",
                    "dataset": "d", "seed": i}, {"test": {"recall@10": np.full(5, worker, dtype=float)}})
    return count


def _one_run(args):
    runs_dir, seed = args
    record = run(RunSpec(method="pop", dataset="synthetic", seed=seed, dataset_options=dict(TINY), latency_users=5),
                 RunStore(runs_dir=runs_dir))
    return record["run_id"]


def test_parallel_writers_lose_nothing(tmp_path):
    runs_dir = str(tmp_path / "runs")
    # ProcessPoolExecutor raises if a worker dies (a multiprocessing.Pool would wait forever)
    with ProcessPoolExecutor(4, mp_context=mp.get_context("spawn")) as pool:
        written = sum(pool.map(_write_many, [(runs_dir, w, 25) for w in range(4)], timeout=300))
        run_ids = list(pool.map(_one_run, [(runs_dir, seed) for seed in range(4)], timeout=300))
    store = RunStore(runs_dir=runs_dir)
    records = store.records()
    assert len(records) == written + 4
    assert set(run_ids) <= {r["run_id"] for r in records}
    assert len(store.records(method="pop")) == 4
    for run_id in run_ids:
        assert "test" in store.per_user(run_id)


def test_records_round_trip_with_filters(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'other.db'}", runs_dir=tmp_path / "runs")
    store.save({"run_id": "a", "status": "ok", "method": "pop", "dataset": "x", "seed": 1,
                "metrics": {"test": {"t": 1}}})
    store.save({"run_id": "b", "status": "failed", "method": "pop", "dataset": "y", "seed": 2})
    assert store.get("a")["metrics"] == {"test": {"t": 1}}
    assert [r["run_id"] for r in store.records(status="ok")] == ["a"]
    assert [r["run_id"] for r in store.records(dataset="y")] == ["b"]
    assert (tmp_path / "runs" / "a" / "record.json").exists()


def test_a_record_that_breaks_the_schema_is_refused_before_anything_is_written(tmp_path):
    import pytest

    from harness.schema import RecordError
    store = RunStore(f"sqlite:///{tmp_path / 'other.db'}", runs_dir=tmp_path / "runs")
    with pytest.raises(RecordError, match="metrics.t"):
        store.save({"run_id": "a", "status": "ok", "method": "pop", "dataset": "x", "metrics": {"t": 1}})
    assert store.records() == [] and not (tmp_path / "runs" / "a").exists()
