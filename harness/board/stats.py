"""Statistics for claims a researcher can defend (DESIGN §4.5–4.6), on scipy and statsmodels.

- seed level: mean, std and a 95% t-interval over seeds; Welch's t-test between two methods' seed values;
- user level (paired): per-user metric arrays averaged over seeds, compared with the Wilcoxon signed-rank test,
  the paired t-test and a paired bootstrap CI of the mean difference; effect size d_z = mean(diff) / sd(diff);
- a table: every method against the best, p-values corrected together (Holm by default, Benjamini–Hochberg as an
  option); methods whose corrected p is not below alpha are tied with the best.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "none": None}
TESTS = ("wilcoxon", "ttest", "bootstrap")


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Seed-level Welch t-test and Hedges' g (a minus b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return {"p": float("nan"), "hedges_g": float("nan")}
    with warnings.catch_warnings():  # identical seeds (e.g. Pop) make the variance vanish: p is then nan → 1
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_ind(a, b, equal_var=False)
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    correction = 1 - 3 / (4 * (len(a) + len(b)) - 9)
    g = float((a.mean() - b.mean()) / pooled * correction) if pooled > 0 else float("nan")
    return {"p": float(result.pvalue) if np.isfinite(result.pvalue) else 1.0, "hedges_g": g}


def paired(a: np.ndarray, b: np.ndarray, n_boot: int = 5000, confidence: float = 0.95,
           seed: int = 0) -> dict[str, float]:
    """Paired comparison over users of per-user metric arrays a and b (same users, same order)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape} (different splits?)")
    defined = ~(np.isnan(a) | np.isnan(b))  # NaN: no value for this user (e.g. gAUC of a user with one label)
    a, b = a[defined], b[defined]
    diff = a - b
    out = {"diff": float(diff.mean()), "n_users": int(len(diff))}
    if len(diff) < 2 or not np.any(diff != 0):
        return {**out, "p_wilcoxon": 1.0, "p_ttest": 1.0, "p_bootstrap": 1.0, "boot_low": out["diff"],
                "boot_high": out["diff"], "effect_dz": 0.0}
    out["p_wilcoxon"] = float(sps.wilcoxon(a, b, zero_method="wilcox").pvalue)
    out["p_ttest"] = float(sps.ttest_rel(a, b).pvalue)
    boot = sps.bootstrap((diff,), np.mean, n_resamples=n_boot, confidence_level=confidence, method="percentile",
                         random_state=np.random.default_rng(seed), batch=max(1, 2_000_000 // len(diff)))
    out["boot_low"], out["boot_high"] = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    # two-sided bootstrap p-value: how often a resampled mean difference lies on the other side of zero, doubled
    # (never 0: the observed sample counts as one resample), so that it can go through a correction like the others
    means = np.asarray(boot.bootstrap_distribution)
    tail = min(int((means <= 0).sum()), int((means >= 0).sum()))
    out["p_bootstrap"] = float(min(1.0, 2 * (tail + 1) / (len(means) + 1)))
    sd = diff.std(ddof=1)
    out["effect_dz"] = float(diff.mean() / sd) if sd > 0 else 0.0
    return out


def correct(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    p = np.asarray(pvalues, dtype=float)
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; use one of {', '.join(CORRECTIONS)}")
    if CORRECTIONS[method] is None or len(p) == 0:
        return p
    return multipletests(p, method=CORRECTIONS[method])[1]


@dataclass
class MethodResults:
    """One board row's inputs: a metric's value per seed and the per-user array averaged over seeds."""

    label: str
    seed_values: list[float]
    per_user: np.ndarray | None
    extra: dict = field(default_factory=dict)


def compare_to_best(rows: Sequence[MethodResults], test: str = "wilcoxon", correction: str = "holm",
                    alpha: float = 0.05, n_boot: int = 5000) -> list[dict]:
    """Every method against the best (highest seed mean); corrected p-values; tie flags."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    summaries = [seed_summary(r.seed_values) for r in rows]
    means = np.array([s["mean"] for s in summaries], dtype=float)
    if not rows or not np.isfinite(means).any():  # no row has the metric: nothing to rank, every tie unknown
        return [{"label": r.label, **s, "best": False, "tied": None} for r, s in zip(rows, summaries)]
    best = int(np.nanargmax(means))
    out, raw_p = [], []
    for i, row in enumerate(rows):
        entry = {"label": row.label, **summaries[i], "best": i == best}
        if i != best and row.per_user is not None and rows[best].per_user is not None:
            entry.update(paired(row.per_user, rows[best].per_user, n_boot=n_boot))
            entry["p_welch"] = welch(row.seed_values, rows[best].seed_values)["p"]
            raw_p.append((i, entry[f"p_{test}"]))
        elif i != best and len(row.seed_values) >= 2 and len(rows[best].seed_values) >= 2:
            # no per-user terms (e.g. a pooled AUC): the seeds decide, by Welch's test
            entry["diff"] = summaries[i]["mean"] - summaries[best]["mean"]
            entry["p_welch"] = welch(row.seed_values, rows[best].seed_values)["p"]
            entry["decided_by"] = "welch"
            raw_p.append((i, entry["p_welch"]))
        entry.setdefault("tied", None)  # unknown without per-user arrays or seeds
        out.append(entry)
    adjusted = correct([p for _, p in raw_p], correction)
    for (i, _), p_adj in zip(raw_p, adjusted):
        out[i]["p_adj"] = float(p_adj)
        out[i]["tied"] = bool(p_adj >= alpha)
    out[best]["tied"] = True
    return out
