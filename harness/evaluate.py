"""Full-catalogue evaluation: Recall@k, NDCG@k and MRR per user, from score matrices or from top-k lists.

Ranking rules (recorded in every run as `metric_version`):
- score matrices: the target's rank counts every item scored strictly higher plus every other item scored equal
  (pessimistic ties); NaN scores are an error;
- top-k lists: the list order is the ranking; entries that are -1, outside the catalogue, repeated (later copies) or,
  when history exclusion is on, in the user's history are dropped and counted; the target is then placed after every
  later entry with an equal score (pessimistic ties); a target absent from the list is a miss;
- history exclusion (a protocol parameter, off by default as in TIGER/GRID): history items cannot be recommended;
  a target that is itself in the history is then a miss.
MRR is over the full catalogue for score matrices and truncated at the list length for top-k lists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

DEFAULT_KS = (5, 10, 20, 50)


class EvaluationError(Exception):
    """The method's output cannot be evaluated (NaN scores, wrong shape)."""


@dataclass
class EvalResult:
    per_user: dict[str, np.ndarray]
    metrics: dict[str, float]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    mode: str = "score"


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
    per_user["mrr"] = torch.where(finite, 1.0 / (torch.where(finite, ranks, 0.0) + 1.0), 0.0).numpy()
    return per_user


def evaluate_method(method, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int,
                    ks: Sequence[int] = DEFAULT_KS, exclude_history: bool = False, mode: str = "auto",
                    batch_size: int = 1024, desc: str = "evaluate", users: np.ndarray | None = None) -> EvalResult:
    """Rank each target against the full catalogue with the method's `score` (mode 'score') or `recommend` ('topk').

    'auto' uses `score` when the plugin has it (and does not ask to be judged by `recommend`), else `recommend`
    with k = max(ks).
    """
    if mode == "auto":
        mode = "score" if method.has_score() and not getattr(method, "retrieves_by_recommend", False) else "topk"
    k_max = max(ks)
    target_tensor = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    all_ranks, counts, generative, alternatives = [], {}, {}, {}
    pass_users = getattr(method, "uses_user_ids", False) and users is not None
    with torch.no_grad():
        for start in tqdm(range(0, len(histories), batch_size), desc=desc, leave=False, disable=None):
            hist = list(histories[start:start + batch_size])
            tgt = target_tensor[start:start + batch_size]
            exclude = hist if exclude_history else None
            kwargs = {"users": np.asarray(users[start:start + batch_size])} if pass_users else {}
            if mode == "score":
                scores = method.score(hist, None, **kwargs)
                if scores.shape != (len(hist), n_items):
                    raise EvaluationError(f"score() returned shape {tuple(scores.shape)}, expected "
                                          f"[{len(hist)}, {n_items}]")
                all_ranks.append(ranks_from_scores(scores.detach().cpu(), tgt, exclude))
            else:
                extra = max((len(h) for h in hist), default=0) if exclude_history else 0
                top = method.recommend(hist, min(n_items, k_max + extra), **kwargs)
                ranks, batch_counts = ranks_from_topk(top.items.detach().cpu(), top.scores.detach().cpu(), tgt,
                                                      n_items, exclude)
                _generative_counts(method, top, tgt, ks, generative)
                for name, (items, item_scores) in _alternative_rankings(top).items():
                    alt_ranks, _ = ranks_from_topk(items, item_scores, tgt, n_items, exclude)
                    alternatives.setdefault(name, []).append(alt_ranks)
                all_ranks.append(ranks)
                for key, value in batch_counts.items():
                    counts[key] = counts.get(key, 0) + value
    ranks = torch.cat(all_ranks) if all_ranks else torch.zeros(0, dtype=torch.double)
    per_user = metrics_from_ranks(ranks, ks)
    metrics = {name: float(values.mean()) if len(values) else 0.0 for name, values in per_user.items()}
    # The 0-based rank (-1 = miss) determines every metric at any cut-off; it is what published boards keep.
    per_user["rank"] = torch.where(torch.isfinite(ranks), ranks, -1.0).to(torch.int64).numpy()
    diagnostics: dict[str, Any] = {}
    if counts:
        slots = max(1, counts["slots"])
        diagnostics = {"topk_" + key + "_rate": value / slots for key, value in counts.items() if key != "slots"}
    if generative:
        n_users = max(1, generative.pop("users"))
        beams = max(1, generative.pop("beams"))
        valid = max(1, generative.pop("valid_beams"))
        diagnostics["invalid_sid_rate"] = generative.pop("invalid") / beams
        diagnostics["mean_group_size_returned"] = generative.pop("group_size_sum") / valid
        for key, value in generative.items():  # sid_recall@k: the target's SID among the first k generated SIDs
            diagnostics[key] = value / n_users
        for k in ks:
            if f"sid_recall@{k}" in diagnostics and f"recall@{k}" in metrics:
                diagnostics[f"item_recall@{k}"] = metrics[f"recall@{k}"]
    for name, parts in alternatives.items():  # the same candidates ranked another way, same rules
        for metric, values in metrics_from_ranks(torch.cat(parts), ks).items():
            diagnostics[f"{name}_ranked/{metric}"] = float(values.mean()) if len(values) else 0.0
    return EvalResult(per_user=per_user, metrics=metrics, diagnostics=diagnostics, mode=mode)


def _alternative_rankings(top) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`extras["alt:NAME:items"]` / `["alt:NAME:scores"]`: a second top-k list of the same users (e.g. Gryphon's
    beam-order ranking of the pool it re-scores), evaluated beside the main one and reported as NAME_ranked/…"""
    found = {}
    for key, items in (top.extras or {}).items():
        if key.startswith("alt:") and key.endswith(":items"):
            name = key[len("alt:"):-len(":items")]
            found[name] = (items.detach().cpu(), top.extras[f"alt:{name}:scores"].detach().cpu())
    return found


def _generative_counts(method, top, targets: torch.Tensor, ks: Sequence[int], acc: dict[str, float]) -> None:
    groups = top.extras.get("beam_groups") if top.extras else None
    item_group = getattr(method, "item_group", None)
    if groups is None:
        return
    groups = groups.detach().cpu()
    sizes = top.extras.get("beam_group_sizes")
    valid = groups >= 0
    acc["users"] = acc.get("users", 0) + len(groups)
    acc["beams"] = acc.get("beams", 0) + int((groups != -2).sum())  # -2: an empty slot, not a generated SID
    acc["valid_beams"] = acc.get("valid_beams", 0) + int(valid.sum())
    acc["invalid"] = acc.get("invalid", 0) + int((groups == -1).sum())
    if sizes is not None:
        acc["group_size_sum"] = acc.get("group_size_sum", 0) + float(sizes.detach().cpu()[valid].sum())
    else:
        acc.setdefault("group_size_sum", 0.0)
    if item_group is not None:
        target_group = torch.as_tensor(np.asarray(item_group))[targets]
        hit = groups == target_group[:, None]
        for k in ks:
            if k <= groups.shape[1]:
                acc[f"sid_recall@{k}"] = acc.get(f"sid_recall@{k}", 0) + int(hit[:, :k].any(dim=1).sum())
