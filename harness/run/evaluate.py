"""Full-catalogue evaluation of a fitted plugin: asking it for scores or top-k lists in batches, with the keyword
arguments its contract declares, and collecting per-user arrays and diagnostics. The rules that turn outputs into
ranks and ranks into numbers live in `harness.metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from harness.api import Method, TopK
from harness.errors import EvaluationError
from harness.metrics import (DEFAULT_KS, group_slots_from_topk, metrics_from_groups, metrics_from_ranks,
                             ranks_from_scores, ranks_from_topk)


EVAL_BATCH = 1024  # users per recommend / score call


@dataclass
class EvalResult:
    per_user: dict[str, np.ndarray]
    metrics: dict[str, float]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    mode: str = "score"


def plugin_kwargs(method: Method, users: Sequence[int] | None = None,
                  exposures: Sequence[Any] | None = None) -> dict[str, Any]:
    """The keyword arguments `recommend` / `score` take besides the histories, as the plugin declares them:
    `users=` (dense user indices) for `uses_user_ids`, `exposures=` (one ExposureHistory per user, labelled protocol)
    for `uses_exposures`. The one place where the harness decides how a plugin is called."""
    kwargs: dict[str, Any] = {}
    if method.uses_user_ids and users is not None:
        kwargs["users"] = np.asarray(users)
    if method.uses_exposures and exposures is not None:
        kwargs["exposures"] = list(exposures)
    return kwargs


def asked_top(method: Method, histories: list, k: int, kwargs: dict[str, Any]) -> TopK:
    """`recommend(histories, k)`, held to its contract as `score()` is: a TopK of `[B, k]` items and scores."""
    top = method.recommend(histories, k, **kwargs)
    if not isinstance(top, TopK) or not isinstance(top.items, torch.Tensor) or not isinstance(top.scores, torch.Tensor):
        raise EvaluationError(f"recommend() returned {type(top).__name__}, expected TopK(items=Tensor, scores=Tensor)")
    want = (len(histories), k)
    if tuple(top.items.shape) != want or tuple(top.scores.shape) != want:
        raise EvaluationError(f"recommend(k={k}) returned items {list(top.items.shape)} and scores "
                              f"{list(top.scores.shape)}, expected [{want[0]}, {want[1]}]")
    return top


def judged_mode(method: Method, mode: str = "auto") -> str:
    """'auto' → 'score' when the plugin has `score` and does not ask to be judged by `recommend`, else 'topk'."""
    if mode != "auto":
        return mode
    return "score" if method.has_score() and not method.retrieves_by_recommend else "topk"


def evaluate_method(method, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int,
                    ks: Sequence[int] = DEFAULT_KS, exclude_history: bool = False, mode: str = "auto",
                    batch_size: int = EVAL_BATCH, desc: str = "evaluate", users: np.ndarray | None = None) -> EvalResult:
    """Rank each target against the full catalogue with the method's `score` (mode 'score') or `recommend` ('topk').

    'auto' uses `score` when the plugin has it (and does not ask to be judged by `recommend`), else `recommend`
    with k = max(ks).
    """
    mode = judged_mode(method, mode)
    k_max = max(ks)
    target_tensor = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    all_ranks, all_slots, all_sizes, counts, generative, alternatives = [], [], [], {}, {}, {}
    item_group = getattr(method, "item_group", None)
    with torch.no_grad():
        for start in tqdm(range(0, len(histories), batch_size), desc=desc, leave=False, disable=None):
            hist = list(histories[start:start + batch_size])
            tgt = target_tensor[start:start + batch_size]
            exclude = hist if exclude_history else None
            kwargs = plugin_kwargs(method, None if users is None else users[start:start + batch_size])
            if mode == "score":
                scores = method.score(hist, None, **kwargs)
                if scores.shape != (len(hist), n_items):
                    raise EvaluationError(f"score() returned shape {tuple(scores.shape)}, expected "
                                          f"[{len(hist)}, {n_items}]")
                ranks = ranks_from_scores(scores.detach().cpu(), tgt, exclude)
                all_ranks.append(ranks)
                all_slots.append(ranks)  # a score matrix has no collision groups: every item is its own
                all_sizes.append(torch.ones(len(ranks), dtype=torch.long))
            else:
                extra = max((len(h) for h in hist), default=0) if exclude_history else 0
                top = asked_top(method, hist, min(n_items, k_max + extra), kwargs)
                top_items, top_scores = top.items.detach().cpu(), top.scores.detach().cpu()
                ranks, batch_counts = ranks_from_topk(top_items, top_scores, tgt, n_items, exclude)
                slots, sizes = group_slots_from_topk(top_items, top_scores, tgt, n_items, item_group, exclude)
                _generative_counts(method, top, tgt, ks, generative)
                for name, (items, item_scores) in alternative_rankings(top).items():
                    alt_ranks, _ = ranks_from_topk(items, item_scores, tgt, n_items, exclude)
                    alt_slots, alt_sizes = group_slots_from_topk(items, item_scores, tgt, n_items, item_group, exclude)
                    alternatives.setdefault(name, []).append((alt_ranks, alt_slots, alt_sizes))
                all_ranks.append(ranks)
                all_slots.append(slots)
                all_sizes.append(sizes)
                for key, value in batch_counts.items():
                    counts[key] = counts.get(key, 0) + value
    ranks = torch.cat(all_ranks) if all_ranks else torch.zeros(0, dtype=torch.double)
    slots = torch.cat(all_slots) if all_slots else torch.zeros(0, dtype=torch.double)
    sizes = torch.cat(all_sizes) if all_sizes else torch.zeros(0, dtype=torch.long)
    per_user = metrics_from_ranks(ranks, ks)
    per_user.update(metrics_from_groups(slots, sizes, ks))  # expected credit within collision groups
    metrics = {name: float(values.mean()) if len(values) else 0.0 for name, values in per_user.items()}
    # The 0-based rank (-1 = miss) determines every metric at any cut-off; it is what published boards keep, with
    # the target's collision group (first slot, -1 = miss, and size), which determines the item_ metrics.
    per_user["rank"] = torch.where(torch.isfinite(ranks), ranks, -1.0).to(torch.int64).numpy()
    per_user["group_slot"] = torch.where(torch.isfinite(slots), slots, -1.0).to(torch.int64).numpy()
    per_user["group_size"] = sizes.to(torch.int64).numpy()
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
    for name, parts in alternatives.items():  # the same candidates ranked another way, same rules
        alt = metrics_from_ranks(torch.cat([p[0] for p in parts]), ks)
        alt.update(metrics_from_groups(torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), ks))
        for metric, values in alt.items():
            diagnostics[f"{name}_ranked/{metric}"] = float(values.mean()) if len(values) else 0.0
    return EvalResult(per_user=per_user, metrics=metrics, diagnostics=diagnostics, mode=mode)


def alternative_rankings(top) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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
    item_group = method.item_group
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
