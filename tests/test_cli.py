"""The CLI: help everywhere, JSON records, and one clear line plus a non-zero exit for every user error."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_shared
from harness.board.store import RunStore
from harness.cli.main import main
from test_referee import Raiser


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv", [[], ["run"], ["datasets"], ["datasets", "show"], ["datasets", "fetch"], ["methods"]])
def test_help_everywhere(argv):
    result = subprocess.run([sys.executable, "-m", "harness", *argv, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "usage: harness" in result.stdout


def test_run_json_prints_the_record(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", "--method", "pop", "--data-set", "n_users=120", "--runs-dir",
                           str(tmp_path), "--json")
    record = json.loads(out)
    assert code == 0 and record["status"] == "ok" and record["method"] == "pop"
    assert record["command"].startswith("harness run --method pop")
    assert RunStore(runs_dir=tmp_path).get(record["run_id"])["split_id"] == record["split_id"]


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--method", "nope"], "unknown method 'nope'"),
    (["run", "--method", "pop", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["run", "--method", "sasrec", "--set", "loss"], "malformed --set 'loss'"),
    (["run", "--method", "sasrec", "--set", "lr=[1,"], "malformed --set"),
    (["run", "--method", "pop", "--budget", "ten minutes"], "malformed budget"),
    (["datasets", "show", "nope"], "unknown dataset"),
])
def test_user_errors_give_one_line_and_exit_2(capsys, tmp_path, argv, fragment):
    code, _, err = run_cli(capsys, *argv, *(["--runs-dir", str(tmp_path)] if argv[0] == "run" else []))
    assert code == 2
    assert fragment in one_error_line(err)
    if argv[0] == "run":
        assert RunStore(runs_dir=tmp_path).records(status="ok") == []


def test_corrupted_data_file_gives_one_line(capsys, tmp_path):
    from test_data import s3rec_files, write_card
    root = tmp_path / "data"
    seq = s3rec_files(root, [[1, 2, 3, 4]] * 5)
    card = write_card(tmp_path, "corrupt", "s3rec", {"sequences": seq}, root)
    seq.write_text(seq.read_text() + "junk\n")
    code, _, err = run_cli(capsys, "run", "--method", "pop", "--dataset", str(card), "--data-dir", str(root),
                           "--runs-dir", str(tmp_path / "runs"))
    line = one_error_line(err)
    assert code == 2 and "sha256 mismatch" in line and "seq.txt" in line
    assert RunStore(runs_dir=tmp_path / "runs").records() == []


def test_a_raising_plugin_gives_one_line_and_a_failed_record(capsys, tmp_path, plugin):
    plugin(Raiser)
    code, _, err = run_cli(capsys, "run", "--method", "test-raiser", "--data-set", "n_users=100", "--runs-dir",
                           str(tmp_path))
    assert code == 1
    assert "boom in fit" in one_error_line(err)
    statuses = [r["status"] for r in RunStore(runs_dir=tmp_path).records()]
    assert statuses == ["failed"]


def test_console_script_is_installed():
    exe = shutil.which("harness") or str(Path(sys.executable).parent / "harness")
    result = subprocess.run([exe, "methods"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "sasrec" in result.stdout and "pop" in result.stdout


def test_datasets_list_shows_every_card(capsys):
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0
    for name in ("beauty", "sports", "toys", "scientific", "yelp", "ml-latest-small", "ml-100k", "synthetic",
                 "synthetic-labelled"):
        assert name in out


@needs_shared
def test_datasets_show_prints_published_counts_and_hash_status(capsys):
    code, out, _ = run_cli(capsys, "datasets", "show", "beauty")
    assert code == 0
    assert "22363" in out and "12101" in out and "198502" in out
    assert out.count(" ok ") >= 4 and "warning" not in out
