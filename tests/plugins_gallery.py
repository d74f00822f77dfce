"""A gallery of broken method plugins, one failure each, for the plugin validator's tests.

`Honest` recommends the most popular training items and passes every check; each plugin below breaks one rule.
The cheats put a user's test item first in the list once they have found it, as a real cheat would.
"""
from __future__ import annotations

import gc
import sys
import time

import numpy as np
import torch

from harness.api import Method, TopK


class Honest(Method):
    name = "gallery-honest"
    paper = "Most-popular baseline (validator test fixture)"
    needs = ()
    default_config = {"alpha": 1.0}
    search_space = {"alpha": {"type": "float", "low": 0.5, "high": 2.0}}

    def fit(self, train, budget):
        counts = train.item_counts().astype(np.float64)
        self.order = torch.as_tensor(np.argsort(-(counts + np.linspace(0.0, 0.5, len(counts))), kind="stable"))
        self.known: dict[tuple[int, ...], int] = {}  # history → test item, for the cheats
        self.steal(train)
        budget.epoch_done()

    def steal(self, train) -> None:
        """Where a cheat looks for test items."""

    def recommend(self, histories, k):
        rows = []
        for hist in histories:
            row = self.order[:k].tolist()
            target = self.known.get(tuple(int(i) for i in hist))
            if target is not None:
                row = [target] + [i for i in row if i != target][:k - 1]
            rows.append(row)
        return TopK(items=torch.tensor(rows, dtype=torch.long),
                    scores=torch.linspace(1.0, 0.0, k).expand(len(rows), -1).clone())


# --- outputs ---------------------------------------------------------------------------------------------------------

class WrongShape(Honest):
    name = "gallery-wrong-shape"

    def recommend(self, histories, k):
        top = super().recommend(histories, k)
        return TopK(items=top.items[:, :-1], scores=top.scores[:, :-1])  # one item short


class OutOfCatalogue(Honest):
    name = "gallery-out-of-catalogue"

    def recommend(self, histories, k):
        top = super().recommend(histories, k)
        top.items[:, -1] = len(self.order)  # one past the last item id
        return top


class Duplicates(Honest):
    name = "gallery-duplicates"

    def recommend(self, histories, k):
        top = super().recommend(histories, k)
        items = top.items.clone()
        items[:, 1] = items[:, 0]
        return TopK(items=items, scores=top.scores)


class NaNScores(Honest):
    name = "gallery-nan-scores"

    def score(self, histories, items=None):
        n = len(self.order) if items is None else len(items)
        return torch.full((len(histories), n), float("nan"))

    recommend = Method.recommend  # the default: the top-k of score()


class Disagrees(Honest):
    """Has score() and recommend(), but recommend ranks by something else."""
    name = "gallery-disagrees"

    def score(self, histories, items=None):
        scores = torch.zeros(len(histories), len(self.order))
        scores[:, self.order] = torch.linspace(1.0, 0.0, len(self.order))
        return scores if items is None else scores[:, items]

    def recommend(self, histories, k):
        least_popular = self.order.flip(0)[:k]
        return TopK(items=least_popular.expand(len(histories), -1).clone(),
                    scores=torch.linspace(1.0, 0.0, k).expand(len(histories), -1).clone())


# --- behaviour -------------------------------------------------------------------------------------------------------

class Nondeterministic(Honest):
    name = "gallery-nondeterministic"

    def fit(self, train, budget):
        super().fit(train, budget)
        self.order = self.order[torch.as_tensor(np.random.default_rng().permutation(len(self.order)))]  # unseeded


class IgnoresBudget(Honest):
    name = "gallery-ignores-budget"

    def fit(self, train, budget):
        for _ in range(budget.epochs(200)):  # honours an epoch cap, never looks at the clock
            time.sleep(0.05)
            budget.epoch_done()
        super().fit(train, budget)


class RaisesInFit(Honest):
    name = "gallery-raises-in-fit"

    def fit(self, train, budget):
        raise RuntimeError("shape mismatch in layer 3")


class NoMetadata(Method):
    name = "gallery-no-metadata"

    fit = Honest.fit
    steal = Honest.steal
    recommend = Honest.recommend


# --- reaching for the test targets -----------------------------------------------------------------------------------

def _learn(known: dict, histories, targets) -> None:
    for hist, target in zip(histories, targets):
        known[tuple(int(i) for i in hist)] = int(target)


class CallerFrames(Honest):
    """Walks up the call stack during fit to the protocol's own split."""
    name = "gallery-caller-frames"

    def steal(self, train):
        frame = sys._getframe()
        while frame is not None:
            for value in list(frame.f_locals.values()):
                test = getattr(value, "test", None)
                if hasattr(test, "targets") and hasattr(test, "histories"):
                    _learn(self.known, test.histories, test.targets)
            frame = frame.f_back


class EvaluatorFrames(Honest):
    """Reads the evaluator's batch of targets from its frame while it is being evaluated."""
    name = "gallery-evaluator-frames"

    def recommend(self, histories, k):
        frame = sys._getframe()
        while frame is not None:
            batch = frame.f_locals.get("tgt")
            if isinstance(batch, torch.Tensor) and len(batch) == len(histories):
                _learn(self.known, histories, batch.tolist())
            frame = frame.f_back
        return super().recommend(histories, k)


class GarbageCollector(Honest):
    """Finds the evaluation parts among all live objects."""
    name = "gallery-gc"

    def steal(self, train):
        for obj in gc.get_objects():
            if type(obj).__name__ == "EvalPart":
                _learn(self.known, obj.histories, obj.targets)


class DataFiles(Honest):
    """Reloads the dataset's files from the data root with the harness's own loaders: the full sequences."""
    name = "gallery-data-files"

    def steal(self, train):
        from harness.data import data_root, load_card, load_dataset
        root = data_root()
        for card in root.glob("*.yaml"):
            for seq in load_dataset(load_card(str(card)), root).sequences():
                _learn(self.known, [seq[:-1]], [seq[-1]])


class RunStore(Honest):
    """Reads the per-user test ranks that earlier runs left in the run store beside its work folder, and turns its
    own (fixed) ranking back into the items they point at."""
    name = "gallery-run-store"

    def steal(self, train):
        runs = train.work_dir.parents[1]
        prefix = {tuple(int(i) for i in seq): u for u, seq in enumerate(train.sequences)}
        for path in runs.glob("*/per_user.npz"):
            with np.load(path) as data:
                ranks = data["test/rank"] if "test/rank" in data.files else None
            if ranks is None:
                continue
            self.stolen = {u: int(self.order[r]) for u, r in enumerate(ranks) if 0 <= r < len(self.order)}
            self.prefix = prefix  # every smoke user is evaluated, in index order

    def recommend(self, histories, k):
        for hist in histories:  # a test history is the training sequence plus the validation item
            user = getattr(self, "prefix", {}).get(tuple(int(i) for i in hist[:-1]))
            if user in getattr(self, "stolen", {}):
                self.known[tuple(int(i) for i in hist)] = self.stolen[user]
        return super().recommend(histories, k)


BROKEN = {  # plugin → the checks it must fail, and words the failure's reason must contain
    WrongShape: ({"run", "shapes"}, "shape [300, 49], expected [300, 50]"),  # the evaluator refuses it too
    OutOfCatalogue: ({"catalogue"}, "outside the catalogue"),
    Duplicates: ({"duplicates"}, "repeat an item"),
    NaNScores: ({"run", "finite"}, "NaN scores"),
    Disagrees: ({"agreement"}, "not the top-50 of score()"),
    Nondeterministic: ({"determinism"}, "same seed twice gave different outputs"),
    IgnoresBudget: ({"budget"}, "ignores the budget"),
    RaisesInFit: ({"run"}, "RuntimeError in fit: shape mismatch in layer 3"),
    NoMetadata: ({"metadata"}, "`paper` is empty"),
    CallerFrames: ({"no-test-reach"}, "reads test targets"),
    EvaluatorFrames: ({"no-test-reach"}, "reads test targets"),
    GarbageCollector: ({"no-test-reach"}, "reads test targets"),
    DataFiles: ({"no-test-reach"}, "reads test targets"),
    RunStore: ({"no-test-reach"}, "reads test targets"),
}
