"""Ablations declared by a plugin (`ablations:` in its YAML): variants run over seeds on one split, then the paper's
tables, each closing with the difference of its last row against its first and that difference's tests.

Paired tests use per-user arrays averaged over seeds (Wilcoxon signed-rank over users; for gAUC the per-user AUC it
averages); metrics without per-user terms (pooled AUC, log-loss, the AUC gap) are compared across seeds with Welch's
test.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Collection, Sequence

import numpy as np

from harness import registry
from harness.board.results import load_results
from harness.board.stats import correct, paired, welch
from harness.board.tables import PER_USER_TERMS
from harness.config import config_hash
from harness.errors import ConfigError
from harness.run.referee import prepare
from harness.studies.seeds import run_seeds


def variants_of(method_cls) -> dict[str, dict[str, Any]]:
    spec = method_cls.ablations or {}
    if not spec.get("variants"):
        raise ConfigError(f"method {method_cls.name!r} declares no ablations (an `ablations:` section in its YAML)")
    return dict(spec["variants"])


def adopt_published(spec, seeds: Sequence[int], store, config_hashes: Collection[str],
                    leaderboards_dir=None) -> list[str]:
    """Copy the board's published records of `spec.method` on its track and dataset (seeds `seeds`, resolved configs
    `config_hashes`) into `store`, with their per-user arrays, so that a variant whose configuration is exactly a
    published row's (the plugin's own, e.g. TIGER's RQ-VAE) reuses those seeds instead of training them again
    (`run_seeds` then takes them: same config, split, track and epoch cap). Returns the run ids adopted."""
    if not spec.track:
        return []
    results = load_results(track=spec.track, dataset=spec.dataset, leaderboards_dir=leaderboards_dir)
    adopted = []
    for record in results.records:
        source = results.sources[record["run_id"]]
        if (record["method"] != spec.method or record.get("seed") not in seeds
                or record.get("method_config_hash") not in config_hashes or store.get(record["run_id"])
                or not getattr(source, "is_file", lambda: False)()):  # no per-user arrays: no paired tests
            continue
        with np.load(source) as data:  # ranks and collision groups as published
            raw = {key: data[key] for key in data.files}
        per_user = {}
        for stage in ("valid", "test"):
            metrics = results.per_user(record, stage) or {}  # the per-user metrics a run stores, from its ranks
            per_user[stage] = {**{k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith(f"{stage}/")},
                               **{k: np.asarray(v) for k, v in metrics.items()}}
        store.save(record, per_user)
        adopted.append(record["run_id"])
    return adopted


def run_ablations(spec, seeds: Sequence[int], store, jobs: int | None = None, force: bool = False,
                  only: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every variant (its overrides on top of the user's) over the seeds; finished seeds are reused (the store's,
    and the board's published ones, `adopt_published`). Seed by seed, every variant in turn."""
    variants = variants_of(registry.get(spec.method))
    unknown = set(only or []) - set(variants)
    if unknown:
        raise ConfigError(f"unknown variant(s) {sorted(unknown)}; {spec.method} has {', '.join(variants)}")
    chosen = {name: overrides for name, overrides in variants.items() if not only or name in only}
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    if not force:
        adopt_published(spec, seeds, store, {config_hash(prepare(dataclasses.replace(
            spec, overrides={**spec.overrides, **overrides})).config) for overrides in chosen.values()})
    for seed in seeds:
        for name, overrides in chosen.items():
            variant = dataclasses.replace(spec, overrides={**spec.overrides, **overrides})
            out[name] += run_seeds(variant, [seed], store, n_jobs=jobs, resume=not force)
    return out


def _value(record: dict[str, Any], metric: str) -> float | None:
    value = record.get("metrics", {}).get("test", {}).get(metric, record.get("diagnostics", {}).get(metric))
    return None if value is None else float(value)


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def ablation_tables(method_cls, records: dict[str, list[dict[str, Any]]],
                    per_user: Callable[[dict[str, Any]], dict[str, np.ndarray] | None]) -> list[tuple[str, list[dict]]]:
    tables = []
    for table in (method_cls.ablations or {}).get("tables", []):
        names = [n for n in table["rows"] if records.get(n)]
        rows = []
        for name in names:
            row: dict[str, Any] = {"config": name, "seeds": len(records[name])}
            for metric in table["metrics"]:
                row[metric] = _summary([v for v in (_value(r, metric) for r in records[name]) if v is not None])
            rows.append(row)
        if len(names) >= 2:
            first, last = names[0], names[-1]
            delta: dict[str, Any] = {"config": f"Δ {last} − {first}", "seeds": ""}
            tested: list[tuple[str, float, float, str]] = []  # metric, difference, raw p, test
            for metric in table["metrics"]:
                a = [v for v in (_value(r, metric) for r in records[last]) if v is not None]
                b = [v for v in (_value(r, metric) for r in records[first]) if v is not None]
                if not a or not b:
                    delta[metric] = "-"
                    continue
                diff = float(np.mean(a) - np.mean(b))
                test = _paired_p(records[last], records[first], metric, per_user)
                p, how = (welch(a, b)["p"], "welch") if test is None else (test, "wilcoxon")
                tested.append((metric, diff, p, how))
            # the table's metrics are one family of tests: Holm-corrected together (a NaN p stays untested)
            finite = [i for i, (_, _, p, _) in enumerate(tested) if np.isfinite(p)]
            adjusted = dict(zip(finite, correct([tested[i][2] for i in finite], "holm")))
            for i, (metric, diff, p, how) in enumerate(tested):
                delta[metric] = f"{diff:+.4f} (p_holm={adjusted[i]:.2g} {how})" if i in adjusted else f"{diff:+.4f}"
            rows.append(delta)
        tables.append((table["title"], rows))
    return tables


def _paired_p(a_records, b_records, metric: str, per_user) -> float | None:
    key = PER_USER_TERMS.get(metric, metric)
    if key is None:
        return None

    def averaged(records):
        arrays = [per_user(r) for r in records]
        arrays = [x[key] for x in arrays if x is not None and key in x]
        if not arrays or len({len(x) for x in arrays}) != 1:
            return None
        return np.mean(arrays, axis=0)
    a, b = averaged(a_records), averaged(b_records)
    if a is None or b is None or a.shape != b.shape:
        return None
    return paired(a, b, n_boot=200)["p_wilcoxon"]
