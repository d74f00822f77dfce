"""Evaluation on the labelled-exposure protocol: ranking AUC over real exposures beside full-catalogue retrieval.

- AUC: every exposure of the block, pooled, scored by each of the method's `auc_scorers()` (its `score`; DIG adds
  its retrieval path); ties count half (the Mann-Whitney statistic, as scikit-learn).
- gAUC: the mean over users with both a positive and a negative in the block of the user's own AUC (unweighted).
- log-loss: only for methods whose scores are probabilities (`probability_scores = True`).
- Retrieval: the block's positives are the targets; Recall@k = targets in the top k / targets, NDCG@k with the ideal
  DCG of min(k, targets) hits. Ranks follow the leave-one-out rules (pessimistic ties, cleaned top-k lists), and the
  user's earlier exposures are excluded when the protocol says so. Users without a positive in the block have no
  retrieval value (NaN in their per-user arrays) but still count for AUC.
- Collision groups: `item_recall@k` / `item_ndcg@k` beside them, each target credited in expectation inside its
  group (`harness.metrics`), as on the leave-one-out protocol; equal to the pessimistic ones without groups.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from harness.api import Method
from harness.data.labelled import LabelledPart
from harness.errors import EvaluationError
from harness.metrics import (auc, group_slots_from_topk, grouped_retrieval_metrics, log_loss, ranks_from_scores,
                             ranks_from_topk, retrieval_metrics)
from harness.run.evaluate import EvalResult, alternative_rankings, asked_top, judged_mode, plugin_kwargs


def _call_kwargs(method: Method, part: LabelledPart, rows: slice) -> dict[str, Any]:
    return plugin_kwargs(method, part.users[rows], part.exposures[rows])


def exposure_scores(scorer: Callable, method, part: LabelledPart, batch_size: int = 128) -> list[np.ndarray]:
    """Each user's scores for the exposed items of the block, asking the scorer for the batch's union of items."""
    out: list[np.ndarray] = []
    for start in range(0, len(part.users), batch_size):
        rows = slice(start, start + batch_size)
        block = part.block_items[rows]
        if getattr(scorer, "pairs", False):  # scores exactly the (user, item) pairs asked for
            scores = scorer(list(part.histories[rows]), list(block), **_call_kwargs(method, part, rows))
            if any(np.isnan(s).any() for s in scores):
                raise EvaluationError("method returned NaN scores")
            out.extend(np.asarray(s, dtype=np.float64) for s in scores)
            continue
        union, inverse = np.unique(np.concatenate(block), return_inverse=True)
        scores = scorer(list(part.histories[rows]), torch.as_tensor(union), **_call_kwargs(method, part, rows))
        scores = scores.detach().cpu().double().numpy()
        if scores.shape != (len(block), len(union)):
            raise EvaluationError(f"score(items=...) returned shape {scores.shape}, expected {(len(block), len(union))}")
        if np.isnan(scores).any():
            raise EvaluationError("method returned NaN scores")
        offset = 0
        for row, items in enumerate(block):
            out.append(scores[row, inverse[offset:offset + len(items)]])
            offset += len(items)
    return out


def _retrieval_ranks(method, part: LabelledPart, n_items: int, k_max: int, mode: str, exclude_history: bool,
                     batch_size: int) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per ranking ("" the method's own, then each alternative it offers) and per user, each target's pessimistic
    rank (`ranks`, inf = missed) and its collision group's first slot and size (`slots`, `sizes`)."""
    found: dict[str, dict[str, list[np.ndarray]]] = {}
    item_group = getattr(method, "item_group", None)
    targets = part.targets
    excluded = part.exclude() if exclude_history else None
    for start in tqdm(range(0, len(part.users), batch_size), desc="retrieve", leave=False, disable=None):
        rows = slice(start, start + batch_size)
        hist, tgt = list(part.histories[rows]), targets[rows]
        # one row per (user, target): the leave-one-out rank functions then apply unchanged
        owner = np.repeat(np.arange(len(tgt)), [len(t) for t in tgt])
        flat = torch.as_tensor(np.concatenate(tgt) if len(owner) else np.zeros(0, dtype=np.int64))
        exclude = [excluded[start + i] for i in owner] if excluded is not None else None
        kwargs = _call_kwargs(method, part, rows)
        if mode == "score":
            scores = method.score(hist, None, **kwargs).detach().cpu()
            if scores.shape != (len(hist), n_items):
                raise EvaluationError(f"score() returned shape {tuple(scores.shape)}, expected [{len(hist)}, {n_items}]")
            ranks = ranks_from_scores(scores[owner], flat, exclude) if len(owner) else torch.zeros(0)
            rankings = {"": (ranks, ranks, torch.ones(len(ranks)))}  # a score matrix has no collision groups
        else:
            extra = max((len(e) for e in (excluded[rows] if excluded is not None else [])), default=0)
            top = asked_top(method, hist, min(n_items, k_max + extra), kwargs)
            lists = {"": (top.items.detach().cpu(), top.scores.detach().cpu()), **alternative_rankings(top)}
            rankings = {name: (ranks_from_topk(i[owner], s[owner], flat, n_items, exclude)[0],
                               *group_slots_from_topk(i[owner], s[owner], flat, n_items, item_group, exclude))
                        for name, (i, s) in lists.items()} if len(owner) else {"": (torch.zeros(0),) * 3}
        bounds = np.cumsum([0] + [len(t) for t in tgt])
        for name, arrays in rankings.items():
            into = found.setdefault(name, {"ranks": [], "slots": [], "sizes": []})
            for key, values in zip(("ranks", "slots", "sizes"), arrays):
                values = values.double().numpy()
                into[key].extend(values[bounds[i]:bounds[i + 1]] for i in range(len(tgt)))
    return found


def evaluate_labelled(method, part: LabelledPart, n_items: int, ks: Sequence[int], exclude_history: bool = True,
                      mode: str = "auto", batch_size: int = 256, with_retrieval: bool = True) -> EvalResult:
    mode = judged_mode(method, mode)
    per_user: dict[str, np.ndarray] = {}
    metrics: dict[str, float] = {}
    diagnostics: dict[str, Any] = {}
    labels = part.block_labels
    flat_labels = np.concatenate(labels) if labels else np.zeros(0)
    with torch.no_grad():
        for name, scorer in method.auc_scorers().items():
            prefix = f"{name}_" if name else ""
            scores = exposure_scores(scorer, method, part)
            metrics[prefix + "auc"] = auc(flat_labels, np.concatenate(scores))
            per_user[prefix + "auc"] = np.array([auc(y, s) for y, s in zip(labels, scores)])
            metrics[prefix + "gauc"] = float(np.nanmean(per_user[prefix + "auc"]))
            if method.probability_scores:
                metrics[prefix + "logloss"] = log_loss(flat_labels, np.concatenate(scores))
        if with_retrieval:
            found = _retrieval_ranks(method, part, n_items, max(ks), mode, exclude_history, batch_size)
            for name, got in found.items():
                retrieval = {**retrieval_metrics(got["ranks"], ks),
                             **grouped_retrieval_metrics(got["slots"], got["sizes"], ks)}
                if name:
                    diagnostics.update({f"{name}_ranked/{metric}": float(np.nanmean(values))
                                        for metric, values in retrieval.items()})
                    continue
                per_user.update(retrieval)
                metrics.update({metric: float(np.nanmean(values)) for metric, values in retrieval.items()})
    if "auc" in metrics and "recall_auc" in metrics:  # DIG's Table 4: how far the retrieval path lags the ranker
        diagnostics["auc_gap"] = metrics["recall_auc"] - metrics["auc"]
    diagnostics["users_with_positives"] = int(sum(len(t) > 0 for t in part.targets))
    diagnostics["exposures"] = int(len(flat_labels))
    diagnostics["positive_rate"] = float(flat_labels.mean()) if len(flat_labels) else float("nan")
    return EvalResult(per_user=per_user, metrics=metrics, diagnostics=diagnostics, mode=mode)
