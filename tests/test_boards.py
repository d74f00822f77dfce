"""Leaderboard, compare and export: tables from the store and from published boards agree, ties are marked."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY
from harness.api import Method
from harness.board.results import export_board, load_results
from harness.board.stats import paired
from harness.board.store import RunStore
from harness.board.tables import compare_rows, leaderboard_rows, render
from harness.cli.main import main
from harness.run.spec import RunSpec
from harness.studies.seeds import run_seeds


class NoisyPop(Method):
    """Popularity plus seed-dependent noise: close to Pop, different per seed."""
    name = "test-noisy-pop"

    def fit(self, train, budget):
        counts = torch.as_tensor(train.item_counts(), dtype=torch.float32)
        g = torch.Generator().manual_seed(train.seed)
        self.scores_ = counts + 3 * torch.rand(len(counts), generator=g)

    def score(self, histories, items=None):
        return self.scores_.expand(len(histories), -1).clone()


@pytest.fixture
def board(tmp_path, plugin):
    plugin(NoisyPop)
    store = RunStore(runs_dir=tmp_path / "runs")
    for method in ("pop", "test-noisy-pop"):
        run_seeds(RunSpec(method=method, dataset="synthetic", dataset_options=dict(TINY), track="smoke",
                          latency_users=5), [0, 1, 2], store, n_jobs=1)
    return store, tmp_path


def test_published_board_reproduces_the_store_tables(board):
    store, tmp_path = board
    local = load_results(track="smoke", dataset="synthetic", store=store, published=False)
    assert len(local.records) == 6
    table = render(leaderboard_rows(local, [5, 10], "ndcg@10"), "md")
    export_board(local, "smoke", "synthetic", tmp_path / "boards", table)
    published = load_results(track="smoke", dataset="synthetic", published=True, leaderboards_dir=tmp_path / "boards")
    assert {r["run_id"] for r in published.records} == {r["run_id"] for r in local.records}
    for record in local.records:
        np.testing.assert_array_equal(local.per_user(record)["ndcg@10"], published.per_user(record)["ndcg@10"])
    rows_local = compare_rows(local, local.groups(), "ndcg@10", "wilcoxon", "holm", 0.05)
    rows_published = compare_rows(published, published.groups(), "ndcg@10", "wilcoxon", "holm", 0.05)
    assert rows_local == rows_published
    # the p-value shown is scipy's Wilcoxon on the seed-averaged per-user arrays
    groups = local.groups()
    arrays = {label: np.mean([local.per_user(r)["ndcg@10"] for r in recs], axis=0) for label, recs in groups.items()}
    best = max(arrays, key=lambda k: np.mean([r["metrics"]["test"]["ndcg@10"] for r in groups[k]]))
    other = next(k for k in arrays if k != best)
    row = next(r for r in rows_local if r["method"] == other)
    assert row["p wilcoxon"] == format(paired(arrays[other], arrays[best])["p_wilcoxon"], ".2e")


def test_cli_leaderboard_compare_and_broken_published_records(board, capsys, monkeypatch):
    store, tmp_path = board
    runs = str(tmp_path / "runs")
    assert main(["leaderboard", "--track", "smoke", "--dataset", "synthetic", "--runs-dir", runs,
                 "--no-published", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["method"] for r in rows} == {"pop", "test-noisy-pop"} and all(r["seeds"] == 3 for r in rows)
    assert sorted(r["tied_with_best"] for r in rows) in (["best", "different"], ["best", "tied"])
    # under the table: the methods the track pins that have no run on this board
    assert main(["leaderboard", "--track", "smoke", "--dataset", "synthetic", "--runs-dir", runs,
                 "--no-published", "--format", "md"]) == 0
    missing = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Not run on this board"))
    assert "sasrec" in missing and "gryphon" in missing and "pop" not in missing
    assert main(["compare", "--track", "smoke", "--dataset", "synthetic", "--runs-dir", runs, "--no-published",
                 "--methods", "pop,test-noisy-pop", "--metric", "recall@10"]) == 0
    out = capsys.readouterr().out
    assert "p wilcoxon" in out and "best" in out
    # a published board with a broken line: skipped with a warning, never a crash
    folder = tmp_path / "boards" / "smoke"
    folder.mkdir(parents=True)
    (folder / "synthetic.jsonl").write_text('{"not": "a record"}\nnot json\n')
    results = load_results(track="smoke", dataset="synthetic", store=store, leaderboards_dir=tmp_path / "boards")
    assert len(results.broken) == 2 and len(results.records) == 6
