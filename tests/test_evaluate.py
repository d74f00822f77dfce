"""The vectorised evaluator must agree exactly with a naive per-user reference, ties and exclusions included."""
import math

import numpy as np
import pytest
import torch

from harness.errors import EvaluationError
from harness.metrics import metrics_from_ranks, ranks_from_scores, ranks_from_topk

KS = (1, 3, 5, 10)


def naive_rank_scores(scores, target, history=None):
    scores = list(map(float, scores))
    if history is not None:
        if target in set(history):
            return math.inf
        for h in history:
            scores[h] = -math.inf
    t = scores[target]
    return sum(1 for i, s in enumerate(scores) if s > t) + sum(1 for i, s in enumerate(scores) if s == t and i != target)


def naive_rank_topk(items, scores, target, n_items, history=None):
    if history is not None and target in set(history):
        return math.inf
    seen, cleaned = set(), []
    for item, score in zip(items, scores):
        if item < 0 or item >= n_items or item in seen:
            continue
        seen.add(item)
        if history is not None and item in set(history):
            continue
        cleaned.append((item, score))
    for pos, (item, score) in enumerate(cleaned):
        if item == target:
            return pos + sum(1 for _, s in cleaned[pos + 1:] if s == score)
    return math.inf


def naive_metrics(rank, ks):
    out = {}
    for k in ks:
        out[f"recall@{k}"] = 1.0 if rank < k else 0.0
        out[f"ndcg@{k}"] = 1.0 / math.log2(rank + 2) if rank < k else 0.0
    out["mrr"] = 1.0 / (rank + 1) if rank < max(ks) else 0.0  # MRR@max k, for score matrices and top-k lists alike
    return out


def check(ranks, expected_ranks):
    per_user = metrics_from_ranks(ranks, KS)
    for u, rank in enumerate(expected_ranks):
        for name, value in naive_metrics(rank, KS).items():
            assert per_user[name][u] == pytest.approx(value, abs=1e-12), (u, name)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("exclude", [False, True])
def test_score_mode_matches_reference_with_many_ties(seed, exclude):
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 30
    scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)  # heavy ties
    targets = rng.integers(0, n_items, size=n_users)
    histories = [rng.integers(0, n_items, size=rng.integers(0, 6)) for _ in range(n_users)]
    ranks = ranks_from_scores(torch.tensor(scores), torch.tensor(targets), histories if exclude else None)
    expected = [naive_rank_scores(scores[u], targets[u], histories[u] if exclude else None) for u in range(n_users)]
    assert ranks.tolist() == expected
    check(ranks, expected)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("exclude", [False, True])
def test_topk_mode_matches_reference_with_dirty_lists(seed, exclude):
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 40, 25, 12
    items = rng.integers(-1, n_items + 3, size=(n_users, k))  # -1, out-of-catalogue ids and repeats
    scores = -np.sort(rng.integers(0, 3, size=(n_users, k)), axis=1).astype(np.float32)  # ties, non-increasing
    targets = rng.integers(0, n_items, size=n_users)
    histories = [rng.integers(0, n_items, size=rng.integers(0, 6)) for _ in range(n_users)]
    ranks, counts = ranks_from_topk(torch.tensor(items), torch.tensor(scores), torch.tensor(targets), n_items,
                                    histories if exclude else None)
    expected = [naive_rank_topk(items[u], scores[u], targets[u], n_items, histories[u] if exclude else None)
                for u in range(n_users)]
    assert ranks.tolist() == expected
    check(ranks, expected)
    assert counts["out_of_catalogue"] == int((items >= n_items).sum())
    assert counts["empty"] == int((items < 0).sum())


def test_crafted_ties_are_pessimistic():
    # Target 2 ties with items 0 and 1 at the top: pessimistic rank 2, not 0.
    scores = torch.tensor([[5.0, 5.0, 5.0, 1.0]])
    assert ranks_from_scores(scores, torch.tensor([2])).tolist() == [2.0]
    # A constant scorer (e.g. an untrained model) never hits anything at k < n_items.
    flat = torch.zeros(3, 10)
    ranks = ranks_from_scores(flat, torch.tensor([0, 5, 9]))
    assert ranks.tolist() == [9.0, 9.0, 9.0]
    assert metrics_from_ranks(ranks, [5])["recall@5"].sum() == 0
    # In a list, the target goes after later entries with the same score.
    items = torch.tensor([[7, 3, 4, 8]])
    list_scores = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    ranks, _ = ranks_from_topk(items, list_scores, torch.tensor([3]), n_items=10)
    assert ranks.tolist() == [2.0]


def test_duplicates_count_once_and_absent_target_is_a_miss():
    items = torch.tensor([[1, 1, 1, 2], [4, 5, 6, 7]])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    ranks, counts = ranks_from_topk(items, scores, torch.tensor([2, 9]), n_items=10)
    assert ranks.tolist() == [1.0, math.inf]
    assert counts["duplicates"] == 2


def test_large_k_and_nan_scores():
    scores = torch.randn(5, 2000)
    targets = torch.arange(5)
    ranks = ranks_from_scores(scores, targets)
    per_user = metrics_from_ranks(ranks, [1000])
    expected = [(scores[u] > scores[u, u]).sum().item() < 1000 for u in range(5)]
    assert per_user["recall@1000"].tolist() == [float(e) for e in expected]
    scores[2, 7] = float("nan")
    with pytest.raises(EvaluationError, match="NaN"):
        ranks_from_scores(scores, targets)
