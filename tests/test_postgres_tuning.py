"""The distributed case for real: two tuning workers share one study in a local PostgreSQL server."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import TINY, run_two_workers


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


def _worker(storage, runs_dir, seed):
    from harness.run.spec import RunSpec
    from harness.board.store import RunStore
    from harness.studies.tune import tune
    spec = RunSpec(method="sasrec", dataset="synthetic", dataset_options=dict(TINY), track="smoke",
                   overrides={"epochs": 2, "patience": 2}, latency_users=5)
    tune(spec, trials=4, store=RunStore(runs_dir=runs_dir), storage=storage, name="pg-shared", sampler_seed=seed)


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
