"""The labelled-exposure protocol: its split, prefix cross features, AUC/gAUC/log-loss and multi-target retrieval."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from harness.board.results import load_results
from harness.cli.main import main
from harness.data import load, make_split
from harness.data.labelled import labelled_split
from harness.errors import DataError
from harness.features.cross import AFTER_ALL, CROSS_FEATURES, candidate_queries, cross_features
from harness.metrics import auc, grouped_retrieval_metrics, log_loss, retrieval_metrics
from harness.run.referee import run
from harness.run.spec import RunSpec

SMALL = {"n_users": 200, "n_items": 120}


@pytest.fixture(scope="module")
def labelled():
    return load("synthetic-labelled", **SMALL)


def test_split_is_chronological_with_blocks_of_the_asked_sizes(labelled):
    split = labelled_split(labelled, {"valid_exposures": 3, "test_exposures": 4})
    frame = labelled.interactions
    for row, user in enumerate(split.test.users[:20]):
        rows = frame[frame.user == user]
        assert list(split.test.block_items[row]) == list(rows.item.to_numpy()[-4:])
        assert list(split.valid.block_items[row]) == list(rows.item.to_numpy()[-7:-4])
        assert np.array_equal(split.test.block_labels[row], (rows.rating.to_numpy()[-4:] >= 4).astype(int))
        # what a method knows when the test block is judged: every exposure before it, never one inside it
        assert len(split.test.exposures[row].items) == len(rows) - 4
        assert split.test.exposures[row].ts.max() <= rows.ts.to_numpy()[-4]
        assert len(split.valid.exposures[row].items) == len(rows) - 7
    train = split.train_exposures
    assert split.split_id != make_split(labelled).split_id  # its own split_id
    assert labelled_split(labelled, {"threshold": 3}).split_id != split.split_id
    # sequences for sequence models are the training positives
    user = split.test.users[0]
    assert (train[(train.user == user)].label.to_numpy() == 1).sum() == len(split.train_sequences[user])


def test_labelled_protocol_on_data_without_labels_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(DataError, match="no ratings"):
        labelled_split(load("synthetic", n_users=50, n_items=40))
    code = main(["run", "--method", "pop", "--dataset", "synthetic", "--protocol", "labelled",
                 "--runs-dir", str(tmp_path / "runs"), "--store", f"sqlite:///{tmp_path}/h.db"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no ratings" in err and err.count("\n") <= 2


def _brute_force(known: pd.DataFrame, query: tuple[int, int, int], attrs) -> np.ndarray:
    """The features of one query row, by their definition, one exposure at a time."""
    user, item, ts = query
    prior_l, prior_r = known.label.mean(), known.rating.mean()

    def stats(rows):
        n = len(rows)
        return [np.log1p(n), (rows.label.sum() + 2 * prior_l) / (n + 2), (rows.rating.sum() + 2 * prior_r) / (n + 2) - prior_r]
    before = known[known.ts < ts]
    mine = before[before.user == user]
    cats = [stats(mine[np.array([c in attrs[i] for i in mine.item], dtype=bool)]) for c in attrs[item]]
    by_cat = np.mean(cats, axis=0) if cats else [0.0, prior_l, 0.0]
    return np.r_[stats(mine), by_cat, stats(before[before.item == item])[:2]]


def test_cross_features_match_their_definition_and_ignore_the_future():
    rng = np.random.default_rng(0)
    n = 300
    known = pd.DataFrame({"user": rng.integers(0, 6, n), "item": rng.integers(0, 15, n), "ts": rng.integers(0, 40, n),
                          "rating": rng.integers(1, 6, n).astype(float)})
    known["label"] = (known.rating >= 4).astype(int)
    attrs = [list(rng.choice(4, size=rng.integers(0, 3), replace=False)) for _ in range(15)]
    features = cross_features(known, known, attrs)
    assert features.shape == (n, len(CROSS_FEATURES))
    for row in range(0, n, 17):
        q = known.iloc[row]
        query = (int(q["user"]), int(q["item"]), int(q["ts"]))
        np.testing.assert_allclose(features[row], _brute_force(known, query, attrs), rtol=1e-5,
                                   atol=1e-6)
    # shuffling everything after t (items, labels, ratings) leaves every feature at or before t unchanged
    t = 20
    after = known.ts > t
    shuffled = known.copy()
    for column in ("item", "rating", "label", "user"):
        shuffled.loc[after, column] = rng.permutation(shuffled.loc[after, column].to_numpy())
    again = cross_features(shuffled, known, attrs)
    np.testing.assert_array_equal(again[~after.to_numpy()], features[~after.to_numpy()])
    assert not np.array_equal(again[after.to_numpy()], features[after.to_numpy()])
    # inference queries see everything known
    q = cross_features(known, candidate_queries([2], [3]), attrs)[0]
    np.testing.assert_allclose(q, _brute_force(known, (2, 3, AFTER_ALL), attrs), rtol=1e-5, atol=1e-6)


def test_auc_gauc_logloss_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auc(np.ones(5), np.arange(5)))
    probabilities = 1 / (1 + np.exp(-scores))
    from sklearn.metrics import log_loss as sk_log_loss
    assert log_loss(labels, probabilities) == pytest.approx(sk_log_loss(labels, probabilities), rel=1e-9)


def test_multi_target_retrieval_metrics_by_hand():
    ranks = [np.array([0.0, 3.0, np.inf]), np.array([]), np.array([1.0])]
    m = retrieval_metrics(ranks, [2, 5])
    assert m["recall@2"][0] == pytest.approx(1 / 3) and m["recall@5"][0] == pytest.approx(2 / 3)
    assert np.isnan(m["recall@5"][1])
    assert m["ndcg@5"][0] == pytest.approx((1 + 1 / np.log2(5)) / (1 + 1 / np.log2(3) + 0.5))
    assert m["ndcg@2"][2] == pytest.approx(1 / np.log2(3))


def test_multi_target_collision_group_credit_by_hand():
    # user 0: a target in a 3-item group at slots 1-3, one at rank 0 (a group of one), one missed; user 1: none
    slots, sizes = [np.array([1.0, 0.0, np.inf]), np.array([])], [np.array([3, 1, 0]), np.array([], dtype=int)]
    m = grouped_retrieval_metrics(slots, sizes, [2, 5])
    assert m["item_recall@2"][0] == pytest.approx((1 / 3 + 1) / 3)  # one of the group's 3 slots is inside the top 2
    assert m["item_recall@5"][0] == pytest.approx((1 + 1) / 3)
    gain = (1 / np.log2(3) + 1 / np.log2(4) + 1 / np.log2(5)) / 3 + 1.0
    assert m["item_ndcg@5"][0] == pytest.approx(gain / (1 + 1 / np.log2(3) + 0.5))
    assert np.isnan(m["item_recall@5"][1]) and np.isnan(m["item_ndcg@2"][1])
    # groups of one item: the pessimistic metrics, target by target
    ranks = [np.array([0.0, 3.0, np.inf]), np.array([]), np.array([1.0])]
    single = grouped_retrieval_metrics(ranks, [np.ones(len(r)) for r in ranks], [2, 5])
    for name, values in retrieval_metrics(ranks, [2, 5]).items():
        np.testing.assert_allclose(single[f"item_{name}"], values, rtol=1e-12)


def test_labelled_evaluator_credits_collision_groups_beside_the_pessimistic_ranks():
    import torch

    from harness.api import Method, TopK
    from harness.data.labelled import ExposureHistory, LabelledPart
    from harness.run.evaluate_labelled import evaluate_labelled
    n_items = 12

    class Grouped(Method):  # every user gets group {0, 1, 2} (one generated SID) first, then items 3 and 4
        name = "grouped"
        item_group = np.array([0, 0, 0] + list(range(1, n_items - 2)))

        def fit(self, train, budget):
            pass

        def recommend(self, histories, k):
            items = torch.tensor([[0, 1, 2, 3, 4]] * len(histories))
            return TopK(items=items, scores=torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.5]] * len(histories)))
    empty = ExposureHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    blocks = [np.array([0, 3, 9]), np.array([1, 2, 4])]
    labels = [np.array([1, 1, 0]), np.array([1, 1, 1])]
    part = LabelledPart(np.arange(2), [np.zeros(0, np.int64)] * 2, [empty] * 2, blocks, labels, pd.DataFrame())
    result = evaluate_labelled(Grouped(), part, n_items, [1, 5], exclude_history=False)
    per_user = result.per_user
    # pessimistically a group member ranks after its whole group (rank 2); in expectation it is at 0, 1 or 2
    assert per_user["recall@1"].tolist() == [0.0, 0.0] and per_user["item_recall@1"] == pytest.approx([1 / 6, 2 / 9])
    assert per_user["recall@5"].tolist() == [1.0, 1.0] and per_user["item_recall@5"].tolist() == [1.0, 1.0]
    gain = (1 + 1 / np.log2(3) + 0.5) / 3  # a group member's expected gain over slots 0-2
    assert per_user["item_ndcg@5"][0] == pytest.approx((gain + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))
    assert per_user["ndcg@5"][0] == pytest.approx((0.5 + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))
    assert result.metrics["item_recall@1"] == pytest.approx((1 / 6 + 2 / 9) / 2)


def test_every_score_method_gets_auc_on_the_labelled_protocol(store, tmp_path):
    records = {}
    for method in ("pop", "sasrec"):
        spec = RunSpec(method=method, dataset="synthetic-labelled", dataset_options=dict(SMALL),
                       protocol={"name": "labelled"}, max_epochs=3, latency_users=5, track="labelled-test")
        records[method] = run(spec, store)
        assert records[method]["status"] == "ok", records[method]["failure"]
    for record in records.values():
        test = record["metrics"]["test"]
        assert 0.0 <= test["auc"] <= 1.0 and 0.0 <= test["gauc"] <= 1.0 and "recall@10" in test
        assert test["item_ndcg@10"] == pytest.approx(test["ndcg@10"])  # no collision groups: the same credit
        assert "logloss" not in test  # these scores are not probabilities
        assert record["protocol"]["name"] == "labelled"
    assert records["pop"]["split_id"] == records["sasrec"]["split_id"]
    results = load_results(track="labelled-test", dataset="synthetic-labelled", store=store, published=False)
    per_user = results.per_user(results.records[0])
    assert {"auc", "recall@10"} <= set(per_user)
    assert len(per_user["auc"]) == records["pop"]["eval"]["users"]
    # published boards keep the per-user metrics, so paired tests work from them alone
    from harness.board.results import export_board
    export_board(results, "labelled-test", "synthetic-labelled", tmp_path / "boards", "table")
    published = load_results(track="labelled-test", dataset="synthetic-labelled", leaderboards_dir=tmp_path / "boards")
    again = published.per_user(published.records[0])
    np.testing.assert_array_equal(again["auc"], results.per_user(published.records[0])["auc"])


def test_sampled_negatives_are_labelled_as_sampled_and_never_presented_as_exposures(store):
    data = load("synthetic", n_users=80, n_items=60)
    split = labelled_split(data, {"negatives": "sampled", "sampled_per_positive": 2})
    assert split.protocol["negatives"] == "sampled" and split.counts["sampled_negatives"] > 0
    frame = data.interactions
    for row, user in enumerate(split.test.users[:10]):
        mine = set(frame[frame.user == user].item)
        labels, items = split.test.block_labels[row], split.test.block_items[row]
        assert (labels == 0).sum() == 2 * (labels == 1).sum()  # every interaction is a positive
        assert not set(items[labels == 0]) & mine  # drawn among items the user never interacted with
        history = split.test.exposures[row]
        assert set(history.items) <= mine and (history.labels == 1).all()  # never presented as exposures
    train = split.train_exposures
    assert train.sampled.any()
    attrs = list(data.items["attrs"])
    np.testing.assert_array_equal(cross_features(train, train, attrs),
                                  cross_features(train[~train.sampled], train, attrs))
    record = run(RunSpec(method="pop", dataset="synthetic", dataset_options={"n_users": 80, "n_items": 60},
                         protocol={"name": "labelled", "negatives": "sampled"}, latency_users=5), store)
    assert record["status"] == "ok" and record["protocol"]["negatives"] == "sampled"
    assert 0.5 < record["metrics"]["test"]["auc"] <= 1.0  # popular positives against uniform draws


def test_evaluator_gauc_and_auc_against_scikit_learn_per_user():
    import torch

    from harness.api import Method
    from harness.data.labelled import ExposureHistory, LabelledPart
    from harness.run.evaluate_labelled import evaluate_labelled
    rng = np.random.default_rng(3)
    n_items, n_users = 30, 12
    table = rng.normal(size=(n_users, n_items)).round(1)  # ties included

    class Fixed(Method):
        name = "fixed"
        uses_user_ids = True

        def fit(self, train, budget):
            pass

        def score(self, histories, items=None, users=None):
            rows = torch.as_tensor(table[np.asarray(users)])
            return rows if items is None else rows[:, items]
    blocks = [rng.choice(n_items, size=6, replace=False) for _ in range(n_users)]
    labels = [rng.integers(0, 2, 6) for _ in range(n_users)]
    labels[0][:] = 1  # a user with one label only: outside gAUC, inside AUC
    empty = ExposureHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    part = LabelledPart(np.arange(n_users), [np.zeros(0, np.int64)] * n_users, [empty] * n_users, blocks, labels,
                        pd.DataFrame())
    result = evaluate_labelled(Fixed(), part, n_items, [5], exclude_history=False)
    per_user = [roc_auc_score(y, table[u, b]) for u, (b, y) in enumerate(zip(blocks, labels)) if 0 < y.sum() < len(y)]
    assert result.metrics["gauc"] == pytest.approx(np.mean(per_user), abs=1e-12)
    pooled = roc_auc_score(np.concatenate(labels), np.concatenate([table[u, b] for u, b in enumerate(blocks)]))
    assert result.metrics["auc"] == pytest.approx(pooled, abs=1e-12)
    assert np.isnan(result.per_user["auc"][0])
