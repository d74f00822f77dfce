"""`harness validate-plugin NAME`: the plugin run under the referee, the conformance checks applied to it.

Every check reports pass / fail / skip with a one-line reason. The plugin runs through the referee, the same
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
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

import harness
from harness import registry
from harness.api import Method
from harness.board.store import RunStore
from harness.data import load_card, load_dataset
from harness.data.cards import sha256_of
from harness.plugins.checks import Check, check_metadata, check_outputs, content_digest, n_differing
from harness.run.record import plugin_info
from harness.run.referee import prepare, run
from harness.run.spec import RunSpec
from harness.run.tracks import Track, load_track

TRACK = "smoke"
BUDGET_SECONDS = 3.0  # the short budget (no epoch cap); the harness stops fit at budget + 2 s
# Conformance needs a working model, not a good one: the other runs are capped at this many epochs, and their
# clock is generous so that on a slow machine the cap, not the clock, ends them (else two runs could train for
# different lengths; see Probe.time_bound). A plugin that never stops costs this long before it is reported.
EPOCHS = 3
COMPARISON_BUDGET_SECONDS = 300.0
HOLDOUT_CARD = "smoke-holdout"


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


# --- running the plugin under the referee, watching it --------------------------------------------------------------

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


# --- the validator ---------------------------------------------------------------------------------------------------

def validate_plugin(name: str, seed: int = 0, budget_seconds: float = BUDGET_SECONDS, epochs: int = EPOCHS) -> Report:
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
        base = RunSpec.for_track(track, name, str(card_a), seed=seed, data_dir=str(root_a), latency_users=50,
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
        differing, total = n_differing(probe.outputs, probe_again.outputs)
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
        differing, total = n_differing(probe.outputs, probe_other.outputs)
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
