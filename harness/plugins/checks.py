"""The conformance checks of a method plugin, one function per concern: metadata, output shapes and dtypes,
catalogue ids, duplicates, finite scores, score/recommend agreement, and the content digest by which two runs'
inputs and outputs are compared. `harness.plugins.validate` runs the plugin under the referee and applies them.
"""
from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.api import Method, TopK
from harness.run.evaluate import plugin_kwargs
from harness.run.worker import seed_everything

SEARCH_TYPES = ("categorical", "int", "float")


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


# --- metadata -------------------------------------------------------------------------------------------------------

def _declared(cls: type, attr: str) -> bool:
    """Whether the plugin (not the Method base) sets `attr`; the registry sets config/search_space from the YAML."""
    return any(attr in vars(c) for c in cls.__mro__ if c not in (Method, object))


def check_metadata(cls: type) -> Check:
    problems = []
    if not isinstance(cls.paper, str) or not cls.paper.strip():
        problems.append("`paper` is empty: name the paper (or say what the baseline is)")
    if not _declared(cls, "needs") or not isinstance(cls.needs, (tuple, list)) \
            or not all(isinstance(n, str) for n in cls.needs):
        problems.append("`needs` is not declared as a tuple of strings (use () when the method needs nothing)")
    config, space = cls.default_config, cls.search_space
    if not _declared(cls, "default_config") or not isinstance(config, dict):
        problems.append("no default config: add `config:` to the YAML beside the module")
    if not _declared(cls, "search_space") or not isinstance(space, dict):
        problems.append("no search space: add `search_space:` to the YAML beside the module")
    elif isinstance(config, dict):
        if config and not space:
            problems.append("the search space is empty although the config has keys: say what `harness tune` varies")
        for key, spec in space.items():
            problem = _search_entry_problem(key, spec, config)
            if problem:
                problems.append(problem)
    details = {"paper": cls.paper, "needs": list(cls.needs or ()), "config_keys": sorted(config or {}),
               "search_space": sorted(space or {})}
    if problems:
        return Check("metadata", "fail", "; ".join(problems), details)
    return Check("metadata", "pass", f"paper, needs {tuple(cls.needs)}, {len(config)} config keys, "
                 f"{len(space)} tunable", details)


def _search_entry_problem(key: str, spec: Any, config: dict[str, Any]) -> str | None:
    if key not in config:
        return f"search space key {key!r} is not in the config"
    if not isinstance(spec, dict) or spec.get("type") not in SEARCH_TYPES:
        return f"search space {key!r} needs a type among {', '.join(SEARCH_TYPES)}"
    if spec["type"] == "categorical":
        return None if spec.get("choices") else f"search space {key!r}: categorical needs `choices`"
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low >= high:
        return f"search space {key!r}: needs numbers low < high"
    if spec.get("log") and low <= 0:
        return f"search space {key!r}: a log scale needs low > 0"
    return None


def content_digest(root: Any) -> str:
    """sha256 of every piece of data reachable from `root` through attributes, containers, closures and bound
    methods (not module globals). Values that carry no data but differ per run (paths, floats such as timers) are
    skipped."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    stack = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > 12 or isinstance(obj, (type, types.ModuleType, Path, float, torch.device)):
            continue
        seen.add(id(obj))
        if isinstance(obj, (int, str, bytes, bool, np.integer)):
            digest.update(repr(obj).encode())
        elif isinstance(obj, np.ndarray):
            digest.update(obj.tobytes())
        elif isinstance(obj, torch.Tensor):
            digest.update(obj.detach().cpu().numpy().tobytes())
        elif isinstance(obj, pd.DataFrame):
            digest.update(pd.util.hash_pandas_object(obj.astype(str)).to_numpy().tobytes())
        else:
            children: list[Any] = []
            if isinstance(obj, dict):
                children = [*obj.keys(), *obj.values()]
            elif isinstance(obj, (list, tuple, set, frozenset)):
                children = list(obj)
            if isinstance(obj, types.MethodType):
                children += [obj.__self__, obj.__func__]
            if isinstance(obj, types.FunctionType) and obj.__closure__:
                children += [cell.cell_contents for cell in obj.__closure__]
            if hasattr(obj, "__dict__") and not isinstance(obj, types.FunctionType):
                children.append(vars(obj))
            stack.extend((child, depth + 1) for child in reversed(children))
    return digest.hexdigest()


def output_noise(a: list, b: list) -> float:
    """The largest absolute difference between the float outputs of two runs of the same seed (0.0 when they are
    bit for bit the same, inf when they do not line up): the float noise of the plugin's own reruns."""
    if len(a) != len(b):
        return float("inf")
    noise = 0.0
    for (_, xa, ya), (_, xb, yb) in zip(a, b):
        for x, y in ((xa, xb), (ya, yb)):
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.is_floating_point() \
                    and x.shape == y.shape:
                diff = (x.double() - y.double()).abs().nan_to_num(nan=0.0)
                noise = max(noise, float(diff.max()) if diff.numel() else 0.0)
    return noise


def n_differing(a: list, b: list, tolerance: float | None = None) -> tuple[int, int]:
    """How many recorded outputs differ between two runs: lists exactly; scores within `tolerance` (absolute; the
    plugin's own rerun noise), or by default within float tolerance (rtol 1e-5, atol 1e-6)."""
    if len(a) != len(b):
        return max(len(a), len(b)), max(len(a), len(b))

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape:
                return False
            if x.is_floating_point():
                if tolerance is not None:
                    return torch.allclose(x.double(), y.double(), rtol=0.0, atol=tolerance, equal_nan=True)
                return torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-6, equal_nan=True)
            return torch.equal(x, y)
        return (x is None) == (y is None) and not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor)
    return sum(not (ka == kb and same(xa, xb) and same(ya, yb)) for (ka, xa, ya), (kb, xb, yb) in zip(a, b)), len(a)


# --- output checks on a fitted plugin --------------------------------------------------------------------------------

def check_outputs(method: Method, plugin_cls: type, histories: list[np.ndarray], users: np.ndarray, n_items: int,
                  k: int, seed: int) -> list[Check]:
    """Shapes and dtypes, catalogue ids, duplicates, finite scores, and score/recommend agreement."""
    kwargs = plugin_kwargs(method, users)
    n_users, k = len(histories), min(k, n_items)
    names = ("shapes", "catalogue", "duplicates", "finite", "agreement")
    try:
        seed_everything(seed)
        with torch.no_grad():
            top = method.recommend(histories, k, **kwargs)
            scores = method.score(histories, None, **kwargs) if method.has_score() else None
            subset = torch.arange(0, n_items, 7)
            part = method.score(histories, subset, **kwargs) if method.has_score() else None
    except Exception as exc:  # the plugin's fault
        reason = f"recommend/score raised {type(exc).__name__}: {exc}"
        return [Check(names[0], "fail", reason)] + [Check(n, "skip", "no output to check") for n in names[1:]]

    shape_problems = []
    if not isinstance(top, TopK) or not isinstance(top.items, torch.Tensor) or not isinstance(top.scores, torch.Tensor):
        shape_problems.append(f"recommend() returned {type(top).__name__}, expected TopK(items=Tensor, scores=Tensor)")
    else:
        if tuple(top.items.shape) != (n_users, k):
            shape_problems.append(f"recommend(k={k}) returned items of shape {list(top.items.shape)}, "
                                  f"expected [{n_users}, {k}]")
        if top.scores.shape != top.items.shape:
            shape_problems.append(f"TopK scores have shape {list(top.scores.shape)}, items {list(top.items.shape)}")
        if top.items.dtype != torch.int64:
            shape_problems.append(f"TopK items have dtype {top.items.dtype}, expected torch.int64")
        if not top.scores.is_floating_point():
            shape_problems.append(f"TopK scores have dtype {top.scores.dtype}, expected a float dtype")
    for label, got, want in (("score(histories)", scores, (n_users, n_items)),
                             (f"score(histories, {len(subset)} items)", part, (n_users, len(subset)))):
        if got is None:
            continue
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != want or not got.is_floating_point():
            desc = f"{list(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor) else type(got).__name__
            shape_problems.append(f"{label} returned {desc}, expected a float tensor [{want[0]}, {want[1]}]")
    if shape_problems:
        return [Check("shapes", "fail", "; ".join(shape_problems))] + \
            [Check(n, "skip", "shapes are wrong") for n in names[1:]]
    checks = [Check("shapes", "pass", f"TopK [{n_users}, {k}] int64 / {top.scores.dtype}"
                    + ("; score() [B, n_items] and [B, len(items)]" if scores is not None else ""))]

    items = top.items.cpu()
    outside = (items < -1) | (items >= n_items)
    if outside.any():
        bad = items[outside]
        checks.append(Check("catalogue", "fail", f"{int(outside.sum())} item ids outside the catalogue [0, {n_items}) "
                            f"(e.g. {int(bad[0])}); -1 is the only id allowed for 'no item'"))
    else:
        checks.append(Check("catalogue", "pass", f"all ids in [0, {n_items}) or -1"))

    valid = items >= 0
    keyed = torch.where(valid, items, -torch.arange(1, k + 1).expand_as(items))  # -1 padding never counts twice
    dup_rows = int(sum(len(torch.unique(row)) < len(row) for row in keyed))
    checks.append(Check("duplicates", "fail", f"{dup_rows} of {n_users} top-k lists repeat an item")
                  if dup_rows else Check("duplicates", "pass", "no item twice in a list"))

    nan_top = int(torch.isnan(top.scores.cpu()[valid]).sum())
    nan_full = 0 if scores is None else int(torch.isnan(scores.cpu()).any(dim=1).sum())
    if nan_top or nan_full:
        checks.append(Check("finite", "fail", f"NaN scores: {nan_top} in the top-k lists"
                            + (f", score() has NaN for {nan_full} of {n_users} users" if scores is not None else "")))
    else:
        checks.append(Check("finite", "pass", "no NaN scores"))

    if scores is None:
        checks.append(Check("agreement", "skip", "not applicable: the plugin has recommend() only"))
    else:
        checks.append(_agreement(plugin_cls, top, scores.cpu().double(), part.cpu().double(), subset, valid))
    return checks


def _agreement(plugin_cls: type, top: TopK, scores: torch.Tensor, part: torch.Tensor, subset: torch.Tensor,
               valid: torch.Tensor) -> Check:
    """recommend's lists hold the k best items by score (up to ties), and score(items) matches score()'s columns."""
    if not torch.allclose(part, scores[:, subset], rtol=1e-4, atol=1e-5, equal_nan=True):
        return Check("agreement", "fail", "score(histories, items) differs from the same columns of score(histories)")
    if plugin_cls.recommend is Method.recommend:
        return Check("agreement", "pass", "recommend() is the top-k of score() (the default)")
    if plugin_cls.retrieves_by_recommend:
        # a retrieval stage (e.g. beam search) picks the candidates; score() must still order what it returns
        got = scores.gather(1, top.items.cpu().clamp(min=0))
        later_higher = (got[:, 1:] > got[:, :-1] + 1e-4 * got.abs().amax().clamp(min=1.0)) & valid[:, 1:] & valid[:, :-1]
        bad = int(later_higher.any(dim=1).sum())
        if bad:
            return Check("agreement", "fail", f"for {bad} of {len(scores)} users recommend()'s candidates are not in "
                         f"score() order")
        return Check("agreement", "pass", "retrieval by recommend() (declared); its candidates are in score() order")
    k = top.items.shape[1]
    best = scores.topk(k, dim=1).values
    got = scores.gather(1, top.items.cpu().clamp(min=0)).masked_fill(~valid, -torch.inf).sort(dim=1, descending=True)
    tol = 1e-4 * best.abs().amax(dim=1, keepdim=True).clamp(min=1.0)
    bad = int(((best - got.values).abs() > tol).any(dim=1).sum())
    if bad:
        return Check("agreement", "fail", f"for {bad} of {len(scores)} users recommend()'s list is not the top-{k} "
                     f"of score()")
    return Check("agreement", "pass", f"recommend() returns the top-{k} of score() for every user")
