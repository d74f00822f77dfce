"""The vectorised evaluator must agree exactly with a naive per-user reference, ties and exclusions included; the
expected credit within collision groups (item_recall / item_ndcg) must match CollisionGenRec's definition."""
import math

import numpy as np
import pytest
import torch

from harness.api import Method, TopK
from harness.errors import EvaluationError
from harness.metrics import (group_slots_from_topk, metrics_from_groups, metrics_from_ranks, ranks_from_scores,
                             ranks_from_topk)
from harness.run.evaluate import evaluate_method

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
    scores[rng.random(scores.shape) < 0.1] = -np.inf  # masked items, some of them targets
    scores[rng.random(scores.shape) < 0.05] = np.inf
    targets = rng.integers(0, n_items, size=n_users)
    histories = [rng.integers(0, n_items, size=rng.integers(0, 6)) for _ in range(n_users)]  # repeats too
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


# --- metric_version 3: expected credit within collision groups (CollisionGenRec's ItemHit@K / ItemNDCG@K) ----------

def _dcg(*positions):
    return sum(1.0 / math.log2(p + 2) for p in positions)


# item → SID group: group 0 = {0, 1, 2}, group 1 = {3}, group 2 = {4, 5, 6}, groups 3-5 = {7}, {8}, {9}
ITEM_GROUP = np.array([0, 0, 0, 1, 2, 2, 2, 3, 4, 5])


def _group_metrics(items, scores, targets, ks, exclude=None, item_group=ITEM_GROUP, n_items=10):
    slots, sizes = group_slots_from_topk(torch.tensor(np.array(items)), torch.tensor(np.array(scores), dtype=torch.float32),
                                         torch.tensor(np.array(targets)), n_items, item_group, exclude)
    return slots, sizes, metrics_from_groups(slots, sizes, ks)


def test_item_metrics_hand_computed_for_groups_straddling_k():
    # the vanilla expansion of the beams g1, g2, -1 (invalid: no item), g3, g0, each group sharing its beam score
    items = [[3, 4, 5, 6, -1, 7, 0, 1, 2]]
    scores = [[-1.0, -2.0, -2.0, -2.0, -3.0, -4.0, -5.0, -5.0, -5.0]]
    ks = (1, 3, 5, 9)
    # a group of size 1 at position 0: full credit at every k, as recall@k
    slots, sizes, m = _group_metrics(items, scores, [3], ks)
    assert (slots.tolist(), sizes.tolist()) == ([0.0], [1])
    for k in ks:
        assert m[f"item_recall@{k}"][0] == 1.0 and m[f"item_ndcg@{k}"][0] == pytest.approx(1.0)
    # a group of size 3 at slots 1, 2, 3 straddling k = 3: two of its three slots are inside
    slots, sizes, m = _group_metrics(items, scores, [5], ks)
    assert (slots.tolist(), sizes.tolist()) == ([1.0], [3])
    assert m["item_recall@1"][0] == 0.0 and m["item_ndcg@1"][0] == 0.0
    assert m["item_recall@3"][0] == pytest.approx(2 / 3)
    assert m["item_ndcg@3"][0] == pytest.approx(_dcg(1, 2) / 3)
    assert m["item_recall@5"][0] == pytest.approx(1.0)
    assert m["item_ndcg@5"][0] == pytest.approx(_dcg(1, 2, 3) / 3)
    # every member of a group gets the same credit, whichever slot the list happened to put it in
    for member in (4, 6):
        assert _group_metrics(items, scores, [member], ks)[2]["item_ndcg@5"][0] == pytest.approx(_dcg(1, 2, 3) / 3)
    # the invalid SID (-1) takes no slot: item 7 is at position 4, the group {0, 1, 2} at 5, 6, 7 straddles k = 7
    slots, sizes, m = _group_metrics(items, scores, [7], ks)
    assert slots.tolist() == [4.0] and m["item_recall@5"][0] == 1.0 and m["item_ndcg@5"][0] == pytest.approx(_dcg(4))
    slots, sizes, m = _group_metrics(items, scores, [1], (5, 7, 8))
    assert (slots.tolist(), sizes.tolist()) == ([5.0], [3])
    assert m["item_recall@5"][0] == 0.0
    assert m["item_recall@7"][0] == pytest.approx(2 / 3) and m["item_ndcg@7"][0] == pytest.approx(_dcg(5, 6) / 3)
    assert m["item_recall@8"][0] == pytest.approx(1.0) and m["item_ndcg@8"][0] == pytest.approx(_dcg(5, 6, 7) / 3)
    # a target whose group was not generated: no credit, size 0
    slots, sizes, m = _group_metrics(items, scores, [9], ks)
    assert (slots.tolist(), sizes.tolist()) == ([math.inf], [0])
    assert all(values[0] == 0.0 for values in m.values())


def test_pessimistic_metrics_are_unchanged_beside_the_expected_ones():
    items = torch.tensor([[3, 4, 5, 6, -1, 7, 0, 1, 2]])
    scores = torch.tensor([[-1.0, -2.0, -2.0, -2.0, -3.0, -4.0, -5.0, -5.0, -5.0]])
    # pessimistic: a member of a collision group is ranked after every member of it
    expected = {3: 0.0, 4: 3.0, 5: 3.0, 6: 3.0, 7: 4.0, 0: 7.0, 1: 7.0, 2: 7.0, 8: math.inf}
    for target, rank in expected.items():
        ranks, _ = ranks_from_topk(items, scores, torch.tensor([target]), 10)
        assert ranks.tolist() == [rank]
    per_user = metrics_from_ranks(torch.tensor([3.0]), [3, 5])
    assert per_user["recall@3"][0] == 0.0 and per_user["recall@5"][0] == 1.0
    assert per_user["ndcg@5"][0] == pytest.approx(_dcg(3))


def test_group_cut_off_by_the_end_of_the_list_keeps_its_catalogue_size():
    # k = 5: g1 at 0, g2 at 1..3, then g0 = {0, 1, 2} of which only item 0 fits; items 1 and 2 are its unseen slots
    items = [[3, 4, 5, 6, 0]]
    scores = [[-1.0, -2.0, -2.0, -2.0, -3.0]]
    for target in (0, 1, 2):  # the listed member and the ones the list left out get the same expected credit
        slots, sizes, m = _group_metrics(items, scores, [target], (4, 5))
        assert (slots.tolist(), sizes.tolist()) == ([4.0], [3])
        assert m["item_recall@4"][0] == 0.0
        assert m["item_recall@5"][0] == pytest.approx(1 / 3) and m["item_ndcg@5"][0] == pytest.approx(_dcg(4) / 3)
    # pessimistic: the listed member is a hit at 5, the others are misses
    assert ranks_from_topk(torch.tensor(items), torch.tensor(scores), torch.tensor([0]), 10)[0].tolist() == [4.0]
    assert ranks_from_topk(torch.tensor(items), torch.tensor(scores), torch.tensor([1]), 10)[0].tolist() == [math.inf]
    # under history exclusion the group's members in the history are no candidates: item 2 seen → n = 2
    slots, sizes, m = _group_metrics(items, scores, [1], (5,), exclude=[np.array([2])])
    assert sizes.tolist() == [2] and m["item_recall@5"][0] == pytest.approx(1 / 2)
    # a target in the history is a miss, as for every metric
    slots, sizes, m = _group_metrics(items, scores, [2], (5,), exclude=[np.array([2])])
    assert slots.tolist() == [math.inf] and m["item_recall@5"][0] == 0.0


def test_ties_with_other_groups_stay_pessimistic_and_no_groups_means_equal_values():
    # g1 and g2 tie on score: the group {4, 5, 6} is credited from slot 1, the single item 3 after it (slot 3)
    items = [[4, 5, 6, 3]]
    scores = [[-1.0, -1.0, -1.0, -1.0]]
    slots, sizes, _ = _group_metrics(items, scores, [3], (4,))
    assert (slots.tolist(), sizes.tolist()) == ([3.0], [1])
    slots, sizes, _ = _group_metrics(items, scores, [5], (4,))
    assert (slots.tolist(), sizes.tolist()) == ([1.0], [3])  # after item 3, which ties with it
    # without item_group every item is its own group: the item metrics equal recall@k / ndcg@k
    rng = np.random.default_rng(0)
    lists = rng.integers(-1, 12, size=(50, 8))
    list_scores = -np.sort(rng.integers(0, 3, size=(50, 8)), axis=1).astype(np.float32)
    targets = rng.integers(0, 10, size=50)
    ranks, _ = ranks_from_topk(torch.tensor(lists), torch.tensor(list_scores), torch.tensor(targets), 10)
    slots, sizes, m = _group_metrics(lists, list_scores, targets, KS, item_group=None)
    pessimistic = metrics_from_ranks(ranks, KS)
    for k in KS:
        assert np.allclose(m[f"item_recall@{k}"], pessimistic[f"recall@{k}"])
        assert np.allclose(m[f"item_ndcg@{k}"], pessimistic[f"ndcg@{k}"])


def _cce(beams, target, members, k):
    """CollisionGenRec's definition, restated: the target's SID at beam rank r, P = items of the SIDs before it,
    G = its group's size; ItemHit@K = min(G, max(0, K - P)) / G, ItemNDCG@K = (1/G) Σ_{i=1..that} 1/log2(P+i+1)."""
    group = [g for g, m in enumerate(members) if target in m][0]
    if group not in beams:
        return 0.0, 0.0
    r = beams.index(group)
    p = sum(len(members[g]) for g in beams[:r])
    size = len(members[group])
    effective = min(size, max(0, k - p))
    return effective / size, sum(1.0 / math.log2(p + i + 1) for i in range(1, effective + 1)) / size


@pytest.mark.parametrize("seed", range(3))
def test_item_metrics_match_collisiongenrec_on_vanilla_expansions(seed):
    rng = np.random.default_rng(seed)
    n_items = 30
    for _ in range(60):
        item_group = np.unique(rng.integers(0, 12, n_items), return_inverse=True)[1].reshape(-1)
        members = [list(np.flatnonzero(item_group == g)) for g in range(item_group.max() + 1)]
        beams = [int(g) for g in rng.permutation(len(members))[:rng.integers(1, len(members) + 1)]]
        beam_scores = -np.sort(rng.random(len(beams)))
        width = int(rng.integers(1, 15))
        items = np.concatenate([members[g] for g in beams])[:width]
        scores = np.concatenate([[beam_scores[j]] * len(members[g]) for j, g in enumerate(beams)])[:width]
        items = np.concatenate([items, -np.ones(width - len(items), dtype=np.int64)])
        scores = np.concatenate([scores, np.full(width - len(scores), -np.inf)])
        target = int(rng.integers(n_items))
        ks = sorted({1, min(3, width), width})
        _, _, m = _group_metrics([items], [scores], [target], ks, item_group=item_group, n_items=n_items)
        for k in ks:
            hit, ndcg = _cce(beams, target, members, k)
            assert m[f"item_recall@{k}"][0] == pytest.approx(hit, abs=1e-9)
            assert m[f"item_ndcg@{k}"][0] == pytest.approx(ndcg, abs=1e-9)


class _Generative(Method):
    """A generative stand-in: beams g2, invalid, g0 expanded in beam order; an alt view in item order."""
    name = "fake-generative"
    item_group = ITEM_GROUP

    def recommend(self, histories, k):
        items = torch.tensor([[4, 5, 6, 0, 1, 2, -1, -1]])[:, :k].repeat(len(histories), 1)
        scores = torch.tensor([[-1.0, -1, -1, -2, -2, -2, -math.inf, -math.inf]])[:, :k].repeat(len(histories), 1)
        groups = torch.tensor([[2, -1, 0, -2]]).repeat(len(histories), 1)
        sizes = torch.tensor([[3, 0, 3, 0]]).repeat(len(histories), 1)
        alt_items = torch.tensor([[0, 1, 2, 4, 5, 6, -1, -1]])[:, :k].repeat(len(histories), 1)
        return TopK(items, scores, {"beam_groups": groups, "beam_group_sizes": sizes,
                                    "alt:item:items": alt_items, "alt:item:scores": -torch.arange(k).float()[None]
                                    .repeat(len(histories), 1)})


class _Scorer(Method):
    name = "fake-scorer"

    def score(self, histories, items=None):
        return torch.tensor([[0.0, 5, 4, 4, 3, 2, 1, 0, 0, 0]]).repeat(len(histories), 1)


def test_evaluator_reports_item_metrics_beside_the_pessimistic_ones():
    histories = [np.array([9]), np.array([9]), np.array([9])]
    targets = np.array([5, 1, 8])
    result = evaluate_method(_Generative(), histories, targets, n_items=10, ks=(1, 3, 5))
    # pessimistic: item 5 at rank 2; the list (k = 5) ends at item 1, so it is last of what is left of its group
    assert result.per_user["rank"].tolist() == [2, 4, -1]
    assert result.metrics["recall@3"] == pytest.approx(1 / 3) and result.metrics["recall@5"] == pytest.approx(2 / 3)
    # expected: the group {4, 5, 6} at slots 0..2, the group {0, 1, 2} at 3..5 straddling k = 5 (cut by the list)
    assert result.per_user["group_slot"].tolist() == [0, 3, -1]
    assert result.per_user["group_size"].tolist() == [3, 3, 0]
    assert result.per_user["item_recall@1"].tolist() == pytest.approx([1 / 3, 0, 0])
    assert result.per_user["item_recall@5"].tolist() == pytest.approx([1, 2 / 3, 0])
    assert result.metrics["item_ndcg@5"] == pytest.approx((_dcg(0, 1, 2) / 3 + _dcg(3, 4) / 3) / 3)
    # the alt view (distinct scores: no collision group) gets item metrics too, equal to its pessimistic ones
    assert result.diagnostics["item_ranked/item_recall@3"] == result.diagnostics["item_ranked/recall@3"]
    assert result.diagnostics["item_ranked/recall@3"] == pytest.approx(1 / 3)
    assert "item_recall@3" not in result.diagnostics  # the item_ figures are metrics now, not diagnostics
    assert result.diagnostics["invalid_sid_rate"] == pytest.approx(1 / 3)
    # a score matrix has no collision groups: item metrics equal the pessimistic metrics, ties still pessimistic
    scored = evaluate_method(_Scorer(), histories, np.array([2, 3, 0]), n_items=10, ks=(1, 3, 5))
    assert scored.per_user["rank"].tolist() == [2, 2, 9]
    for k in (1, 3, 5):
        assert scored.metrics[f"item_recall@{k}"] == scored.metrics[f"recall@{k}"]
        assert scored.metrics[f"item_ndcg@{k}"] == scored.metrics[f"ndcg@{k}"]


def test_metric_version_is_3():
    import harness
    assert harness.METRIC_VERSION == 3
