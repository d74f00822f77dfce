"""A number means the same on any machine: budgets in epochs, stages outside the clock, isolated RNGs, pinned threads,
equal data use, no id-order signal, and the small pitfalls (split_id types, the store variable, writable views)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, needs_shared
from harness.api import Method, TopK, TrainView
from harness.board.store import RunStore
from harness.data import leave_one_out, load, make_split
from harness.data.interactions import TrainInteractions
from harness.data.protocols import cold_targets
from harness.errors import ConfigError
from harness.nn.causal_encoder import next_item_pairs
from harness.run.referee import run
from harness.run.spec import RunSpec
from harness.run.tracks import load_track
from harness.sid import fit_codes, semantic_ids
from harness.studies.seeds import run_seeds

SMOKE = load_track("smoke")
# Short versions of the smoke track's runs: what is compared is their sameness, not their quality.
SHORT = {"sasrec": {"epochs": 4}, "tiger": {"epochs": 4, "eval_every": 2},
         "letter": {"epochs": 4, "eval_every": 2, "tokenizer_options": {"epochs": 4, "hidden": [32], "batch_size": 64},
                    "collaborative_options": {"dim": 16, "epochs": 2}},
         "etegrec": {"epochs": 3}}


def smoke_run(method: str, runs_dir, seed: int = 0) -> dict:
    spec = RunSpec.for_track(SMOKE, method, "synthetic", seed=seed, overrides=dict(SHORT[method]), latency_users=5)
    return run(spec, RunStore(runs_dir=runs_dir))


@pytest.mark.parametrize("method", ["sasrec", "tiger", "letter", "etegrec"])
def test_cold_cache_on_a_quiet_machine_equals_warm_cache_under_load(method, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    cold = smoke_run(method, tmp_path / "a")  # every embedding, tokenizer and collaborative table is computed here
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]  # a busy core
    try:
        warm = smoke_run(method, tmp_path / "b")  # ... and read from the cache here, with the cores taken
    finally:
        for burner in burners:
            burner.kill()
    assert cold["status"] == warm["status"] == "ok"
    assert cold["used"]["epochs"] == warm["used"]["epochs"]
    assert cold["metrics"] == warm["metrics"]
    assert cold["used"]["threads"] == warm["used"]["threads"] == SMOKE.threads


class Blank(Method):
    """The probes' base: every item scored 0. What a probe tells is in its fit."""
    paper = "a probe"

    def fit(self, train, budget):
        self.n = train.n_items

    def score(self, histories, items=None):
        return torch.zeros(len(histories), self.n)


class Probe(Blank):
    """Draws SIDs (a tokenizer fitted on a miss, read on a hit), then reports the first numbers of its own RNG."""
    name = "test-rng-probe"

    def fit(self, train, budget):
        super().fit(train, budget)
        train.semantic_ids(tokenizer="rqvae", tokenizer_options={"levels": 2, "width": 4, "epochs": 2,
                                                                  "hidden": [16], "latent": 8})
        self.draw = torch.rand(4)

    def diagnostics(self):
        return {"draw": self.draw.tolist()}


def test_model_init_is_the_same_cold_or_warm_and_differs_across_seeds(tiny_spec, store, plugin, tmp_path,
                                                                       monkeypatch):
    plugin(Probe)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    cold = run(tiny_spec("test-rng-probe", seed=1), store)["diagnostics"]
    warm = run(tiny_spec("test-rng-probe", seed=1), store)["diagnostics"]
    other = run(tiny_spec("test-rng-probe", seed=2), store)["diagnostics"]
    assert cold["draw"] == warm["draw"] and cold["draw"] != other["draw"]


def test_a_tokenizer_fitted_on_a_miss_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _, info = fit_codes(x, "rqvae", levels=2, width=4, epochs=2, hidden=[8], latent=4, seed=0)
    assert not info["cached"] and torch.equal(torch.rand(3), expected)
    _, again = fit_codes(x, "rqvae", levels=2, width=4, epochs=2, hidden=[8], latent=4, seed=0)
    assert again["cached"] and again["compute_seconds"] == info["compute_seconds"]  # the cost, cached or not


class SlowStage(Blank):
    """Spends longer in a stage than its whole training budget, then trains two quick epochs."""
    name = "test-slow-stage"

    def fit(self, train, budget):
        super().fit(train, budget)
        with train.stage("features"):
            time.sleep(2.5)
        for _ in range(budget.epochs(2)):
            budget.epoch_done()


def test_stages_are_not_charged_to_the_training_clock(tiny_spec, store, plugin):
    plugin(SlowStage)
    record = run(tiny_spec("test-slow-stage", budget_seconds=1.0), store)
    assert record["status"] == "ok", record["failure"]
    assert record["used"]["stage_seconds"] >= 2.5 and record["used"]["train_seconds"] < 1.0
    assert record["features"]["stages"][0]["stage"] == "features"


def test_every_trained_epoch_is_validated_and_the_best_state_kept(tiny_spec, store):
    record = run(tiny_spec("sasrec", overrides={"epochs": 5, "eval_every": 2, "patience": 10}), store)
    assert [point["epoch"] for point in record["curves"]["validation"]] == [2, 4, 5]


def test_threads_are_the_tracks_whether_seeds_run_side_by_side_or_alone(tmp_path):
    spec = RunSpec.for_track(SMOKE, "pop", "synthetic", latency_users=5)
    side_by_side = run_seeds(spec, [0, 1], RunStore(runs_dir=tmp_path / "a"), n_jobs=2, resume=False)
    alone = run_seeds(spec, [0], RunStore(runs_dir=tmp_path / "b"), n_jobs=1, resume=False)
    assert {r["used"]["threads"] for r in side_by_side + alone} == {SMOKE.threads}


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_blas_and_openmp_pools_run_at_the_tracks_threads_too(isolation, tiny_spec, store, plugin, monkeypatch):
    """numpy / scipy / scikit-learn sum in as many parts as their pools have threads (a TF-IDF SVD differs in its
    last bits between 1 and 2, and a model trained on it drifts), so a run pins them as it pins torch's, whatever
    the machine's cores or the caller's settings; the caller gets its own back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from plugins_gallery import BlasThreads
    plugin(BlasThreads)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a worker's pools start at 2, as on an unpinned 2-core machine
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with threadpool_limits(2):
        record = run(tiny_spec("gallery-blas-threads", threads=1, isolation=isolation), store)
        assert record["status"] == "ok", record["failure"]
        pools = record["diagnostics"]["pools"]
        assert pools and set(pools.values()) == {1}, pools
        assert {p["num_threads"] for p in threadpool_info()} == {2}  # the caller's, given back


@needs_shared
def test_sasrec_trains_on_every_training_target_of_ml_latest_small():
    data = load("ml-latest-small")
    split = leave_one_out(data)
    inputs, targets = next_item_pairs(split.train_sequences, 50)
    expected = sum(max(0, len(s) - 1) for s in split.train_sequences)
    assert int((targets > 0).sum()) == expected  # 100 % of the targets (29 % with the last 50 steps only)


class IdArithmetic(Blank):
    """A rule that uses ids as numbers: the next item is the last one's id plus the number of topics."""
    name = "test-id-arithmetic"

    def score(self, histories, items=None):
        scores = torch.zeros(len(histories), self.n)
        for row, hist in enumerate(histories):
            if len(hist):
                scores[row, (int(hist[-1]) + TINY["n_topics"]) % self.n] = 1.0
                scores[row, (int(hist[-1]) + np.arange(1, 2 * TINY["n_topics"])) % self.n] += 0.5
        return scores


def test_item_ids_carry_no_order_signal(tiny_spec, store, plugin):
    plugin(IdArithmetic)
    pop = run(tiny_spec("pop"), store)["metrics"]["test"]
    rule = run(tiny_spec("test-id-arithmetic"), store)["metrics"]["test"]
    assert rule["recall@10"] <= pop["recall@10"]
    data = load("synthetic", **TINY)
    raw = data.items["source_index"].to_numpy()  # the item's position in generation order
    assert abs(np.corrcoef(np.arange(len(raw)), raw)[0, 1]) < 0.2


class NewestIds(Blank):
    """A rule that uses ids as time: the highest ids (the items that appeared last in the files) first."""
    name = "test-newest-ids"

    def score(self, histories, items=None):
        return torch.arange(self.n, dtype=torch.float32).expand(len(histories), -1).clone()


@needs_shared
def test_the_newest_ids_rule_is_no_better_than_pop_on_ml_latest_small(store, plugin):
    plugin(NewestIds)
    spec = lambda m: RunSpec(method=m, dataset="ml-latest-small", latency_users=5)  # noqa: E731
    pop = run(spec("pop"), store)["metrics"]["test"]
    rule = run(spec("test-newest-ids"), store)
    assert rule["metrics"]["test"]["recall@10"] <= pop["recall@10"]  # it was .0656 vs .0238 with ids in file order
    assert rule["eval"]["cold_target_share"] == pytest.approx(0.052, abs=0.002)  # cold targets, reported


def test_cold_targets_are_counted():
    data = load("synthetic", **TINY)
    split = leave_one_out(data)
    counted = cold_targets(split)
    seen = set(np.concatenate(split.train_sequences).tolist())
    assert counted["cold_targets"] == sum(int(t) not in seen for t in split.test.targets)


@needs_shared
def test_the_temporal_split_trains_strictly_before_its_windows():
    data = load("ml-100k")
    split = make_split(data, {"name": "temporal"})
    ts = data.interactions
    train_rows = sum(len(s) for s in split.train_sequences)
    assert train_rows == int((ts["ts"] < split.protocol["valid_start"]).sum())
    assert split.split_id not in (leave_one_out(data).split_id,)
    assert len(split.test.users) and all(len(h) for h in split.test.histories)
    with pytest.raises(ConfigError, match="no timestamps"):
        make_split(load("synthetic", **TINY), {"name": "temporal"})


def test_split_id_does_not_depend_on_how_a_parameter_is_spelt():
    data = load("synthetic", **TINY)
    ids = {make_split(data, {"exclude_history": value}).split_id for value in (0, False, "")}
    assert len(ids) == 1 and make_split(data, {"exclude_history": True}).split_id not in ids


def test_an_explicit_store_folder_beats_the_store_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_STORE", f"sqlite:///{tmp_path}/users-own.db")
    store = RunStore(runs_dir=tmp_path / "throwaway")
    assert store.url == f"sqlite:///{tmp_path / 'throwaway' / 'harness.db'}"
    assert RunStore().url == os.environ["HARNESS_STORE"]


class Editor(Method):
    """Edits its training sequences in place."""
    name = "test-editor"
    paper = "a probe"

    def fit(self, train, budget):
        train.sequences[0][-1] = 0

    def recommend(self, histories, k):
        return TopK(torch.zeros(len(histories), k, dtype=torch.long), torch.zeros(len(histories), k))


def test_training_views_are_read_only_and_share_no_memory_with_the_split(tiny_spec, store, plugin):
    plugin(Editor)
    record = run(tiny_spec("test-editor"), store)
    assert record["status"] == "failed" and "read-only" in record["failure"]
    data = load("synthetic", **TINY)
    split = leave_one_out(data)
    view = TrainView(split.train_sequences, data.n_items, data.items, data.text_fields, lambda m: {},
                     torch.device("cpu"), 0, Path("/nonexistent"), data.name,
                     interactions=TrainInteractions.from_split(split, data.n_items), sid_provider=semantic_ids)
    assert all(s.base is None or not s.flags.writeable for s in view.sequences)
    assert not any(np.shares_memory(a, b) for a, b in zip(view.sequences, split.test.histories))


def test_item_features_at_inference_count_only_exposures_before_the_users_moment():
    import pandas as pd

    from harness.features.cross import ItemHistory, cross_features, feature_priors
    rng = np.random.default_rng(0)
    known = pd.DataFrame({"user": rng.integers(0, 20, 500), "item": rng.integers(0, 30, 500),
                          "ts": rng.integers(100, 200, 500), "rating": rng.integers(1, 6, 500).astype(float)})
    known["label"] = (known["rating"] >= 4).astype(int)
    queries = pd.DataFrame({"user": rng.integers(0, 20, 300), "item": rng.integers(0, 30, 300),
                            "ts": rng.integers(90, 210, 300)})
    priors = feature_priors(known)
    history = ItemHistory(known, priors)
    np.testing.assert_array_equal(history.at(queries["item"], queries["ts"]),
                                  cross_features(known, queries, [[i % 3] for i in range(30)], priors)[:, 6:8])
    later = pd.concat([known, pd.DataFrame({"user": [5] * 50, "item": [3] * 50, "ts": [250] * 50,
                                            "rating": [5.0] * 50, "label": [1] * 50})], ignore_index=True)
    assert np.array_equal(ItemHistory(later, priors).at([3], [199]), history.at([3], [199]))  # the future is unseen


class SwallowsOnce(Method):
    """Ignores the clock and swallows the harness's first stop."""
    name = "test-swallows-once"
    paper = "a probe"

    def fit(self, train, budget):
        from harness.errors import BudgetExceeded
        try:
            while True:
                time.sleep(0.01)
        except BudgetExceeded:
            pass
        while True:  # the stop is raised again at the next poll
            time.sleep(0.01)


def test_a_plugin_that_swallows_the_stop_is_stopped_again(tiny_spec, store, plugin):
    plugin(SwallowsOnce)
    start = time.monotonic()
    record = run(tiny_spec("test-swallows-once", budget_seconds=0.5), store)
    assert record["status"] == "over_budget" and time.monotonic() - start < 15


class CutShort(Blank):
    """Epochs of 20 steps of 0.25 s each under a 3 s cap: the clock cuts the first epoch short (after a few steps,
    even where a loaded machine charges a second or two of start-up to the clock)."""
    name = "test-cut-short"
    default_config = {"epochs": 3, "eval_every": 1, "valid_metric": "ndcg@10", "patience": 5}

    def fit(self, train, budget):
        from harness.engines.training import train_with_validation
        super().fit(train, budget)
        self.net = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(self.net.parameters(), lr=0.0)

        def loss_of(_):
            time.sleep(0.25)
            return (self.net.weight ** 2).sum()
        train_with_validation(self, self.net, train, budget, optimizer, lambda: range(20), loss_of, self.config)


def test_an_epoch_the_clock_cuts_short_is_not_counted_but_its_state_is_validated(tiny_spec, store, plugin):
    plugin(CutShort)
    record = run(tiny_spec("test-cut-short", budget_seconds=3), store)
    assert record["status"] == "budget_bound" and record["used"]["epochs"] == 0
    assert record["used"]["validations"] == 1  # the partly trained state, judged once


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["process", "sandbox"])
def test_the_published_smoke_board_is_unchanged_by_isolation(isolation, tmp_path):
    """Every built-in's seed 0 on the published smoke board, re-run with its plugin in a worker process (and in the
    sandbox): the same numbers, to the sixth decimal the records keep. Minutes on a CPU."""
    import json

    from harness.paths import LEADERBOARDS_DIR
    from harness.run.isolation import sandbox_problem
    if isolation == "sandbox" and sandbox_problem():
        pytest.skip(f"needs a bubblewrap sandbox: {sandbox_problem()}")
    published = [json.loads(line) for line in (LEADERBOARDS_DIR / "smoke" / "synthetic.jsonl").read_text().splitlines()]
    firsts = {r["method"]: r for r in published if r["seed"] == 0 and r["method"] != "itemknn"}
    assert len(firsts) >= 9
    store = RunStore(runs_dir=tmp_path)
    differ = {}
    for method, record in sorted(firsts.items()):
        again = run(RunSpec.for_track(SMOKE, method, "synthetic", seed=0, isolation=isolation), store)
        assert again["isolation"] == isolation and again["split_id"] == record["split_id"]
        if again["metrics"]["test"] != record["metrics"]["test"]:
            differ[method] = (record["metrics"]["test"]["ndcg@10"], again["metrics"]["test"]["ndcg@10"])
    assert not differ, differ
