"""Conformance checks for a method plugin: `harness validate-plugin NAME`.

Every check reports pass / fail / skip with a one-line reason. The plugin runs through the protocol, the same referee
as a real run, on the smoke track's data, each run into a throw-away store. The plugin's class is wrapped only to see
what it was given (`TrainView`) and what it returned after fit.

Reach to test targets is tested by outcome rather than by listing forbidden paths: the smoke data is written to disk
twice, identical except for every user's hidden test item, and the plugin runs on both. Whatever it reads (the
TrainView, the caller's frames, the garbage collector, the data files at the data root, earlier runs in the store),
its outputs may only change if it reached the test targets. These are in-process checks of honest mistakes and
generic cheats; a plugin written to recognise the validator could behave differently here, which is one reason a
published entry is also reproduced from its bundle, with the plugin's source hash recorded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib.metadata
import inspect
import json
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate

import harness
from harness import registry
from harness.api import Method, TopK
from harness.data import load_card, load_dataset
from harness.data.cards import PROJECT_ROOT, sha256_of
from harness.protocol import RunSpec, prepare, run, seed_everything
from harness.store import RunStore
from harness.tracks import Track, load_track

TRACK = "smoke"
BUDGET_SECONDS = 3.0  # the short budget (no epoch cap); the harness stops fit at budget + 2 s
# Conformance needs a working model, not a good one: the other runs are capped at this many epochs, and their
# clock is generous so that on a slow machine the cap, not the clock, ends them (else two runs could train for
# different lengths; see Probe.time_bound). A plugin that never stops costs this long before it is reported.
EPOCHS = 3
COMPARISON_BUDGET_SECONDS = 300.0
HOLDOUT_CARD = "smoke-holdout"
SEARCH_TYPES = ("categorical", "int", "float")


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    method: str
    plugin: dict[str, Any]
    track: str
    checks: list[Check]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "passed": self.passed, "track": self.track, "plugin": self.plugin,
                "harness_version": harness.__version__, "seconds": round(self.seconds, 1),
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def render(self) -> str:
        rows = [[c.name, c.status.upper() if c.status == "fail" else c.status, c.reason] for c in self.checks]
        verdict = "PASSED" if self.passed else f"FAILED ({sum(c.status == 'fail' for c in self.checks)} checks)"
        return (tabulate(rows, headers=["check", "result", "reason"], tablefmt="simple", maxcolwidths=[None, None, 90])
                + f"\n\n{self.method}: {verdict} in {self.seconds:.0f}s")


# --- plugin provenance ----------------------------------------------------------------------------------------------

def plugin_info(cls: type) -> dict[str, Any]:
    """The plugin's distribution name and version, its entry point and a hash of its source files."""
    module = sys.modules[cls.__module__]
    top = cls.__module__.split(".")[0]
    module_file = Path(inspect.getsourcefile(cls) or module.__file__).resolve()
    builtin = module_file.is_relative_to(PROJECT_ROOT / "methods")
    dists = importlib.metadata.packages_distributions().get(top, [])
    package = dists[0] if dists else None
    version = None
    if package:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = importlib.metadata.version(package)
    top_module = sys.modules.get(top)
    if builtin or not getattr(top_module, "__path__", None):
        # a built-in (or a single-module plugin): its own module and YAML, not every method beside it
        base = module_file.parent
        files = [p for p in (module_file, module_file.with_suffix(".yaml")) if p.exists()]
    else:
        base = Path(next(iter(top_module.__path__))).resolve()
        files = sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix in (".py", ".yaml", ".yml", ".json", ".toml"))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    entry = next((f"{ep.name} = {ep.value}" for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP)
                  if ep.name == cls.name), None)
    return {"name": cls.name, "class": f"{cls.__module__}:{cls.__qualname__}", "builtin": builtin,
            "package": package, "version": version, "entry_point": entry,
            "source_hash": digest.hexdigest(), "source_files": [str(p.relative_to(base)) for p in sorted(files)]}


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


# --- the two hidden-target variants of the smoke data ---------------------------------------------------------------

def write_holdout_variants(folder: Path, track: Track) -> list[tuple[Path, Path]]:
    """The smoke data as two dataset cards on disk, identical except for every evaluated user's last (test) item.
    Returns [(card, data root)] for variants A and B."""
    dataset = load_dataset(load_card(track.datasets[0]), None, **track.dataset_options.get(track.datasets[0], {}))
    sequences = dataset.sequences()
    rng = np.random.default_rng(12345)
    moved = []
    for seq in sequences:
        seq = seq.copy()
        if len(seq) >= 3:  # shorter sequences are not evaluated: their last item is training data
            seq[-1] = (seq[-1] + rng.integers(1, dataset.n_items)) % dataset.n_items
        moved.append(seq)
    out = []
    for name, seqs in (("a", sequences), ("b", moved)):
        root = folder / f"data-{name}"
        root.mkdir(parents=True)
        (root / "interactions.json").write_text(json.dumps({str(u): s.tolist() for u, s in enumerate(seqs)}))
        items = {str(i): {f: str(row[f]) for f in dataset.text_fields} for i, row in dataset.items.iterrows()}
        (root / "items.json").write_text(json.dumps(items))
        card = {"name": HOLDOUT_CARD, "title": "smoke data with a hidden test item per user", "format": "lcrec",
                "text_fields": dataset.text_fields, "protocol": dict(track.protocol),
                "files": [{"role": role, "local": f"{role}.json", "sha256": sha256_of(root / f"{role}.json")}
                          for role in ("interactions", "items")]}
        path = root / f"{HOLDOUT_CARD}.yaml"
        path.write_text(json.dumps(card))  # JSON is YAML
        out.append((path, root))
    return out


# --- running the plugin under the protocol, watching it -------------------------------------------------------------

class Probe:
    """What a wrapped plugin was given and what it returned once fit had finished."""

    def __init__(self) -> None:
        self.instance: Method | None = None
        self.view_digest: str | None = None
        self.fitted = False
        self.time_bound = False  # the clock, not the epoch cap, ended fit
        self.recording = False  # between the end of fit and the end of the run
        self.outputs: list[tuple[str, Any, Any]] = []

    def keep(self, kind: str, a: Any, b: Any = None) -> None:
        if self.recording:
            as_cpu = lambda x: x.detach().cpu().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.outputs.append((kind, as_cpu(a), as_cpu(b)))


def probed(cls: type, probe: Probe) -> type:
    """A subclass that records the TrainView's content before fit and every output after it."""
    def fit(self, train, budget):
        probe.instance = self
        probe.view_digest = content_digest(train)
        cls.fit(self, train, budget)
        probe.fitted = probe.recording = True
        probe.time_bound = budget.exhausted()

    def recommend(self, histories, k, **kwargs):
        top = cls.recommend(self, histories, k, **kwargs)
        probe.keep("recommend", getattr(top, "items", top), getattr(top, "scores", None))
        return top

    def score(self, histories, items=None, **kwargs):
        scores = cls.score(self, histories, items, **kwargs)
        probe.keep("score", scores)
        return scores

    attrs = {"fit": fit, "recommend": recommend, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    if cls.has_score():  # only then: defining score() is what marks a plugin as having one
        attrs["score"] = score
    return type(cls.__name__, (cls,), attrs)


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


@contextlib.contextmanager
def _data_root(root: Path):
    """Put the validation data where a plugin would find real data: the data root named by $HARNESS_DATA_DIR."""
    old = os.environ.get("HARNESS_DATA_DIR")
    os.environ["HARNESS_DATA_DIR"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HARNESS_DATA_DIR", None)
        else:
            os.environ["HARNESS_DATA_DIR"] = old


def track_spec(method: str, track: Track, dataset: str, **kwargs: Any) -> RunSpec:
    """A RunSpec under the track's pins (as `harness run --track` builds it)."""
    pins = dict(track.method_overrides.get(method, {}))
    if "embedder" in registry.get(method).default_config:  # the track pins the embedder of SID methods
        pins.setdefault("embedder", track.embedder)
    spec = RunSpec(method=method, dataset=dataset, track=track.name, track_overrides=pins,
                   budget_seconds=track.budget_seconds, max_epochs=track.max_epochs, protocol=dict(track.protocol),
                   dataset_options=dict(track.dataset_options.get(dataset, {})), ks=list(track.ks), device=track.device)
    return dataclasses.replace(spec, **kwargs)


def _probe_run(spec: RunSpec, store_dir: Path, data_root: Path) -> tuple[dict[str, Any], Probe]:
    gc.collect()  # the runs must differ only in their data: no leftovers of earlier runs among the live objects
    probe = Probe()
    prepared = prepare(spec)
    prepared.method_cls = probed(prepared.method_cls, probe)
    with _data_root(data_root):
        record = run(spec, RunStore(runs_dir=store_dir), prepared)
    probe.recording = False
    return record, probe


def _fit_failure(record: dict[str, Any]) -> bool:
    failure = record.get("failure") or ""
    return record["status"] == "failed" and (" in fit:" in failure or failure.startswith("NonFiniteLoss"))


def _n_differing(a: list, b: list) -> tuple[int, int]:
    """How many recorded outputs differ between two runs: lists exactly, scores within float tolerance."""
    if len(a) != len(b):
        return max(len(a), len(b)), max(len(a), len(b))

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape:
                return False
            if x.is_floating_point():
                return torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-6, equal_nan=True)
            return torch.equal(x, y)
        return (x is None) == (y is None) and not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor)
    return sum(not (ka == kb and same(xa, xb) and same(ya, yb)) for (ka, xa, ya), (kb, xb, yb) in zip(a, b)), len(a)


# --- output checks on a fitted plugin --------------------------------------------------------------------------------

def check_outputs(method: Method, plugin_cls: type, histories: list[np.ndarray], users: np.ndarray, n_items: int,
                  k: int, seed: int) -> list[Check]:
    """Shapes and dtypes, catalogue ids, duplicates, finite scores, and score/recommend agreement."""
    kwargs = {"users": users} if getattr(method, "uses_user_ids", False) else {}
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
    if getattr(plugin_cls, "retrieves_by_recommend", False):
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


# --- the validator ---------------------------------------------------------------------------------------------------

def validate(name: str, seed: int = 0, budget_seconds: float = BUDGET_SECONDS, epochs: int = EPOCHS) -> Report:
    """Run every check for the plugin `name` (HarnessError if there is no such plugin)."""
    start = time.monotonic()
    cls = registry.get(name)
    track = load_track(TRACK)
    report = Report(name, plugin_info(cls), TRACK, [check_metadata(cls)])
    later = ("run", "budget", "shapes", "catalogue", "duplicates", "finite", "agreement", "determinism",
             "no-test-reach", "cost")

    def skip_rest(reason: str) -> Report:
        report.checks += [Check(n, "skip", reason) for n in later if n not in {c.name for c in report.checks}]
        report.seconds = time.monotonic() - start
        return report

    with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
        tmp = Path(tmp)
        (card_a, root_a), (card_b, root_b) = write_holdout_variants(tmp, track)
        base = track_spec(name, track, str(card_a), seed=seed, data_dir=str(root_a), latency_users=50,
                          max_epochs=min(epochs, track.max_epochs or epochs),
                          budget_seconds=max(track.budget_seconds or 0.0, COMPARISON_BUDGET_SECONDS),
                          command=f"harness validate-plugin {name}")

        first, probe = _probe_run(base, tmp / "store-1", root_a)
        if first["status"] == "over_budget":
            report.checks.append(Check("budget", "fail", f"ignores the budget: {first['failure']} with "
                                       f"{base.max_epochs} epochs asked; poll budget.exhausted() in the training "
                                       f"loop and plan epochs with budget.epochs()"))
            return skip_rest("the plugin does not stop within its budget")
        if first["status"] == "ok":
            report.checks.append(Check("run", "pass", f"fit + evaluation ok: test ndcg@10 "
                                       f"{first['metrics']['test'].get('ndcg@10', float('nan')):.4f}, "
                                       f"{first['used']['epochs']} epochs in {first['used']['train_seconds']:.1f}s"))
        else:
            report.checks.append(Check("run", "fail", f"{first['status']}: {first['failure']}",
                                       {"traceback": first["diagnostics"].get("traceback")}))
        if probe.instance is None or not probe.fitted:
            return skip_rest("fit did not finish")

        # The short budget after a first run, as on any later run of a track: lazy imports are done and cached
        # features or SIDs are not charged to it (the harness stopping fit inside an import would break the process).
        short, _ = _probe_run(dataclasses.replace(base, budget_seconds=budget_seconds, max_epochs=None),
                              tmp / "store-budget", root_a)
        used = short["used"]["train_seconds"]
        if short["status"] == "over_budget":
            report.checks.append(Check("budget", "fail", f"ignores the budget: {short['failure']}; poll "
                                       f"budget.exhausted() in the training loop", {"train_seconds": used}))
        elif _fit_failure(short):
            report.checks.append(Check("budget", "fail", f"fit fails without an epoch cap: {short['failure']}"))
        else:
            report.checks.append(Check("budget", "pass", f"fit ended after {used:.1f}s of a {budget_seconds:g}s "
                                       f"budget ({short['used']['epochs']} epochs)", {"train_seconds": used}))

        dataset = load_dataset(load_card(str(card_a)), root_a)
        histories = [s[:-1] for s in dataset.sequences() if len(s) >= 3]
        users = np.array([u for u, s in enumerate(dataset.sequences()) if len(s) >= 3])
        report.checks += check_outputs(probe.instance, cls, histories, users, dataset.n_items, max(track.ks), seed)

        again, probe_again = _probe_run(base, tmp / "store-2", root_a)
        differing, total = _n_differing(probe.outputs, probe_again.outputs)
        deterministic = differing == 0 and again["status"] == first["status"]
        if probe.time_bound or probe_again.time_bound:
            deterministic = None
            report.checks.append(Check("determinism", "skip", f"inconclusive: the {base.budget_seconds:g}s clock, "
                                       f"not the {base.max_epochs}-epoch cap, ended a run (a loaded machine?)"))
        elif deterministic:
            report.checks.append(Check("determinism", "pass", f"same seed twice: identical outputs ({total} calls)"))
        else:
            report.checks.append(Check("determinism", "fail", f"same seed twice gave different outputs in {differing} "
                                       f"of {total} recommend/score calls: seed every random source from "
                                       f"train.seed (or rely on the seeded global torch/numpy/random state)"))

        # Variant B into the store that already holds variant A's run: reading earlier runs must not help either.
        other, probe_other = _probe_run(dataclasses.replace(base, dataset=str(card_b), data_dir=str(root_b)),
                                        tmp / "store-1", root_b)
        differing, total = _n_differing(probe.outputs, probe_other.outputs)
        view_same = probe.view_digest == probe_other.view_digest
        if not view_same:
            report.checks.append(Check("no-test-reach", "fail", "the TrainView's content differs between two datasets "
                                       "that differ only in their test items: the harness exposes test data"))
        elif not deterministic or probe_other.time_bound:
            report.checks.append(Check("no-test-reach", "skip", "inconclusive: the outputs are not deterministic"
                                       if deterministic is False else "inconclusive: the clock ended a run"))
        elif differing or other["status"] != first["status"]:
            report.checks.append(Check("no-test-reach", "fail", f"reads test targets: outputs changed in {differing} "
                                       f"of {total} calls when only the hidden test items changed (the TrainView "
                                       f"was identical), so the plugin reached them by another path (caller "
                                       f"frames, gc, data files, the run store)"))
        else:
            report.checks.append(Check("no-test-reach", "pass", "identical TrainView and outputs with different "
                                       "hidden test items"))

        latency, memory = first.get("latency") or {}, first.get("peak_memory") or {}
        if latency.get("p50_ms") is not None and memory:
            report.checks.append(Check("cost", "pass", f"p50 {latency['p50_ms']} ms/user, p99 {latency['p99_ms']} ms, "
                                       f"{latency['users_per_s']} users/s; peak RSS {memory.get('rss_mb', 0):.0f} MB"
                                       f"; {first.get('params')} params", {"latency": latency, "memory": memory}))
        else:
            report.checks.append(Check("cost", "skip", "latency not measured: the run did not finish"))
    report.seconds = time.monotonic() - start
    return report


def cmd_validate_plugin(args) -> int:
    report = validate(args.method)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.render())
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0 if report.passed else 1
