"""Scale-out: sweeps through a joblib backend (local processes, a dask.distributed cluster), runs skipped when the
store has them, and runs that resume from their checkpoint to the metrics of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.board.store import RunStore
from harness.cli.main import main

RESUMABLE = ["run", "--method", "sasrec", "--dataset", "synthetic", "--data-set", "n_users=2000",
             "--data-set", "n_items=300", "--set", "epochs=8", "--set", "eval_every=1", "--set", "patience=20",
             "--checkpoint-every", "1", "--json"]


def _record(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_metrics(tmp_path, capsys):
    assert main([*RESUMABLE, "--runs-dir", str(tmp_path / "straight")]) == 0
    straight = _record(capsys)
    runs = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "harness", *RESUMABLE, "--runs-dir", str(runs)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while not list((runs / "checkpoints").glob("*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)  # the run, its forkserver and its worker
    process.wait(30)
    assert not [r for r in RunStore(runs_dir=runs).records() if r["status"] == "ok"]  # kill -9 leaves no ok record
    assert main([*RESUMABLE, "--runs-dir", str(runs), "--resume"]) == 0
    resumed = _record(capsys)
    assert resumed["resumed"]["validations_before"] >= 1
    assert resumed["metrics"] == straight["metrics"] and resumed["used"]["epochs"] == straight["used"]["epochs"]
    assert [p["ndcg@10"] for p in resumed["curves"]["validation"]] == \
        [p["ndcg@10"] for p in straight["curves"]["validation"]]
    assert not list((runs / "checkpoints").glob("*.ckpt"))  # a finished run leaves no checkpoint behind


def _sweep(store, scheduler, *more):
    return ["sweep", "--track", "smoke", "--methods", "pop,sasrec", "--seeds", "3", "--backend", "dask",
            "--scheduler", scheduler, "--store", store, *more]


def test_a_dask_sweep_into_postgresql_runs_each_run_once(dask_cluster, postgres_url, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main([*_sweep(postgres_url, dask_cluster.scheduler_address), "--runs-dir", runs]) == 0
    assert "6 run now, 6 ok" in capsys.readouterr().out
    records = RunStore(postgres_url, runs).records()
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert sorted((r["method"], r["seed"]) for r in records) == [(m, s) for m in ("pop", "sasrec") for s in range(3)]
    assert main([*_sweep(postgres_url, dask_cluster.scheduler_address), "--runs-dir", runs]) == 0
    assert "6 already in the store, 0 run now" in capsys.readouterr().out
    assert len(RunStore(postgres_url, runs).records()) == 6


def test_a_worker_killed_mid_sweep_is_reported_and_a_reissue_completes(dask_cluster, tmp_path, capsys):
    import threading

    from dask.distributed import Client
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    runs = str(tmp_path / "runs")
    codes = []
    sweep = threading.Thread(target=lambda: codes.append(main([*_sweep(store, dask_cluster.scheduler_address),
                                                                "--runs-dir", runs])))
    with Client(dask_cluster.scheduler_address) as client:
        sweep.start()
        deadline = time.monotonic() + 120
        busy = {}
        while not busy and time.monotonic() < deadline:  # a worker in the middle of a run
            busy = {w: tasks for w, tasks in client.processing().items() if tasks}
            time.sleep(0.2)
        assert busy, "no worker ever ran a task"
        victim = next(iter(busy))
        pids = client.run(os.getpid)
        os.kill(pids[victim], signal.SIGKILL)
        sweep.join(300)
    assert codes == [1]
    err = capsys.readouterr().err
    assert "lost: " in err and "its worker died (KilledWorker" in err and "re-issue the same command" in err
    finished = [r for r in RunStore(store, runs).records() if r["status"] == "ok"]
    assert len(finished) < 6
    assert main([*_sweep(store, dask_cluster.scheduler_address), "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert f"{len(finished)} already in the store, {6 - len(finished)} run now, {6 - len(finished)} ok" in out
    assert sorted((r["method"], r["seed"]) for r in RunStore(store, runs).records() if r["status"] == "ok") == \
        [(m, s) for m in ("pop", "sasrec") for s in range(3)]


def test_a_sweep_file_expands_into_methods_variants_and_seeds(tmp_path):
    from harness.errors import ConfigError
    from harness.studies.sweep import load_sweep_file
    path = tmp_path / "sweep.yaml"
    path.write_text("track: smoke\nmethods: [pop, sasrec]\nseeds: 2\nvariants:\n  sasrec: {bce: {loss: bce}}\n")
    plan = load_sweep_file(path)
    assert plan.labels == ["pop synthetic s0", "pop synthetic s1", "sasrec[bce] synthetic s0",
                           "sasrec[bce] synthetic s1"]
    sasrec = plan.specs[2]
    assert sasrec.overrides == {"loss": "bce"} and sasrec.track == "smoke" and sasrec.threads == 1
    assert sasrec.track_overrides == {"epochs": 30, "patience": 3}  # the track's pins under every run
    path.write_text("methods: [pop]\n")
    with pytest.raises(ConfigError, match="needs `track:`"):
        load_sweep_file(path)
    path.write_text("track: smoke\nmodels: [pop]\n")
    with pytest.raises(ConfigError, match="unknown: models"):
        load_sweep_file(path)
    assert main(["sweep"]) == 2


def test_a_finished_seed_stands_under_a_raised_safety_cap_but_a_clock_ended_one_does_not(tmp_path):
    from harness.run.spec import RunSpec
    from harness.studies.seeds import finished_seeds

    class Store:
        def records(self, **_):
            base = {"method": "sasrec", "method_config_hash": "h", "track": "t", "metrics": {"test": {}},
                    "used": {"train_seconds": 500.0}}
            return [{**base, "seed": 0, "status": "ok", "budget": {"seconds": 600, "max_epochs": 9}},
                    {**base, "seed": 1, "status": "budget_bound", "budget": {"seconds": 600, "max_epochs": 9}},
                    {**base, "seed": 2, "status": "ok", "budget": {"seconds": 600, "max_epochs": 5}}]

    def seeds(cap):
        spec = RunSpec("sasrec", "d", budget_seconds=cap, max_epochs=9, track="t")
        return sorted(finished_seeds(Store(), spec, "split", "h"))
    assert seeds(600) == [0, 1]
    assert seeds(3600) == [0]  # seed 0 early-stopped: the same run under the larger cap; seed 1 must run again
    assert seeds(400) == []  # seed 0's 500 s of training do not fit a 400 s cap
    assert seeds(None) == [0]


def test_a_finished_seed_stands_under_a_raised_epoch_cap_that_leaves_its_plan_alone():
    from harness.run.spec import RunSpec
    from harness.studies.seeds import finished_seeds

    class Store:
        def records(self, **_):
            base = {"method": "sasrec", "method_config_hash": "h", "track": "t", "metrics": {"test": {}},
                    "status": "ok", "budget": {"seconds": None, "max_epochs": 200}}
            return [{**base, "seed": 0, "method_config": {"epochs": 100}},
                    {**base, "seed": 1, "method_config": {"epochs": 300}}]

    def seeds(cap):
        return sorted(finished_seeds(Store(), RunSpec("sasrec", "d", max_epochs=cap, track="t"), "split", "h"))
    assert seeds(200) == [0, 1]
    assert seeds(400) == [0]  # seed 0 planned its own 100 epochs under either cap; seed 1 planned 200, now 300
    assert seeds(50) == []
