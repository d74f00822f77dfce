"""The distributed case for real: two tuning workers share one study in a local PostgreSQL server."""
import json

from conftest import TINY, run_two_workers


def _worker(storage, runs_dir, seed):
    from harness.run.spec import RunSpec
    from harness.board.store import RunStore
    from harness.studies.tune import tune
    spec = RunSpec(method="sasrec", dataset="synthetic", dataset_options=dict(TINY), track="smoke",
                   overrides={"epochs": 2, "patience": 2}, latency_users=5)
    tune(spec, trials=4, store=RunStore(runs_dir=runs_dir), storage=storage, name="pg-shared", sampler_seed=seed)


def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path):
    import optuna
    run_two_workers(_worker, [(postgres_url, str(tmp_path / "runs"), s) for s in (1, 2)])
    study = optuna.load_study(study_name="pg-shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 4 and len(finished) == len(study.trials)
    assert len({t.user_attrs["pid"] for t in finished}) == 2


def test_the_run_store_takes_the_readmes_postgresql_url(postgres_url, tmp_path, capsys):
    from harness.board.store import RunStore
    from harness.cli.main import main
    assert main(["run", "--method", "pop", "--data-set", "n_users=100", "--store", postgres_url,
                 "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert RunStore(postgres_url, tmp_path / "runs").get(run_id)["status"] == "ok"


def test_dask_workers_share_a_postgresql_study(dask_cluster, postgres_url, tmp_path, capsys):
    import optuna

    from harness.cli.main import main
    assert main(["tune", "--method", "sasrec", "--track", "smoke", "--dataset", "synthetic", "--trials", "4",
                 "--workers", "2", "--backend", "dask", "--scheduler", dask_cluster.scheduler_address,
                 "--storage", postgres_url, "--study", "pg-dask", "--set", "epochs=2", "--set", "patience=2",
                 "--runs-dir", str(tmp_path / "runs"), "--no-final"]) == 0
    assert "study pg-dask: " in capsys.readouterr().out
    study = optuna.load_study(study_name="pg-dask", storage=postgres_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 4 and len(finished) == len(study.trials)
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both dask workers ran trials
