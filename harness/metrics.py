"""What a number means: the rank of a target and the metrics that follow from it (DESIGN §4.2, `metric_version`).

Ranking rules:
- score matrices: the target's rank counts every item scored strictly higher plus every other item scored equal
  (pessimistic ties); NaN scores are an error;
- top-k lists: the list order is the ranking; entries that are -1, outside the catalogue, repeated (later copies) or,
  when history exclusion is on, in the user's history are dropped and counted; the target is then placed after every
  later entry with an equal score (pessimistic ties); a target absent from the list is a miss;
- history exclusion (a protocol parameter, off by default as in TIGER/GRID): history items cannot be recommended;
  a target that is itself in the history is then a miss.
MRR is truncated at the largest cut-off (MRR@max k) in both modes, so a score-based and a list-based method are
measured alike (metric_version 2; version 1 took score matrices over the full catalogue).

Collision groups (metric_version 3 adds `item_recall@k` and `item_ndcg@k`, shown beside the pessimistic metrics,
which are unchanged). A generative method that expands a generated SID into the items sharing it returns those items
as a run of equal scores; the pessimistic rule above ranks a target inside such a group after every member. The
`item_` metrics give the expected credit instead, as CollisionGenRec's collision-corrected ItemHit@K / ItemNDCG@K
(`model/cce.py`, `compute_cce_metrics`): the target is equally likely to be at any of its group's n slots, so for a
group whose first slot is at 0-based position p of the cleaned list
    item_recall@k = |{i < n : p+i < k}| / n,    item_ndcg@k = (1/n) Σ_{i < n, p+i < k} 1 / log2(p+i+2).
A group is a run of consecutive cleaned entries with one SID group (the method's `item_group`) and one score;
entries of other groups tied with it and listed after it still count before it (pessimistic); a group the list's end
cut off has its catalogue size (less history items under history exclusion), and a target of it that the list left
out is credited as one of its unseen members. Every top-k ranking the evaluator scores gets them: the main list and
each `alt:` view (reported as `NAME_ranked/item_recall@k`). A method without collision groups (a score matrix, a
top-k list without `item_group`, or a dedup-token SID table whose groups all have one item) gets values equal to
recall@k / ndcg@k, so one column compares every method; they differ only where a returned group has more than one item.
Differences from CCE: CCE walks the generated SIDs and counts every SID before the target's at its catalogue group
size (an SID no item has at 1 slot); here p is the target group's position among the items the list actually holds
(invalid SIDs, duplicates and history items dropped, as for every metric). With valid, distinct SIDs expanded whole in
beam order (the `none` strategy) and k up to the list's length the two agree exactly. Under `random-pick` a SID
yields one item, so its groups have one slot, except a pick in the list's last slot, which is taken for a group the
list cut off (credited 1/n for each of the SID's n catalogue items).

Labelled exposures: AUC is the Mann-Whitney statistic with average ranks for ties (as scikit-learn); log-loss for
probabilities; with several targets per user Recall@k = targets in the top k / targets and NDCG@k has the ideal DCG
of min(k, targets) hits. Their `item_` forms take each target's expected credit in its collision group (above) and
combine them the same way (expectations add, so two targets in one group need no joint placement).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from harness.errors import EvaluationError

DEFAULT_KS = (5, 10, 20, 50)


def _padded(histories: Sequence[np.ndarray], fill: int) -> torch.Tensor:
    width = max((len(h) for h in histories), default=0) or 1
    out = torch.full((len(histories), width), fill, dtype=torch.long)
    for row, hist in enumerate(histories):
        if len(hist):
            out[row, :len(hist)] = torch.as_tensor(np.asarray(hist, dtype=np.int64))
    return out


ROW_BLOCK = 16  # score rows compared per step: a block of a large catalogue's rows stays in cache for the count


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor,
                      exclude: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """0-based pessimistic rank of each target among all items; inf where the target was excluded."""
    if scores.ndim != 2 or scores.shape[0] != targets.shape[0]:
        raise EvaluationError(f"score matrix has shape {tuple(scores.shape)}, expected [{targets.shape[0]}, n_items]")
    # a sum is one vectorised pass and is NaN only with a NaN (or +inf beside -inf); the exact check then decides
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():
        raise EvaluationError("method returned NaN scores")
    scores = scores.float()
    n_items = scores.shape[1]
    target_scores = scores.gather(1, targets[:, None])
    # Pessimistic: every other item scored at least as high as the target is ranked above it.
    at_least = torch.empty(len(scores), dtype=torch.int32)
    block = torch.empty(min(ROW_BLOCK, len(scores)), n_items, dtype=torch.bool)
    for lo in range(0, len(scores), ROW_BLOCK):
        hi = min(lo + ROW_BLOCK, len(scores))
        torch.ge(scores[lo:hi], target_scores[lo:hi], out=block[:hi - lo])
        at_least[lo:hi] = block[:hi - lo].sum(dim=1, dtype=torch.int32)
    ranks = (at_least - 1).double()
    if exclude is not None:
        # excluded items do not count: those of the (distinct) history items scored at least as high come off; a
        # target scored -inf has every item level with it, excluded or not, as when they were set to -inf
        hist = _padded(exclude, fill=n_items).sort(dim=1).values  # pad (n_items) sorts last
        distinct = torch.ones_like(hist, dtype=torch.bool)
        distinct[:, 1:] = hist[:, 1:] != hist[:, :-1]
        counted = distinct & (hist < n_items) & (target_scores > -math.inf)
        above = counted & (scores.gather(1, hist.clamp(max=n_items - 1)) >= target_scores)
        ranks -= above.sum(dim=1).double()
        ranks[(hist == targets[:, None]).any(dim=1)] = math.inf
    return ranks


def _cleaned_topk(items: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, n_items: int,
                  exclude: Sequence[np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """The entries of a top-k list that count (not -1, in the catalogue, first copies, not in the history when
    history exclusion is on), whether each target is excluded, and counts of the dropped entries."""
    if items.shape != scores.shape or items.ndim != 2 or items.shape[0] != targets.shape[0]:
        raise EvaluationError(f"top-k items {tuple(items.shape)} and scores {tuple(scores.shape)} must both be "
                              f"[{targets.shape[0]}, k]")
    items = items.long()
    present = items >= 0
    out_of_catalogue = present & (items >= n_items)
    valid = present & ~out_of_catalogue
    # Later copies of an item are duplicates: a stable sort puts the first occurrence first among equals.
    keyed = torch.where(valid, items, torch.full_like(items, -1))
    sorted_items, order = keyed.sort(dim=1, stable=True)
    repeat_sorted = (sorted_items[:, 1:] == sorted_items[:, :-1]) & (sorted_items[:, 1:] >= 0)
    duplicate = torch.zeros_like(valid)
    duplicate.scatter_(1, order[:, 1:], repeat_sorted)
    valid &= ~duplicate
    in_history = torch.zeros_like(valid)
    excluded_target = torch.zeros(len(targets), dtype=torch.bool)
    if exclude is not None:
        hist = _padded(exclude, fill=-2)
        in_history = (items[:, :, None] == hist[:, None, :]).any(dim=2) & valid
        valid &= ~in_history
        excluded_target = (hist == targets[:, None]).any(dim=1)
    if torch.isnan(scores[valid]).any():
        raise EvaluationError("method returned NaN scores")
    counts = {
        "slots": int(items.numel()),
        "empty": int((~present).sum()),
        "out_of_catalogue": int(out_of_catalogue.sum()),
        "duplicates": int(duplicate.sum()),
        "history_dropped": int(in_history.sum()),
    }
    return valid, excluded_target, counts


def ranks_from_topk(items: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, n_items: int,
                    exclude: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """0-based rank of each target in its cleaned top-k list (inf = absent), and counts of dropped entries."""
    valid, excluded_target, counts = _cleaned_topk(items, scores, targets, n_items, exclude)
    items = items.long()
    match = valid & (items == targets[:, None])
    found = match.any(dim=1)
    position = match.float().argmax(dim=1)
    before = (valid.cumsum(dim=1) - valid.long()).gather(1, position[:, None]).squeeze(1)
    target_score = scores.gather(1, position[:, None])
    later = torch.arange(items.shape[1])[None, :] > position[:, None]
    ties_after = (valid & later & (scores == target_score)).sum(dim=1)
    ranks = (before + ties_after).double()
    ranks[~found | excluded_target] = math.inf
    return ranks, counts


def group_slots_from_topk(items: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, n_items: int,
                          item_group: np.ndarray | torch.Tensor | None,
                          exclude: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target's collision group sits in its cleaned top-k list: the 0-based position p of the group's
    first slot (inf = the target's group is not in the list, or the target is excluded) and the group size n (0 for
    such a miss).

    A collision group is a run of consecutive cleaned entries with the same SID group (`item_group`, item → group)
    and the same score: the items one generated SID was expanded to. Entries of other groups that tie with it and
    come after it are counted before it (pessimistic, as for `ranks_from_topk`). A run that the list's last slot
    belongs to was cut off by k: its size is then the group's catalogue size (less the user's history items with
    history exclusion), and a target of that group that the list left out is one of its unseen members. Without
    `item_group` every item is its own group, and (p, 1) is the pessimistic rank."""
    valid, excluded_target, _ = _cleaned_topk(items, scores, targets, n_items, exclude)
    items = items.long()
    batch, width = items.shape
    if batch == 0 or width == 0:
        return torch.full((batch,), math.inf, dtype=torch.double), torch.zeros(batch, dtype=torch.long)
    safe = items.clamp(0, max(0, n_items - 1))
    if item_group is None:
        group = safe
        target_group = targets.long()
        catalogue_size = None
    else:
        lookup = torch.as_tensor(np.asarray(item_group), dtype=torch.long)
        group = lookup[safe]
        target_group = lookup[targets.long()]
        catalogue_size = torch.bincount(lookup)
    # The counted entries, moved to the front of each row in list order.
    order = (~valid).long().argsort(dim=1, stable=True)
    kept = valid.gather(1, order)
    g = torch.where(kept, group.gather(1, order), torch.full_like(group, -1))
    s = scores.gather(1, order)
    it = torch.where(kept, items.gather(1, order), torch.full_like(items, -1))
    column = torch.arange(width)[None, :].expand(batch, width)
    new_run = kept.clone()
    new_run[:, 1:] &= (g[:, 1:] != g[:, :-1]) | (s[:, 1:] != s[:, :-1])
    run_start = torch.where(new_run, column, torch.zeros_like(column)).cummax(dim=1).values
    run_id = new_run.long().cumsum(dim=1) - 1  # -1 before the first run (rows with no counted entry)
    n_kept = kept.sum(dim=1)
    # the target's run: the run holding the target, else (the target left out) the last run if it is the target's
    # group and was cut off by the end of the list
    match = kept & (it == targets[:, None])
    found = match.any(dim=1)
    q = match.float().argmax(dim=1)
    last = (n_kept - 1).clamp(min=0)
    raw_last_in_group = (items[:, -1] >= 0) & (items[:, -1] < n_items) & (group[:, -1] == g.gather(1, last[:, None])
                                                                           .squeeze(1))
    cut = (n_kept > 0) & raw_last_in_group
    last_is_target_group = (n_kept > 0) & (g.gather(1, last[:, None]).squeeze(1) == target_group)
    unseen = ~found & cut & last_is_target_group
    at = torch.where(found, q, last)
    target_run = run_id.gather(1, at[:, None]).squeeze(1)
    start = run_start.gather(1, at[:, None]).squeeze(1)
    in_run = kept & (run_id == target_run[:, None])
    seen = in_run.sum(dim=1)
    run_end = torch.where(in_run, column, torch.full_like(column, -1)).max(dim=1).values
    run_score = s.gather(1, at[:, None])
    ties_after = (kept & (column > run_end[:, None]) & (s == run_score) & (run_id != target_run[:, None])).sum(dim=1)
    size = seen + unseen.long()
    target_cut = cut & (run_id.gather(1, last[:, None]).squeeze(1) == target_run) & (found | unseen)
    if catalogue_size is not None and bool(target_cut.any()):
        for row in torch.nonzero(target_cut).flatten().tolist():
            members = int(catalogue_size[target_group[row]])
            if exclude is not None and len(exclude[row]):
                hist = np.unique(np.asarray(exclude[row], dtype=np.int64))
                hist = hist[(hist >= 0) & (hist < n_items)]
                members -= int((np.asarray(item_group)[hist] == int(target_group[row])).sum())
            size[row] = max(int(size[row]), members)
    slots = (start + ties_after).double()
    miss = ~(found | unseen) | excluded_target
    slots[miss] = math.inf
    return slots, torch.where(miss, torch.zeros_like(size), size.clamp(min=1))


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, np.ndarray]:
    per_user: dict[str, np.ndarray] = {}
    finite = torch.isfinite(ranks)
    for k in ks:
        hit = finite & (ranks < k)
        per_user[f"recall@{k}"] = hit.double().numpy()
        gain = torch.where(hit, 1.0 / torch.log2(torch.where(finite, ranks, 0.0) + 2.0), 0.0)
        per_user[f"ndcg@{k}"] = gain.numpy()
    # MRR truncated at the largest cut-off, whether the ranks came from a score matrix or a top-k list of that length
    within = finite & (ranks < max(ks))
    per_user["mrr"] = torch.where(within, 1.0 / (torch.where(finite, ranks, 0.0) + 1.0), 0.0).numpy()
    return per_user


def metrics_from_groups(slots: torch.Tensor, sizes: torch.Tensor, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user `item_recall@k` / `item_ndcg@k`: expected credit when the target is equally likely at each of the n
    slots p, p+1, …, p+n-1 of its collision group: E[hit@k] = |{i < n : p+i < k}| / n and
    E[ndcg@k] = (1/n) Σ_{i < n, p+i < k} 1 / log2(p+i+2). With n = 1 these are recall@k and ndcg@k of rank p."""
    finite = torch.isfinite(slots)
    p = torch.where(finite, slots, 0.0).long()
    n = sizes.long().clamp(min=1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        inside = torch.where(finite, (k - p).clamp(min=0).minimum(n), torch.zeros_like(p))  # slots before k
        gain = torch.zeros(len(p), dtype=torch.double)
        for i in range(int(inside.max()) if len(inside) else 0):  # term by term: exactly ndcg@k when n = 1
            gain += torch.where(i < inside, 1.0 / torch.log2((p + i).double() + 2.0), 0.0)
        out[f"item_recall@{k}"] = (inside.double() / n.double()).numpy()
        out[f"item_ndcg@{k}"] = (gain / n.double()).numpy()
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney with average ranks for ties); NaN without both classes."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def retrieval_metrics(target_ranks: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k from the ranks of each user's targets (NaN for a user without targets)."""
    out = {f"{m}@{k}": np.full(len(target_ranks), np.nan) for k in ks for m in ("recall", "ndcg")}
    for row, ranks in enumerate(target_ranks):
        if len(ranks) == 0:
            continue
        for k in ks:
            hit = ranks < k
            out[f"recall@{k}"][row] = hit.mean()
            ideal = (1.0 / np.log2(np.arange(min(k, len(ranks))) + 2.0)).sum()
            out[f"ndcg@{k}"][row] = (1.0 / np.log2(ranks[hit] + 2.0)).sum() / ideal
    return out


def grouped_retrieval_metrics(target_slots: Sequence[np.ndarray], target_sizes: Sequence[np.ndarray],
                              ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user `item_recall@k` / `item_ndcg@k` with several targets per user: each target's expected hit and gain in
    its collision group (`metrics_from_groups`), averaged (recall) or summed over the ideal DCG of min(k, targets)
    hits (NDCG), as `retrieval_metrics` does with ranks; with groups of one item the two agree (to float rounding)."""
    counts = np.array([len(s) for s in target_slots], dtype=np.int64)
    out = {f"item_{m}@{k}": np.full(len(counts), np.nan) for k in ks for m in ("recall", "ndcg")}
    if counts.sum() == 0:
        return out
    per_target = metrics_from_groups(torch.as_tensor(np.concatenate(target_slots), dtype=torch.double),
                                     torch.as_tensor(np.concatenate(target_sizes), dtype=torch.long), ks)
    owner = np.repeat(np.arange(len(counts)), counts)
    has = counts > 0
    for k in ks:
        hits = np.bincount(owner, per_target[f"item_recall@{k}"], minlength=len(counts))
        gains = np.bincount(owner, per_target[f"item_ndcg@{k}"], minlength=len(counts))
        ideal = np.cumsum(1.0 / np.log2(np.arange(max(k, 1)) + 2.0))[np.minimum(counts, k) - 1]
        out[f"item_recall@{k}"][has] = hits[has] / counts[has]
        out[f"item_ndcg@{k}"][has] = gains[has] / ideal[has]
    return out
