"""Tuning on validation only, shared Optuna storage, multi-seed runs that survive failures and interruptions."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
import torch

from conftest import TINY, run_two_workers
from harness.errors import ConfigError
from harness.run import referee, tracks
from harness.run.tracks import load_track
from harness.api import Method
from harness.board.store import RunStore
from harness.run.spec import RunSpec
from harness.studies.seeds import run_seeds
from harness.studies.tune import best_spec, tune

QUICK = {"epochs": 3, "patience": 2}


def smoke_spec(method="sasrec", **kwargs):
    return RunSpec(method=method, dataset="synthetic", dataset_options=dict(TINY), track="smoke",
                   overrides=dict(QUICK), latency_users=5, **kwargs)


def test_tuning_never_touches_test_targets(tmp_path, monkeypatch):
    calls = []
    real = referee.evaluate_method

    def spy(method, histories, targets, *args, desc="evaluate", **kwargs):
        calls.append(desc)
        return real(method, histories, targets, *args, desc=desc, **kwargs)
    monkeypatch.setattr(referee, "evaluate_method", spy)
    store = RunStore(runs_dir=tmp_path / "runs")
    study = tune(smoke_spec(), trials=3, store=store, metric="ndcg@10")
    assert len(study.trials) == 3 and "test" not in calls and "validate" in calls
    trials = store.records(status="ok")
    assert trials and all(r["purpose"] == "tune" and "test" not in r["metrics"] for r in trials)
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            record = store.get(trial.user_attrs["run_id"])
            assert trial.value == record["metrics"]["valid"]["ndcg@10"]
    # the plugin's defaults (with the spec's overrides) are the first trial
    assert study.trials[0].params["hidden"] == 64 and study.trials[0].params["dropout"] == 0.3
    calls.clear()
    final = run_seeds(best_spec(study, smoke_spec(), "ndcg@10"), [0, 1], store, n_jobs=1)
    assert "test" in calls
    assert all(r["status"] == "ok" and r["tuning"]["trials"] == 3 for r in final)
    assert final[0]["tuning"]["params"] == study.best_params


def test_a_tracks_search_space_is_searched_and_recorded_with_the_sampler(tmp_path):
    space = {"lr": {"type": "float", "low": 0.0005, "high": 0.002, "log": True},
             "dropout": {"type": "float", "low": 0.2, "high": 0.4}}
    store = RunStore(runs_dir=tmp_path / "runs")
    study = tune(smoke_spec(), trials=2, store=store, space=space, sampler_seed=7)
    assert all(set(t.params) == set(space) for t in study.trials)  # hidden, blocks … stay the track's
    assert all(0.0005 <= t.params["lr"] <= 0.002 and 0.2 <= t.params["dropout"] <= 0.4 for t in study.trials)
    tuning = best_spec(study, smoke_spec(), "ndcg@10").extra["tuning"]
    assert tuning["search_space"] == space and tuning["sampler"] == "TPE, seed 7"
    assert tuning["trials"] == 2 and tuning["pruner"].startswith("median")
    # the default study name carries the space: another space starts its own study, never mixing the two
    other = tune(smoke_spec(), trials=1, store=store, space={"lr": space["lr"]})
    assert other.study_name != study.study_name and set(other.trials[0].params) == {"lr"}
    with pytest.raises(ConfigError, match="another space"):  # a study named by hand is held to its space
        tune(smoke_spec(), trials=3, store=store, space={"lr": space["lr"]}, name=study.study_name)


def test_track_search_spaces_are_valid_leave_the_pinned_sizes_alone_and_refuse_typos(tmp_path, monkeypatch):
    from harness import registry
    from harness.plugins.checks import _search_entry_problem
    from harness.run.tracks import track_names
    sizes = {"hidden", "blocks", "d_model", "heads", "d_ff", "enc_layers", "dec_layers", "width", "levels"}
    for name in track_names():
        track = load_track(name)
        for method in (track.tuning.get("search_spaces") or {}):
            config = registry.get(method).default_config
            space = track.search_space(method)
            assert not [p for key, entry in space.items() if (p := _search_entry_problem(key, entry, config))]
            assert not sizes & set(space), f"{name} searches {method}'s sizes, which it pins"
    small = load_track("cpu-small")
    assert small.search_space("sasrec") and small.search_space("tiger")  # the two tuned rows, equal trials
    (tmp_path / "t.yaml").write_text("name: t\ndescription: x\ndatasets: [synthetic]\nmethod_overrides: {sasrec: {}}\n"
                                     "tuning: {trials: 2, search_spaces: {sasrek: {lr: {type: float}}}}\n")
    monkeypatch.setattr(tracks, "TRACKS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="sasrek"):  # a misspelt method would tune the plugin's space silently
        load_track("t")


def _worker(storage, runs_dir, seed):
    store = RunStore(runs_dir=runs_dir)
    tune(smoke_spec(), trials=6, store=store, storage=storage,
         name="shared", sampler_seed=seed)


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    runs_dir = str(tmp_path / "runs")
    run_two_workers(_worker, [(storage, runs_dir, seed) for seed in (1, 2)])
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 6 and len(finished) == len(study.trials)
    assert len({t.user_attrs["pid"] for t in finished}) == 2, "both workers contributed trials"
    stored = \
        {r["run_id"] for r in RunStore(runs_dir=runs_dir).records()}
    assert {t.user_attrs["run_id"] for t in finished} <= stored, "every trial's run is in the store"


class FailsOnSeedOne(Method):
    name = "test-fails-seed-1"

    def fit(self, train, budget):
        if train.seed == 1:
            raise RuntimeError("seed 1 breaks")
        self.n = train.n_items

    def score(self, histories, items=None):
        return torch.arange(self.n, dtype=torch.float32).expand(len(histories), -1).clone()


def test_a_failing_seed_is_recorded_and_the_rerun_completes_only_missing_seeds(tmp_path, plugin):
    plugin(FailsOnSeedOne)
    store = RunStore(runs_dir=tmp_path / "runs")
    spec = RunSpec(method="test-fails-seed-1", dataset="synthetic", dataset_options=dict(TINY), latency_users=5)
    records = run_seeds(spec, [0, 1, 2], store, n_jobs=1)
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    again = run_seeds(spec, [0, 1, 2], store, n_jobs=1)
    assert again[0]["run_id"] == records[0]["run_id"] and again[2]["run_id"] == records[2]["run_id"]
    assert again[1]["run_id"] != records[1]["run_id"]
    assert len(store.records()) == 4


SLOW_PLUGIN = textwrap.dedent('''
    import time, torch
    from harness.api import Method

    class Slow(Method):
        name = "slow-ep"
        def fit(self, train, budget):
            self.n = train.n_items
            time.sleep(1.5)
        def score(self, histories, items=None):
            return torch.zeros(len(histories), self.n)
''')


def test_killing_a_multi_seed_run_leaves_only_finished_ok_records(tmp_path):
    (tmp_path / "slow_plugin.py").write_text(SLOW_PLUGIN)
    info = tmp_path / "slow_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness.methods]\nslow-ep = slow_plugin:Slow\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "harness", "run", "--method", "slow-ep", "--seeds", "4", "--jobs", "1",
           "--data-set", "n_users=100", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    store = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (tmp_path / "runs" / "harness.db").exists():
            store = store or RunStore(runs_dir=tmp_path / "runs")
            if len(store.records()) >= 1:
                break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    records = store.records()
    assert 1 <= len(records) < 4, "killed midway"
    assert all(r["status"] == "ok" and "test" in r["metrics"] and r["finished_at"] for r in records)
    done_before = {r["seed"] for r in records}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = store.records()
    assert sorted(r["seed"] for r in after) == [0, 1, 2, 3], "each seed exactly once"
    assert {r["run_id"] for r in records} <= {r["run_id"] for r in after}
    assert len(after) - len(records) == 4 - len(done_before)
