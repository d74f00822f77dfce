"""`harness validate-plugin NAME`: the plugin run under the referee, the conformance checks applied to it.

Every check reports pass / fail / skip with a one-line reason. The plugin runs through the referee, the same as a
real run (in its worker process or sandbox), each run into a throw-away store; the referee's observer sees what the
plugin was given and what it answered.

Reach to test targets is tested by outcome rather than by listing forbidden paths. The runs use a hidden variant of
the smoke data: the same card, name and sizes, drawn from a data seed chosen at validation time, so nothing the
plugin sees tells it from a real run. Variant B differs from it in the hidden test items only; the plugin's outputs
may differ between the two by no more than between two runs of the same seed. Last, the plugin runs on the public
smoke data: a plugin that knows the public answers (a table shipped with it, files it read) scores far better there
than on the hidden variant.
"""
from __future__ import annotations

import dataclasses
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
from harness.board.store import RunStore
from harness.plugins.checks import Check, check_metadata, check_outputs, content_digest, n_differing, output_noise
from harness.run.record import plugin_info
from harness.run.referee import prepare, run
from harness.run.spec import RunSpec
from harness.run.tracks import load_track
from harness.schema import EVALUATED

TRACK = "smoke"
BUDGET_SECONDS = 3.0  # the short budget (no epoch cap); the harness stops fit at budget + 2 s
# Conformance needs a working model, not a good one: the other runs are capped at this many epochs, and their
# clock is generous so that on a slow machine the cap, not the clock, ends them (else two runs could train for
# different lengths; see Probe.time_bound). A plugin that never stops costs this long before it is reported.
EPOCHS = 3
COMPARISON_BUDGET_SECONDS = 300.0
# The hidden-variant check fails a plugin whose public-data ndcg@10 beats its hidden-variant one by more than this
# and by more than 4 standard errors: far beyond what one draw of the smoke data differs from another.
HIDDEN_MARGIN = 0.1


@dataclass
class Report:
    method: str
    plugin: dict[str, Any]
    track: str
    checks: list[Check]
    seconds: float = 0.0
    isolation: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "passed": self.passed, "track": self.track, "plugin": self.plugin,
                "harness_version": harness.__version__, "seconds": round(self.seconds, 1),
                "isolation": self.isolation,
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def render(self) -> str:
        rows = [[c.name, c.status.upper() if c.status == "fail" else c.status, c.reason] for c in self.checks]
        verdict = "PASSED" if self.passed else f"FAILED ({sum(c.status == 'fail' for c in self.checks)} checks)"
        where = f" ({self.isolation} isolation)" if self.isolation else ""
        return (tabulate(rows, headers=["check", "result", "reason"], tablefmt="simple", maxcolwidths=[None, None, 90])
                + f"\n\n{self.method}: {verdict} in {self.seconds:.0f}s{where}")


# --- the hidden variants of the smoke data ---------------------------------------------------------------------------

def fresh_seed() -> int:
    """A data seed nobody can know in advance: each validation draws its own hidden variant."""
    return int(np.random.SeedSequence().entropy % (2 ** 31 - 1)) + 1


def moved_targets(split: Any, n_items: int, seed: int) -> Any:
    """The same split with every evaluated user's test item replaced: only the hidden test targets differ."""
    rng = np.random.default_rng(seed)
    targets = (np.asarray(split.test.targets) + rng.integers(1, n_items, len(split.test.targets))) % n_items
    return dataclasses.replace(split, test=dataclasses.replace(split.test, targets=targets))


# --- running the plugin under the referee, watching it --------------------------------------------------------------

class Probe:
    """The referee's observer: the content of the training view given to the plugin, and every output of the fitted
    plugin (wherever it runs); on request, the output checks on the fitted plugin before it is evaluated."""

    def __init__(self, cls: type, checks_on: Any = None, k: int = 10, seed: int = 0):
        self.cls = cls
        self.view_digest: str | None = None
        self.fitted_ok = False
        self.time_bound = False  # the clock, not the epoch cap, ended fit
        self.outputs: list[tuple[str, Any, Any]] = []
        self.checks: list[Check] = []
        self._checks_on, self._k, self._seed = checks_on, k, seed

    def given(self, view: dict[str, Any]) -> None:
        self.view_digest = content_digest(view)

    def fitted(self, method: Any, time_bound: bool) -> Any:
        self.fitted_ok, self.time_bound = True, time_bound
        if self._checks_on is not None:
            part, n_items = self._checks_on
            self.checks = check_outputs(method, self.cls, part.histories, part.users, n_items, self._k, self._seed)
        return Recorder(method, self)

    def keep(self, kind: str, a: Any, b: Any = None) -> None:
        as_cpu = lambda x: x.detach().cpu().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
        self.outputs.append((kind, as_cpu(a), as_cpu(b)))


class Recorder:
    """The fitted plugin as the evaluator calls it, each answer kept by the probe."""

    def __init__(self, method: Any, probe: Probe):
        self._method, self._probe = method, probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def recommend(self, histories, k, **kwargs):
        top = self._method.recommend(histories, k, **kwargs)
        self._probe.keep("recommend", getattr(top, "items", top), getattr(top, "scores", None))
        return top

    def score(self, histories, items=None, **kwargs):
        scores = self._method.score(histories, items, **kwargs)
        self._probe.keep("score", scores)
        return scores


def _probe_run(spec: RunSpec, store_dir: Path, checks: bool = False,
               move_seed: int | None = None) -> tuple[dict[str, Any], Probe, RunStore]:
    prepared = prepare(spec)
    if move_seed is not None:
        prepared.split = moved_targets(prepared.split, prepared.dataset.n_items, move_seed)
    probe = Probe(prepared.method_cls, (prepared.split.test, prepared.dataset.n_items) if checks else None,
                  max(spec.ks), spec.seed)
    store = RunStore(runs_dir=store_dir)
    return run(spec, store, prepared, observer=probe), probe, store


def _fit_failure(record: dict[str, Any]) -> bool:
    failure = record.get("failure") or ""
    return record["status"] == "failed" and (" in fit:" in failure or failure.startswith("NonFiniteLoss"))


def _test_ndcg(record: dict[str, Any], store: RunStore) -> np.ndarray:
    values = store.per_user(record["run_id"]).get("test", {}).get("ndcg@10")
    return np.zeros(0) if values is None else np.asarray(values, dtype=np.float64)


def hidden_variant_check(public: np.ndarray, hidden: np.ndarray, margin: float = HIDDEN_MARGIN) -> Check:
    """An honest plugin scores about the same on the public smoke data and on a fresh draw of the same shape; one
    that knows the public answers (a table of them, files it read) scores far better on the public data."""
    if not len(public) or not len(hidden):
        return Check("hidden-variant", "skip", "inconclusive: a run was not evaluated")
    gap = float(public.mean() - hidden.mean())
    se = float(np.sqrt(public.var(ddof=1) / len(public) + hidden.var(ddof=1) / len(hidden)))
    details = {"public_ndcg@10": round(float(public.mean()), 4), "hidden_ndcg@10": round(float(hidden.mean()), 4),
               "gap": round(gap, 4), "se": round(se, 4)}
    if gap > margin and gap > 4 * se:
        return Check("hidden-variant", "fail", f"knows the public answers: test ndcg@10 {public.mean():.4f} on the "
                     f"public smoke data against {hidden.mean():.4f} on a hidden variant of the same shape (gap "
                     f"{gap:.3f}, {gap / max(se, 1e-12):.0f} standard errors)", details)
    return Check("hidden-variant", "pass", f"test ndcg@10 {public.mean():.4f} on the public data, {hidden.mean():.4f} "
                 f"on a hidden variant (gap {gap:+.3f}, se {se:.3f})", details)


# --- the validator ---------------------------------------------------------------------------------------------------

def validate_plugin(name: str, seed: int = 0, budget_seconds: float = BUDGET_SECONDS, epochs: int = EPOCHS,
                    isolation: str | None = None) -> Report:
    """Run every check for the plugin `name` (HarnessError if there is no such plugin)."""
    start = time.monotonic()
    cls = registry.get(name)
    track = load_track(TRACK)
    report = Report(name, plugin_info(cls), TRACK, [check_metadata(cls)])
    later = ("run", "budget", "shapes", "catalogue", "duplicates", "finite", "agreement", "determinism",
             "no-test-reach", "hidden-variant", "cost")

    def skip_rest(reason: str) -> Report:
        report.checks += [Check(n, "skip", reason) for n in later if n not in {c.name for c in report.checks}]
        report.seconds = time.monotonic() - start
        return report

    dataset = track.datasets[0]
    asked = {} if isolation is None else {"isolation": isolation}
    public = RunSpec.for_track(track, name, dataset, seed=seed, latency_users=50,
                               max_epochs=min(epochs, track.max_epochs or epochs),
                               budget_seconds=max(track.budget_seconds or 0.0, COMPARISON_BUDGET_SECONDS),
                               command=f"harness validate-plugin {name}", **asked)
    # The hidden variant: the same card, name and sizes, a data seed drawn now; nothing the plugin sees tells it
    # from a real run (variant B differs from it in the hidden test items only).
    hidden = dataclasses.replace(public, dataset_options={**public.dataset_options, "seed": fresh_seed()})
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
        tmp = Path(tmp)
        first, probe, first_store = _probe_run(hidden, tmp / "store-1", checks=True)
        report.isolation = first.get("isolation")
        if first["status"] == "over_budget":
            report.checks.append(Check("budget", "fail", f"ignores the budget: {first['failure']} with "
                                       f"{hidden.max_epochs} epochs asked; poll budget.exhausted() in the training "
                                       f"loop and plan epochs with budget.epochs()"))
            return skip_rest("the plugin does not stop within its budget")
        if first["status"] == "ok":
            report.checks.append(Check("run", "pass", f"fit + evaluation ok: test ndcg@10 "
                                       f"{first['metrics']['test'].get('ndcg@10', float('nan')):.4f}, "
                                       f"{first['used']['epochs']} epochs in {first['used']['train_seconds']:.1f}s"
                                       f" ({first['isolation']} isolation)"))
        else:
            report.checks.append(Check("run", "fail", f"{first['status']}: {first['failure']}",
                                       {"traceback": first["diagnostics"].get("traceback")}))
        if not probe.fitted_ok:
            return skip_rest("fit did not finish")

        # The short budget after a first run, as on any later run of a track: cached features or SIDs are not
        # charged to it.
        short, _, _ = _probe_run(dataclasses.replace(hidden, budget_seconds=budget_seconds, max_epochs=None),
                                 tmp / "store-budget")
        used = short["used"]["train_seconds"]
        if short["status"] == "over_budget":
            report.checks.append(Check("budget", "fail", f"ignores the budget: {short['failure']}; poll "
                                       f"budget.exhausted() in the training loop", {"train_seconds": used}))
        elif _fit_failure(short):
            report.checks.append(Check("budget", "fail", f"fit fails without an epoch cap: {short['failure']}"))
        else:
            report.checks.append(Check("budget", "pass", f"fit ended after {used:.1f}s of a {budget_seconds:g}s "
                                       f"budget ({short['used']['epochs']} epochs)", {"train_seconds": used,
                                                                                     "work": short["used"].get("work")}))
        report.checks += probe.checks

        again, probe_again, _ = _probe_run(hidden, tmp / "store-2")
        noise = output_noise(probe.outputs, probe_again.outputs)
        differing, total = n_differing(probe.outputs, probe_again.outputs)
        deterministic = differing == 0 and again["status"] == first["status"]
        if total == 0:
            deterministic = None
            report.checks.append(Check("determinism", "skip", "inconclusive: no outputs to compare (the runs did not "
                                       "reach evaluation)"))
        elif probe.time_bound or probe_again.time_bound:
            deterministic = None
            report.checks.append(Check("determinism", "skip", f"inconclusive: the {hidden.budget_seconds:g}s clock, "
                                       f"not the {hidden.max_epochs}-epoch cap, ended a run (a loaded machine?)"))
        elif deterministic:
            report.checks.append(Check("determinism", "pass", f"same seed twice: identical outputs ({total} calls"
                                       + (f", float noise up to {noise:.1e})" if noise else ", bit for bit)"),
                                       {"noise": noise}))
        else:
            report.checks.append(Check("determinism", "fail", f"same seed twice gave different outputs in {differing} "
                                       f"of {total} recommend/score calls: seed every random source from "
                                       f"train.seed (or rely on the seeded global torch/numpy/random state)"))

        # Variant B into the store that already holds variant A's run: reading earlier runs must not help either.
        # Its outputs may differ from A's by no more than the plugin's own rerun noise.
        other, probe_other, _ = _probe_run(hidden, tmp / "store-1", move_seed=fresh_seed())
        differing, total = n_differing(probe.outputs, probe_other.outputs, tolerance=noise * 2)
        view_same = probe.view_digest == probe_other.view_digest
        if not view_same:
            report.checks.append(Check("no-test-reach", "fail", "the TrainView's content differs between two datasets "
                                       "that differ only in their test items: the harness exposes test data"))
        elif not deterministic or probe_other.time_bound:
            report.checks.append(Check("no-test-reach", "skip", "inconclusive: the outputs are not deterministic"
                                       if deterministic is False else "inconclusive: no deterministic outputs to "
                                       "compare (no evaluation, or the clock ended a run)"))
        elif differing or other["status"] != first["status"]:
            report.checks.append(Check("no-test-reach", "fail", f"reads test targets: outputs changed in {differing} "
                                       f"of {total} calls (beyond its own rerun noise of {noise:.1e}) when only the "
                                       f"hidden test items changed, with an identical training view"))
        else:
            report.checks.append(Check("no-test-reach", "pass", "identical training view and outputs with different "
                                       "hidden test items" + (f" (within rerun noise {noise:.1e})" if noise else "")))

        # The public data last, as a submission's run sees it: the same plugin must not do better there.
        pub, _, pub_store = _probe_run(public, tmp / "store-public")
        if first["status"] not in EVALUATED:
            report.checks.append(Check("hidden-variant", "skip", "inconclusive: the hidden variant's run failed"))
        elif pub["status"] not in EVALUATED:
            report.checks.append(Check("hidden-variant", "fail", f"behaves differently on the public data: that run "
                                       f"{pub['status']} ({pub['failure']}) where the hidden variant's did not"))
        else:
            report.checks.append(hidden_variant_check(_test_ndcg(pub, pub_store), _test_ndcg(first, first_store)))

        latency, memory = first.get("latency") or {}, first.get("peak_memory") or {}
        if latency.get("p50_ms") is not None and memory:
            report.checks.append(Check("cost", "pass", f"p50 {latency['p50_ms']} ms/user, p99 {latency['p99_ms']} ms, "
                                       f"{latency['users_per_s']} users/s; peak RSS {memory.get('rss_mb', 0):.0f} MB"
                                       f"; {first.get('params')} params", {"latency": latency, "memory": memory}))
        else:
            report.checks.append(Check("cost", "skip", "latency not measured: the run did not finish"))
    report.seconds = time.monotonic() - start
    return report
