"""The referee: records, determinism, budgets, failures, and no path from a plugin to test targets."""
import math
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.api import Method, check_finite
from harness.errors import ConfigError, HarnessError
from harness.run.referee import run

FAST_SASREC = {"epochs": 30, "patience": 3}


def test_sasrec_beats_pop_and_the_record_is_complete(tiny_spec, store):
    pop = run(tiny_spec("pop"), store)
    sasrec = run(tiny_spec("sasrec", overrides=FAST_SASREC), store)
    assert pop["status"] == sasrec["status"] == "ok"
    assert sasrec["metrics"]["test"]["recall@10"] > pop["metrics"]["test"]["recall@10"] + 0.1
    assert pop["split_id"] == sasrec["split_id"]
    for key in ("run_id", "method_config", "method_config_hash", "dataset", "split_id", "seed", "budget", "used",
                "metrics", "diagnostics", "latency", "params", "peak_memory", "versions", "git_sha", "hardware",
                "metric_version", "protocol_version", "started_at", "finished_at"):
        assert key in sasrec, key
    assert sasrec["params"] > 0 and sasrec["used"]["epochs"] >= 1
    # the plugin's CPU time and memory are its worker's, not the referee's
    assert sasrec["used"]["cpu_seconds"] > 0.1 * sasrec["used"]["train_seconds"] > 0
    assert sasrec["peak_memory"]["rss_mb"] > 0 and sasrec["isolation"] == "process"
    assert {"p50_ms", "p95_ms", "p99_ms", "users_per_s"} <= set(sasrec["latency"])
    assert sasrec["curves"]["validation"], "validation curve recorded"
    per_user = store.per_user(sasrec["run_id"])
    assert per_user["test"]["recall@10"].mean() == pytest.approx(sasrec["metrics"]["test"]["recall@10"])
    assert len(per_user["test"]["ndcg@10"]) == sasrec["eval"]["users"]
    assert store.get(sasrec["run_id"])["status"] == "ok"


def test_same_seed_gives_identical_metrics(tiny_spec, store):
    first = run(tiny_spec("sasrec", seed=3, overrides={"epochs": 4}), store)
    second = run(tiny_spec("sasrec", seed=3, overrides={"epochs": 4}), store)
    assert first["metrics"] == second["metrics"]
    other = run(tiny_spec("sasrec", seed=4, overrides={"epochs": 4}), store)
    assert other["metrics"] != first["metrics"]


def test_bce_loss_trains(tiny_spec, store):
    record = run(tiny_spec("sasrec", overrides={"loss": "bce", "epochs": 5}), store)
    assert record["status"] == "ok" and record["method_config"]["loss"] == "bce"


def test_unknown_config_key_is_rejected_before_running(tiny_spec, store):
    with pytest.raises(ConfigError, match="no config key"):
        run(tiny_spec("sasrec", overrides={"lossy": "ce"}), store)
    assert store.records() == []


class Sleeper(Method):
    """Ignores its budget."""
    name = "test-sleeper"

    def fit(self, train, budget):
        while True:
            time.sleep(0.01)

    def score(self, histories, items=None):
        return torch.zeros(len(histories), 10)


class Polite(Method):
    """Stops when its budget is exhausted."""
    name = "test-polite"

    def fit(self, train, budget):
        self.n = train.n_items
        while not budget.exhausted():
            time.sleep(0.01)

    def score(self, histories, items=None):
        return torch.randn(len(histories), self.n)


def test_budget_is_enforced_from_outside(tiny_spec, store, plugin):
    plugin(Sleeper)
    start = time.monotonic()
    record = run(tiny_spec("test-sleeper", budget_seconds=0.5), store)
    assert record["status"] == "over_budget" and "stopped by the harness" in record["failure"]
    assert time.monotonic() - start < 10
    assert record["metrics"] == {}


def test_a_plugin_that_stops_at_the_safety_cap_is_budget_bound_not_over_budget(tiny_spec, store, plugin):
    plugin(Polite)
    record = run(tiny_spec("test-polite", budget_seconds=0.5), store)
    assert record["status"] == "budget_bound" and "safety cap" in record["failure"]
    assert "test" in record["metrics"]  # evaluated, shown, never ranked
    assert 0.5 <= record["used"]["train_seconds"] < 2.0


class Raiser(Method):
    name = "test-raiser"

    def fit(self, train, budget):
        raise RuntimeError("boom in fit")


class NaNLoss(Method):
    name = "test-nanloss"

    def fit(self, train, budget):
        check_finite(torch.tensor(float("nan")), step=7)


class NaNScores(Method):
    name = "test-nanscores"

    def fit(self, train, budget):
        self.n = train.n_items

    def score(self, histories, items=None):
        return torch.full((len(histories), self.n), float("nan"))


@pytest.mark.parametrize("cls, reason", [(Raiser, "RuntimeError in fit: boom in fit"),
                                         (NaNLoss, "NonFiniteLoss: non-finite loss (nan) at step 7"),
                                         (NaNScores, "NaN scores")])
def test_plugin_failures_become_failed_records(cls, reason, tiny_spec, store, plugin):
    plugin(cls)
    record = run(tiny_spec(cls.name), store)
    assert record["status"] == "failed" and reason in record["failure"]
    assert [r["status"] for r in store.records()] == ["failed"]


def test_unknown_method_names_the_available_ones(tiny_spec, store):
    with pytest.raises(HarnessError, match="unknown method 'nope'.*sasrec"):
        run(tiny_spec("nope"), store)


# --- no reach to test targets -------------------------------------------------------------------------------------

from harness.plugins.checks import content_digest  # noqa: E402


class Snoop(Method):
    """Collects everything reachable from its TrainView, and recommends from a hash of it."""
    name = "test-snoop"

    def fit(self, train, budget):
        self.digest = int(content_digest(train)[:15], 16)  # the validator's digest of all data reachable
        self.n = train.n_items

    def score(self, histories, items=None):
        g = torch.Generator().manual_seed(abs(self.digest) % 2**31)
        return torch.rand(len(histories), self.n, generator=g)

    def diagnostics(self):
        return {"digest": self.digest}


def test_trainview_holds_nothing_derived_from_test_targets(tmp_path, store, plugin):
    """Two datasets that differ only in every user's last (test) item: the plugin sees identical inputs."""
    from test_data import s3rec_files, write_card
    rng = np.random.default_rng(0)
    base = [list(rng.integers(1, 40, size=rng.integers(4, 9))) for _ in range(60)]
    cards = []
    for variant in range(2):
        root = tmp_path / f"v{variant}"
        # catalogue ids 1..40 all appear in training positions; only the last item changes between variants
        seqs = [s[:-1] + [int((s[-1] + 17 * variant) % 40) + 1] for s in base]
        seqs[0] = list(range(1, 41)) + seqs[0]
        path = s3rec_files(root, seqs)
        folder = tmp_path / f"cards{variant}"
        folder.mkdir()
        cards.append((write_card(folder, "leak", "s3rec", {"sequences": path}, root), root))
    plugin(Snoop)
    from harness.run.spec import RunSpec
    records = [run(RunSpec(method="test-snoop", dataset=str(card), data_dir=str(root), latency_users=5,
                           ks=[5, 10, 20]), store)  # cut-offs within the 40-item catalogue
               for card, root in cards]
    assert records[0]["split_id"] != records[1]["split_id"]
    assert records[0]["diagnostics"]["digest"] == records[1]["diagnostics"]["digest"]
    assert records[0]["status"] == records[1]["status"] == "ok"
    # identical inputs + same seed → identical recommendations, so identical metrics would follow for equal targets
    per_user = [store.per_user(r["run_id"])["valid"]["recall@20"] for r in records]
    np.testing.assert_array_equal(per_user[0], per_user[1])


# --- a plugin that dies, eats memory or never returns ------------------------------------------------------------

class KillsItself(Method):
    name = "test-kills-itself"
    paper = "a probe"

    def fit(self, train, budget):
        import os
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


class Segfaults(Method):
    name = "test-segfaults"
    paper = "a probe"

    def fit(self, train, budget):
        import ctypes
        ctypes.string_at(0)  # reads address 0


class EatsMemory(Method):
    name = "test-eats-memory"
    paper = "a probe"

    def fit(self, train, budget):
        blocks = []
        while True:  # until the allocator says no
            blocks.append(np.ones(2 ** 27 // 8))


class CatchesEverything(Method):
    """Never returns: catches the harness's stop and keeps going, in a long C call half of the time."""
    name = "test-catches-everything"
    paper = "a probe"

    def fit(self, train, budget):
        while True:
            try:
                time.sleep(5)
            except BaseException:  # noqa: BLE001
                pass


@pytest.mark.parametrize("cls, words", [(KillsItself, "killed by SIGKILL"), (Segfaults, "killed by SIGSEGV")])
def test_a_worker_that_dies_is_a_failed_record_saying_how(cls, words, tiny_spec, store, plugin):
    plugin(cls)
    start = time.monotonic()
    record = run(tiny_spec(cls.name, budget_seconds=5), store)
    assert record["status"] == "failed" and words in record["failure"] and "during fit" in record["failure"]
    assert time.monotonic() - start < 15 and store.get(record["run_id"])["status"] == "failed"


def test_a_plugin_past_its_memory_cap_fails_and_the_seeds_go_on(tiny_spec, store, plugin):
    from harness.studies.seeds import run_seeds
    plugin(EatsMemory)
    records = run_seeds(tiny_spec("test-eats-memory", memory_mb=1500), [0, 1], store, n_jobs=1)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("MemoryError in fit" in r["failure"] and "memory cap is 1500 MB" in r["failure"] for r in records)


def test_a_plugin_that_never_returns_is_killed_at_the_hard_limit(tiny_spec, store, plugin):
    plugin(CatchesEverything)
    start = time.monotonic()
    record = run(tiny_spec("test-catches-everything", budget_seconds=1.0), store)
    assert record["status"] == "over_budget" and "worker process was killed" in record["failure"]
    assert time.monotonic() - start < 3.0 + 5  # hard limit (1 s + 2 s grace) + a few seconds


def test_isolation_none_is_recorded_and_a_sandbox_where_bwrap_works(tiny_spec, store):
    from harness.run.isolation import sandbox_problem
    here = run(tiny_spec("pop", isolation="none"), store)
    apart = run(tiny_spec("pop", isolation="process"), store)  # score blocks through shared memory
    assert (here["isolation"], apart["isolation"]) == ("none", "process") and here["metrics"] == apart["metrics"]
    if sandbox_problem() is None:
        boxed = run(tiny_spec("pop", isolation="sandbox"), store)
        assert boxed["isolation"] == "sandbox" and boxed["metrics"] == here["metrics"]
    else:
        with pytest.raises(HarnessError, match="--isolation sandbox"):
            run(tiny_spec("pop", isolation="sandbox"), store)
