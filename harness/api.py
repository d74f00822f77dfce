"""The plugin contract: everything a method plugin imports from the core.

A plugin sees training data through `TrainView` and is judged through `recommend` (and `score` where it has one).
Nothing reachable from a `TrainView` holds test targets: the referee keeps them with the evaluator.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import yaml

from harness.config import Registry, epoch_plan
from harness.data.dataset import item_texts
from harness.data.interactions import TrainInteractions
from harness.data.labelled import ExposureHistory
from harness.errors import BudgetExceeded, HarnessError, NonFiniteLoss
from harness.nn.batching import pad_histories

__all__ = ["Method", "TrainView", "TopK", "Budget", "EarlyStopping", "check_finite", "register", "BudgetExceeded",
           "NonFiniteLoss", "pad_histories", "ExposureHistory", "TrainInteractions"]


@dataclass
class TopK:
    """Top-k lists for a batch of users: catalogue item ids `[B, k]` (int64, -1 = no item) and scores `[B, k]`.

    Generative methods may add `extras["beam_groups"]` `[B, beam]` (SID group id of each generated SID, -1 if no item
    has it, -2 for an empty slot) and `extras["beam_group_sizes"]`; with the method's `item_group` (item → SID group)
    the evaluator reports SID-level recall, invalid-SID rate, mean collision-group size of returned SIDs, and (a run of
    equal-score items of one group being a collision group) item_recall@k / item_ndcg@k (`harness.metrics`).
    `extras["alt:NAME:items"]` and `["alt:NAME:scores"]` `[B, k]` give a second ranking of the same users (Gryphon:
    its pool in beam order), evaluated by the same rules and reported as `NAME_ranked/<metric>`.
    """

    items: torch.Tensor
    scores: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Budget:
    """Training budget: an epoch cap and a wall-clock safety cap.

    What a track asks of a method is deterministic: at most `max_epochs` epochs and the method's own early stopping
    (patience). The clock (`seconds`) is only a safety cap; a run it ends is recorded `budget_bound`, never ranked.
    Plugins poll `exhausted()` in their loops and stop cleanly; the harness also stops a plugin that does not (shortly
    after the cap) and records the run as `over_budget`. Time inside harness stages (embeddings, SIDs, validation;
    see `paused`) is not charged to the clock.
    """

    def __init__(self, seconds: float | None = None, max_epochs: int | None = None):
        self.seconds = seconds
        self.max_epochs = max_epochs
        self._start: float | None = None
        self._paused = 0.0  # seconds spent in paused stages, finished ones
        self._pause_depth = 0
        self._pause_start = 0.0
        self._lock = threading.Lock()  # the watchdog thread reads `elapsed` while a stage pauses the clock
        self.epochs_done = 0

    def start(self) -> None:
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds charged to the clock: since `start`, less the paused stages."""
        if self._start is None:
            return 0.0
        with self._lock:
            now = time.monotonic()
            running_pause = now - self._pause_start if self._pause_depth else 0.0
            return now - self._start - self._paused - running_pause

    @property
    def remaining(self) -> float:
        return math.inf if self.seconds is None else max(0.0, self.seconds - self.elapsed)

    def exhausted(self) -> bool:
        return self.seconds is not None and self.elapsed >= self.seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """A stretch not charged to the clock (nested stretches count once)."""
        with self._lock:
            if self._pause_depth == 0:
                self._pause_start = time.monotonic()
            self._pause_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._pause_depth -= 1
                if self._pause_depth == 0:
                    self._paused += time.monotonic() - self._pause_start

    def epochs(self, default: int) -> int:
        """The number of epochs to plan for: the plugin's own cap, limited by the budget's cap."""
        return epoch_plan(default, self.max_epochs)

    def epoch_done(self) -> None:
        self.epochs_done += 1

    def describe(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "max_epochs": self.max_epochs}


def _frozen(values: np.ndarray) -> np.ndarray:
    out = np.array(values, dtype=np.int64, copy=True)
    out.setflags(write=False)
    return out


class TrainView:
    """What a plugin may see while fitting.

    - `sequences`: one int64 array per user, that user's training items in chronological order (catalogue ids 0..n_items-1)
    - `items`: the item table (`item_id` = raw id, text fields, `attrs`), row i describes catalogue item i
    - `text_fields`: the dataset card's fields that make an item's text
    - `validate(method)`: validation metrics computed by the harness on the validation targets
    - `device`, `seed`, `work_dir` (the plugin's own scratch folder, removed after the run)
    - `users`: the user table where the card has one (row u = dense user u: demographics …), else None
    - labelled-exposure protocol only: `exposures` (user, item, ts, rating, label: the training exposures, negatives
      included; `sequences` then holds each user's positives) and `protocol` (threshold, block sizes)
    - `timed`: whether `ts` are real times, comparable across users (False: a position in each user's sequence)
    - `interactions()`: the training interactions as the leakage guard's `TrainInteractions`
    - `semantic_ids(**options)`: the SID provider over this catalogue (DESIGN §3)
    - `checkpoint_every`, `save_checkpoint(state)`, `load_checkpoint()`: resumable training (the referee keeps it)
    - `stage(name)`: a context for fitting what the method stands on (embeddings, codes, collaborative tables): not
      charged to the training clock, its cost recorded in `provenance["stages"]`

    The referee builds it (with the training interactions and the SID provider); the contract imports none of that.
    """

    def __init__(self, sequences: list[np.ndarray], n_items: int, items: pd.DataFrame, text_fields: Sequence[str],
                 validate: Callable[["Method"], dict[str, float]], device: torch.device, seed: int,
                 work_dir: Path, dataset: str, exposures: pd.DataFrame | None = None,
                 users: pd.DataFrame | None = None, protocol: dict[str, Any] | None = None,
                 interactions: TrainInteractions | None = None, sid_provider: Callable[..., Any] | None = None,
                 pause: Callable[[], ContextManager[None]] | None = None, timed: bool = True,
                 checkpoint_every: int | None = None, checkpoint: Callable[[bytes], None] | None = None,
                 restored: bytes | None = None, precision: str = "fp32"):
        # copies, read-only: an in-place edit raises, and no array shares memory with the held-out tails
        self.sequences = [_frozen(s) for s in sequences]
        self.n_items = n_items
        self.n_users = len(sequences)
        self.items = items
        self.text_fields = list(text_fields)
        self.validate, self.device = validate, device
        self.seed = seed
        self.work_dir = work_dir
        self.dataset = dataset
        self.exposures = exposures
        self.users = users
        self.protocol = dict(protocol or {"name": "leave-one-out"})
        self.provenance: dict[str, Any] = {}  # features and SIDs the plugin drew; copied into the run record
        self.timed = timed
        self._interactions = interactions
        self._sid_provider = sid_provider
        self._pause = pause or contextlib.nullcontext
        self.checkpoint_every = checkpoint_every  # epochs between checkpoints (None: none are taken)
        self.precision = precision  # fp32 | bf16: how the shared training loop runs forward passes
        self._checkpoint, self._restored = checkpoint, restored

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Fit a stage (embeddings, SIDs, ...) outside the training clock; its wall and CPU seconds are recorded."""
        wall, cpu = time.perf_counter(), time.process_time()
        with self._pause():
            try:
                yield
            finally:
                self.provenance.setdefault("stages", []).append(
                    {"stage": name, "seconds": round(time.perf_counter() - wall, 3),
                     "cpu_seconds": round(time.process_time() - cpu, 3)})

    def item_text(self) -> list[str]:
        """Each item's text from the card's text fields (as the embedders read it)."""
        return item_texts(self.items, self.text_fields)

    def semantic_ids(self, **options: Any):
        """The SID provider (`harness.sid.semantic_ids`) over this catalogue: (SIDTable, provenance)."""
        if self._sid_provider is None:
            raise HarnessError("this TrainView has no SID provider: the referee passes `sid_provider=`")
        with self.stage("sids"):
            table, provenance = self._sid_provider(self.items, self.text_fields, interactions=self.interactions(),
                                                   **options)
        self.provenance.setdefault("sids", []).append(provenance)
        return table, provenance

    def interactions(self) -> TrainInteractions:
        """Training interactions in the only form interaction-derived tokenizers/embedders accept."""
        if self._interactions is None:
            raise HarnessError("this TrainView has no training interactions: the referee passes "
                               "`interactions=TrainInteractions.from_split(split, n_items)`")
        return self._interactions

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Hand the training state to the referee, which keeps it with the run (the plugin writes no file)."""
        if self._checkpoint is not None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self._checkpoint(buffer.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last checkpoint when this run resumes an interrupted one, else None."""
        return torch.load(io.BytesIO(self._restored), weights_only=False) if self._restored else None

    def item_counts(self) -> np.ndarray:
        """How often each item occurs in the training sequences."""
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.n_items)


class Method:
    """Base class of every method plugin.

    Subclasses set the class attributes and implement `fit` and `recommend`; `score` and `diagnostics` are optional.
    `config` holds the resolved configuration (defaults from the YAML beside the plugin, overridden by `--set`).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    peer: ClassVar[str] = ""  # e.g. "cornac 3.0.1": another library's implementation under this protocol
    peer_of: ClassVar[str] = ""  # a peer's counterpart among the built-ins (e.g. "sasrec"), set beside it on boards
    uses_user_ids: ClassVar[bool] = False  # True: recommend/score also get `users=` (dense user indices)
    # True: on the labelled protocol recommend/score also get `exposures=` (one ExposureHistory per user: every
    # labelled exposure before the evaluated block); False methods see positives only, as `histories`
    uses_exposures: ClassVar[bool] = False
    probability_scores: ClassVar[bool] = False  # True: score() returns probabilities (log-loss is then reported)
    # True: retrieval is judged through recommend() even though score() exists (score() then serves AUC only),
    # e.g. a beam search whose candidates a pointwise scorer re-ranks
    retrieves_by_recommend: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()
    # From the YAML beside the plugin module (`config:`, `search_space:`, `recipes:`, `ablations:`):
    default_config: ClassVar[dict[str, Any]] = {}
    search_space: ClassVar[dict[str, Any]] = {}  # what `harness tune` varies: {key: {type, low/high | choices}}
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}  # named config presets, chosen with `--set recipe=NAME`
    # `harness ablate`: {"variants": {name: overrides}, "tables": [{"title", "rows": [variant], "metrics": [...]}]}
    ablations: ClassVar[dict[str, Any]] = {}
    # Set by generative methods once their SIDs exist: item → SID group id (what the evaluator does with it: TopK).
    item_group: np.ndarray | None = None

    def __init__(self, config: dict[str, Any] | None = None):
        self.config = {**copy.deepcopy(self.default_config), **(config or {})}

    def fit(self, train: TrainView, budget: Budget) -> None:
        raise NotImplementedError

    def recommend(self, histories: list[np.ndarray], k: int) -> TopK:
        """Top-k items for each history. The default ranks the full catalogue by `score`."""
        if not self.has_score():
            raise NotImplementedError(f"method {self.name!r} implements neither recommend() nor score()")
        scores = self.score(histories, None)
        top = torch.topk(scores, k=min(k, scores.shape[1]), dim=1)
        return TopK(items=top.indices.long(), scores=top.values)

    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        """Pointwise scores `[B, n_items]` for the full catalogue (items=None) or `[B, len(items)]`."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, Any]:
        return {}

    def auc_scorers(self) -> dict[str, Callable[..., Any]]:
        """Scorers of the labelled protocol's AUC, by name ('' → metrics `auc`, `gauc`; NAME → `NAME_auc`, ...).
        The default is `score`; a plugin may add e.g. its retrieval path. A scorer with the attribute `pairs = True`
        takes (histories, items per user) and returns one score array per user."""
        return {"": self.score} if self.has_score() else {}

    def parameters_count(self) -> int:
        """Trainable parameters, found on any torch module attribute; a parameter reachable from several attributes
        (a module kept both alone and inside a container of parts) counts once."""
        seen: dict[int, int] = {}
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                seen.update((id(p), p.numel()) for p in value.parameters())
        return sum(seen.values())

    @classmethod
    def has_score(cls) -> bool:
        return cls.score is not Method.score


def check_finite(loss: torch.Tensor, step: int | None = None) -> None:
    """Stop training with a clear reason when the loss is NaN or infinite."""
    if not torch.isfinite(loss).all():
        where = "" if step is None else f" at step {step}"
        raise NonFiniteLoss(f"non-finite loss ({loss.item()}){where}")


class EarlyStopping:
    """Keeps the best state seen on a validation metric and says when patience has run out."""

    def __init__(self, metric: str = "ndcg@10", patience: int = 5):
        self.metric = metric
        self.patience = patience
        self.best = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_rounds = 0

    def update(self, metrics: dict[str, float], module: torch.nn.Module) -> bool:
        """Record one validation result; returns True when training should stop."""
        value = metrics[self.metric]
        if value > self.best:
            self.best = value
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.bad_rounds = 0
        else:
            self.bad_rounds += 1
        return self.bad_rounds >= self.patience

    def restore(self, module: torch.nn.Module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


# Built-in plugins (modules in `methods/`, decorated with `@register`); `harness.registry` adds the entry points.
BUILTINS: Registry[type[Method]] = Registry("built-in method")


def attach_yaml(cls: type[Method]) -> type[Method]:
    """Read `<module>.yaml` beside a plugin module: `config`, `search_space`, `recipes` and `ablations`, unless the
    class sets them itself."""
    module_file = inspect.getsourcefile(cls)
    path = Path(module_file).with_suffix(".yaml") if module_file else None
    if path is not None and path.exists():
        spec = yaml.safe_load(path.read_text()) or {}
        for attr, key in (("default_config", "config"), ("search_space", "search_space"), ("recipes", "recipes"),
                          ("ablations", "ablations")):
            if not cls.__dict__.get(attr):
                setattr(cls, attr, dict(spec.get(key) or {}))
    return cls


def register(cls: type[Method]) -> type[Method]:
    """Decorator for built-in plugins (third-party packages use the `harness.methods` entry-point group)."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} must set a `name`")
    return BUILTINS.register()(attach_yaml(cls))
