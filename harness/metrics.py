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

Labelled exposures: AUC is the Mann-Whitney statistic with average ranks for ties (as scikit-learn); log-loss for
probabilities; with several targets per user Recall@k = targets in the top k / targets and NDCG@k has the ideal DCG
of min(k, targets) hits.
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


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor,
                      exclude: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """0-based pessimistic rank of each target among all items; inf where the target was excluded."""
    if scores.ndim != 2 or scores.shape[0] != targets.shape[0]:
        raise EvaluationError(f"score matrix has shape {tuple(scores.shape)}, expected [{targets.shape[0]}, n_items]")
    if torch.isnan(scores).any():
        raise EvaluationError("method returned NaN scores")
    scores = scores.float()
    excluded_target = torch.zeros(len(targets), dtype=torch.bool)
    if exclude is not None:
        hist = _padded(exclude, fill=scores.shape[1])  # pad points at a scratch column
        scores = torch.cat([scores, torch.zeros(len(scores), 1)], dim=1)
        scores.scatter_(1, hist, -math.inf)
        scores = scores[:, :-1]
        excluded_target = (hist == targets[:, None]).any(dim=1)
    target_scores = scores.gather(1, targets[:, None])
    # Pessimistic: every other item scored at least as high as the target is ranked above it.
    ranks = ((scores >= target_scores).sum(dim=1) - 1).double()
    ranks[excluded_target] = math.inf
    return ranks


def ranks_from_topk(items: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, n_items: int,
                    exclude: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """0-based rank of each target in its cleaned top-k list (inf = absent), and counts of dropped entries."""
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
    match = valid & (items == targets[:, None])
    found = match.any(dim=1)
    position = match.float().argmax(dim=1)
    before = (valid.cumsum(dim=1) - valid.long()).gather(1, position[:, None]).squeeze(1)
    if torch.isnan(scores[valid]).any():
        raise EvaluationError("method returned NaN scores")
    target_score = scores.gather(1, position[:, None])
    later = torch.arange(items.shape[1])[None, :] > position[:, None]
    ties_after = (valid & later & (scores == target_score)).sum(dim=1)
    ranks = (before + ties_after).double()
    ranks[~found | excluded_target] = math.inf
    counts = {
        "slots": int(items.numel()),
        "empty": int((~present).sum()),
        "out_of_catalogue": int(out_of_catalogue.sum()),
        "duplicates": int(duplicate.sum()),
        "history_dropped": int(in_history.sum()),
    }
    return ranks, counts


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
