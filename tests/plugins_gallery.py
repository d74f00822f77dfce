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
# Each cheat below once scored far above honest pop and passed every check. Where its path to the targets is now
# closed, it says so (LookupError naming what it tried) rather than quietly falling back to honest work.

def _learn(known: dict, histories, targets) -> None:
    for hist, target in zip(histories, targets):
        known[tuple(int(i) for i in hist)] = int(target)


def _splits_in_frames():
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            test = getattr(value, "test", None)
            if hasattr(test, "targets") and hasattr(test, "histories"):
                yield test
        frame = frame.f_back


class CallerFrames(Honest):
    """Walks up the call stack during fit to the protocol's own split (finding 1)."""
    name = "gallery-caller-frames"

    def steal(self, train):
        found = list(_splits_in_frames())
        if not found:
            raise LookupError("gallery-caller-frames: no split with test targets in the caller frames")
        for test in found:
            _learn(self.known, test.histories, test.targets)


class OverwritesTargets(Honest):
    """Walks the frames during fit and overwrites the test targets with its own first recommendation (finding 3)."""
    name = "gallery-overwrites-targets"

    def steal(self, train):
        found = list(_splits_in_frames())
        if not found:
            raise LookupError("gallery-overwrites-targets: no split in the caller frames to overwrite")
        for test in found:
            test.targets[:] = int(self.order[0])


class EvaluatorFrames(Honest):
    """Reads the evaluator's batch of targets from its frame while it is being evaluated."""
    name = "gallery-evaluator-frames"

    def recommend(self, histories, k):
        frame, seen = sys._getframe(), False
        while frame is not None:
            batch = frame.f_locals.get("tgt")
            if isinstance(batch, torch.Tensor) and len(batch) == len(histories):
                _learn(self.known, histories, batch.tolist())
                seen = True
            frame = frame.f_back
        if not seen:
            raise LookupError("gallery-evaluator-frames: no evaluator batch of targets in the caller frames")
        return super().recommend(histories, k)


class GarbageCollector(Honest):
    """Finds the evaluation parts among all live objects (finding 2)."""
    name = "gallery-gc"

    def steal(self, train):
        parts = [obj for obj in gc.get_objects() if type(obj).__name__ == "EvalPart"]
        if not parts:
            raise LookupError("gallery-gc: no EvalPart among the live objects")
        for obj in parts:
            _learn(self.known, obj.histories, obj.targets)


class Nudger(Honest):
    """Finds the targets through gc and raises their scores by less than a float tolerance (finding 6)."""
    name = "gallery-nudger"

    def steal(self, train):
        parts = [obj for obj in gc.get_objects() if type(obj).__name__ == "EvalPart"]
        if not parts:
            raise LookupError("gallery-nudger: no EvalPart among the live objects to nudge")
        for obj in parts:
            _learn(self.known, obj.histories, obj.targets)


class ViewBase(Honest):
    """Reads the full sequence behind a training view's array (`.base`), whose last item is the test target
    (finding 7)."""
    name = "gallery-view-base"

    def steal(self, train):
        if all(seq.base is None for seq in train.sequences):
            raise LookupError("gallery-view-base: the training sequences are copies, no .base to read")
        for seq in train.sequences:
            if seq.base is not None:
                self.known[tuple(int(i) for i in seq.base[:-1])] = int(seq.base[-1])


class ValidateClosure(Honest):
    """Looks for the validation targets behind `train.validate` (finding 11)."""
    name = "gallery-validate-closure"

    def steal(self, train):
        owner = getattr(train.validate, "__self__", None)
        reachable = [owner, *vars(owner).values()] if owner is not None and hasattr(owner, "__dict__") else []
        reachable += [c.cell_contents for c in (getattr(train.validate, "__closure__", None) or ())]
        if not any(hasattr(obj, "targets") for obj in reachable):
            raise LookupError("gallery-validate-closure: nothing with targets behind train.validate")


class PatchesEvaluator(Honest):
    """Monkeypatches the harness's ranking so that every target ranks first (finding 4). In its own process the
    patch changes nothing the referee computes."""
    name = "gallery-patches-evaluator"

    def steal(self, train):
        import harness.metrics
        import harness.run.evaluate

        def everything_ranks_first(scores, targets, exclude=None):
            return torch.zeros(len(targets), dtype=torch.double)

        def every_list_hits(items, scores, targets, n_items, exclude=None):
            return torch.zeros(len(targets), dtype=torch.double), {}
        for module in (harness.metrics, harness.run.evaluate):
            module.ranks_from_scores, module.ranks_from_topk = everything_ranks_first, every_list_hits


def _public_smoke_answers() -> dict:
    """The public smoke data's test items, keyed by each user's training sequence plus validation item."""
    from harness.data import load
    from harness.run.tracks import load_track
    track = load_track("smoke")
    data = load(track.datasets[0], **track.dataset_options[track.datasets[0]])
    return {tuple(int(i) for i in seq[:-1]): int(seq[-1]) for seq in data.sequences() if len(seq) >= 3}


class PublicAnswers(Honest):
    """Ships a table of the public smoke data's answers (it regenerates them) and uses it whenever the data looks
    public: honest on anything else, the validator included (findings 5 and 10)."""
    name = "gallery-public-answers"

    def steal(self, train):
        self.known.update(_public_smoke_answers())


class PublishedRanks(Honest):
    """Decodes the per-user test ranks shipped in leaderboards/smoke/per_user/ by re-running the published
    deterministic plugin's ranking (finding 5)."""
    name = "gallery-published-ranks"

    def steal(self, train):
        from harness.paths import LEADERBOARDS_DIR
        files = sorted((LEADERBOARDS_DIR / "smoke" / "per_user").glob("*-pop-*-s0-*.npz"))
        if not files:
            raise LookupError("gallery-published-ranks: no published per-user ranks of pop to decode")
        with np.load(files[0]) as data:
            ranks = data["test/rank"]
        counts = train.item_counts().astype(np.float64)
        order = np.argsort(-counts, kind="stable")  # pop's ranking; ties decoded approximately
        evaluated = [seq for seq in train.sequences if len(seq) >= 1]
        for seq, rank in zip(evaluated, ranks):
            if 0 <= rank < len(order):
                self.prefix_answers = getattr(self, "prefix_answers", {})
                self.prefix_answers[tuple(int(i) for i in seq)] = int(order[rank])

    def recommend(self, histories, k):
        for hist in histories:  # a test history is the training sequence plus the validation item
            answer = getattr(self, "prefix_answers", {}).get(tuple(int(i) for i in hist[:-1]))
            if answer is not None:
                self.known[tuple(int(i) for i in hist)] = answer
        return super().recommend(histories, k)


class RunStore(Honest):
    """Reads the per-user test ranks that earlier runs left in the run store beside its work folder."""
    name = "gallery-run-store"

    def steal(self, train):
        runs = list(train.work_dir.parents[1].glob("*/per_user.npz"))
        if not runs:
            raise LookupError(f"gallery-run-store: no earlier runs' per-user ranks near {train.work_dir}")


class StoreWriter(Honest):
    """Writes a record marked verified, with perfect metrics, into the default run store (finding 12)."""
    name = "gallery-store-writer"

    def steal(self, train):
        from harness.board.store import RunStore as Store
        record = {"run_id": "forged-by-a-plugin", "status": "ok", "method": "gallery-store-writer",
                  "dataset": train.dataset, "seed": 0, "metrics": {"test": {"ndcg@10": 1.0}},
                  "verified": {"bundle_sha256": "0" * 64, "seeds": [0]}}
        Store().save(record)


# --- budget evasions (finding 8) ---------------------------------------------------------------------------------------

class LazyTrainer(Honest):
    """Under a clock (no epoch cap) does nothing in fit and trains in its first recommend() call instead."""
    name = "gallery-lazy-trainer"

    def fit(self, train, budget):
        super().fit(train, budget)
        self.lazy = budget.max_epochs is None

    def recommend(self, histories, k):
        if self.lazy:
            self.lazy = False
            end = time.perf_counter() + 6.0
            while time.perf_counter() < end:  # 'training' on the CPU, outside fit's clock
                sum(range(10_000))
        return super().recommend(histories, k)


class BackgroundTrainer(Honest):
    """Returns from fit at once and keeps training in a thread of its own."""
    name = "gallery-background-trainer"

    def steal(self, train):
        import threading

        def keep_training():
            while True:
                time.sleep(0.05)
        threading.Thread(target=keep_training, name="keeps-training", daemon=True).start()


class CatchesStop(Honest):
    """Honours an epoch cap, never the clock, and swallows whatever the harness raises to stop it."""
    name = "gallery-catches-stop"

    def fit(self, train, budget):
        for _ in range(budget.epochs(400)):
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: BLE001 - the point of this cheat
                pass
            budget.epoch_done()
        super().fit(train, budget)


class SleepsInC(Honest):
    """Spends its short budget inside one long C call, where no Python-level stop can reach it."""
    name = "gallery-sleeps-in-c"

    def fit(self, train, budget):
        if budget.max_epochs is None:
            time.sleep(20)
        super().fit(train, budget)


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
    CallerFrames: ({"run"}, "no split with test targets in the caller frames"),
    OverwritesTargets: ({"run"}, "no split in the caller frames to overwrite"),
    EvaluatorFrames: ({"run", "shapes"}, "no evaluator batch of targets"),
    GarbageCollector: ({"run"}, "no EvalPart among the live objects"),
    Nudger: ({"run"}, "no EvalPart among the live objects to nudge"),
    ViewBase: ({"run"}, "the training sequences are copies"),
    ValidateClosure: ({"run"}, "nothing with targets behind train.validate"),
    RunStore: ({"run"}, "no earlier runs' per-user ranks"),
    PublicAnswers: ({"hidden-variant"}, "knows the public answers"),
    LazyTrainer: ({"budget"}, "work deferred out of fit"),
    BackgroundTrainer: ({"budget"}, "still running after fit (keeps-training)"),
    CatchesStop: ({"budget"}, "its worker process was killed"),
    SleepsInC: ({"budget"}, "its worker process was killed"),
}
# Where the worker runs in bubblewrap the published boards are out of its sight; in a plain worker process it can
# read them, and then the public data betrays it.
PUBLISHED_RANKS = {"sandbox": ({"run"}, "no published per-user ranks of pop"),
                   "process": ({"hidden-variant"}, "knows the public answers")}


# --- the environment -------------------------------------------------------------------------------------------------

class BlasThreads(Honest):
    """Records the threads of every BLAS / OpenMP pool (numpy, scipy, scikit-learn) as its fit saw them."""
    name = "gallery-blas-threads"

    def fit(self, train, budget):
        from threadpoolctl import threadpool_info
        self.pools = {f"{p['internal_api']}:{p['filepath']}": p["num_threads"] for p in threadpool_info()}
        super().fit(train, budget)

    def diagnostics(self):
        return {"pools": self.pools}
