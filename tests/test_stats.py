"""Statistics agree with scipy / statsmodels called directly on the same arrays; ties follow the corrected tests."""
import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from harness.board.stats import MethodResults, compare_to_best, correct, paired, seed_summary, welch


def test_seed_summary_is_a_t_interval():
    x = [0.031, 0.029, 0.034, 0.030, 0.033]
    s = seed_summary(x)
    low, high = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert s["mean"] == pytest.approx(np.mean(x)) and s["std"] == pytest.approx(np.std(x, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.random(500)
    b = np.clip(a - 0.03 + rng.normal(0, 0.1, 500), 0, 1)
    out = paired(a, b, n_boot=2000, seed=1)
    assert out["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert out["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    boot = sps.bootstrap((a - b,), np.mean, n_resamples=2000, method="percentile",
                         random_state=np.random.default_rng(1))
    assert out["boot_low"] == pytest.approx(boot.confidence_interval.low)
    assert out["boot_high"] == pytest.approx(boot.confidence_interval.high)
    assert out["effect_dz"] == pytest.approx((a - b).mean() / (a - b).std(ddof=1))


def test_identical_arrays_are_not_different():
    a = np.array([0.0, 1.0, 0.5])
    assert paired(a, a.copy())["p_wilcoxon"] == 1.0


def test_welch_matches_scipy():
    a, b = [0.30, 0.31, 0.29, 0.32], [0.27, 0.28, 0.26, 0.30, 0.27]
    assert welch(a, b)["p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)


@pytest.mark.parametrize("method, sm", [("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_match_statsmodels(method, sm):
    p = [0.001, 0.04, 0.03, 0.2, 0.0125]
    np.testing.assert_allclose(correct(p, method), multipletests(p, method=sm)[1])


def test_ties_with_the_best_use_holm_over_the_table():
    rng = np.random.default_rng(3)
    n = 400
    best = rng.random(n)
    close = np.clip(best + rng.normal(0, 0.05, n), 0, 1)  # not significantly different
    worse = np.clip(best - 0.2 + rng.normal(0, 0.05, n), 0, 1)
    rows = [MethodResults("best", [best.mean() + 0.001 * i for i in range(3)], best),
            MethodResults("close", [close.mean() - 0.002] * 3, close),
            MethodResults("worse", [worse.mean()] * 3, worse)]
    out = {r["label"]: r for r in compare_to_best(rows, n_boot=500)}
    raw = [sps.wilcoxon(close, best).pvalue, sps.wilcoxon(worse, best).pvalue]
    adjusted = multipletests(raw, method="holm")[1]
    assert out["close"]["p_adj"] == pytest.approx(adjusted[0])
    assert out["worse"]["p_adj"] == pytest.approx(adjusted[1])
    assert out["best"]["best"] and out["best"]["tied"]
    assert adjusted[0] >= 0.05 and out["close"]["tied"] is True
    assert out["worse"]["tied"] is False
