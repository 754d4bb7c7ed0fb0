"""The experiment statistics (models/experiments/stats.py) against scipy/statsmodels, fixed-seed bootstraps, OLS,
simulations with a known truth, and hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from models.experiments import stats
from models.experiments.data import LATENCY_EDGES_MS

# ----------------------------------------------------------------------------------------- Welch, delta method


def test_welch_difference_matches_scipy_ttest_ind() -> None:
    rng = np.random.default_rng(1)
    for n_c, n_t, sd_t in ((40, 65, 3.0), (500, 300, 0.5), (3, 4, 1.0)):
        c = rng.normal(1.0, 1.0, n_c)
        t = rng.normal(1.4, sd_t, n_t)
        d = stats.welch_difference(c, t)
        ref = sps.ttest_ind(t, c, equal_var=False)
        ci = ref.confidence_interval(0.95)
        assert d.abs_diff == pytest.approx(t.mean() - c.mean())
        assert d.p_value == pytest.approx(ref.pvalue, rel=1e-9)
        assert d.df == pytest.approx(ref.df, rel=1e-9)
        assert d.abs_ci == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_ci_level_follows_alpha() -> None:
    rng = np.random.default_rng(2)
    c, t = rng.normal(0, 1, 200), rng.normal(0.2, 1, 200)
    ref = sps.ttest_ind(t, c, equal_var=False).confidence_interval(0.9)
    assert stats.welch_difference(c, t, alpha=0.1).abs_ci == pytest.approx((ref.low, ref.high), rel=1e-9)


def _bootstrap(rng: np.random.Generator, b: int, *arrays: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """Each array resampled over its users, ``b`` times: a (b, n) array per input (paired inputs share rows)."""
    idx = rng.integers(0, arrays[0].size, (b, arrays[0].size))
    return [a[idx] for a in arrays]


def test_relative_difference_se_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(3)
    c, t = rng.exponential(2.0, 1500), rng.exponential(2.3, 1200)
    d = stats.welch_difference(c, t)
    (bc,), (bt,) = _bootstrap(rng, 2000, c), _bootstrap(rng, 2000, t)
    rel = bt.mean(1) / bc.mean(1) - 1
    delta_se = (d.rel_ci[1] - d.rel_ci[0]) / (2 * sps.norm.ppf(0.975))
    assert d.rel_diff == pytest.approx(t.mean() / c.mean() - 1)
    assert delta_se == pytest.approx(rel.std(), rel=0.06)


def _ratio_users(rng: np.random.Generator, n: int, rate: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Plays and completes per user, correlated through the user's activity (what makes the naive variance wrong)."""
    plays = rng.poisson(rng.gamma(1.5, 2.0, n)).astype(np.float64)
    completes = rng.binomial(plays.astype(np.int64), rate).astype(np.float64)
    return completes, plays


def test_ratio_delta_method_variance_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(4)
    completes, plays = _ratio_users(rng, 2000, 0.6)
    est = stats.ratio_estimate(completes, plays)
    assert est.value == pytest.approx(completes.sum() / plays.sum())
    bx, by = _bootstrap(rng, 2000, completes, plays)
    boot = bx.sum(1) / by.sum(1)
    assert math.sqrt(est.var) == pytest.approx(boot.std(), rel=0.06)


def test_ratio_delta_method_equals_the_textbook_expression() -> None:
    """Deng, Knoblich, Lu (2018): Var(R) = (σ²x − 2Rσxy + R²σ²y) / (n μy²), written out term by term."""
    rng = np.random.default_rng(5)
    x, y = _ratio_users(rng, 500, 0.3)
    n, r, mu_y = x.size, x.mean() / y.mean(), y.mean()
    cov = np.cov(x, y, ddof=1)
    expected = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mu_y**2)
    assert stats.ratio_estimate(x, y).var == pytest.approx(expected, rel=1e-12)
    # A denominator of 1 per user makes the ratio a mean: the same variance as the mean's s²/n.
    ones = np.ones_like(x)
    assert stats.ratio_estimate(x, ones).var == pytest.approx(stats.mean_estimate(x).var, rel=1e-12)


def test_ratio_difference_se_and_relative_ci_match_a_bootstrap() -> None:
    rng = np.random.default_rng(6)
    xc, yc = _ratio_users(rng, 2000, 0.5)
    xt, yt = _ratio_users(rng, 1800, 0.56)
    d = stats.ratio_difference(xc, yc, xt, yt)
    bxc, byc = _bootstrap(rng, 2000, xc, yc)
    bxt, byt = _bootstrap(rng, 2000, xt, yt)
    rc, rt = bxc.sum(1) / byc.sum(1), bxt.sum(1) / byt.sum(1)
    z = sps.norm.ppf(0.975)
    assert d.se == pytest.approx((rt - rc).std(), rel=0.06)
    assert (d.rel_ci[1] - d.rel_ci[0]) / (2 * z) == pytest.approx((rt / rc - 1).std(), rel=0.06)
    # normal two-sided p of the difference
    assert d.p_value == pytest.approx(2 * sps.norm.sf(abs(d.abs_diff) / d.se))


def test_degenerate_inputs_give_nan_or_point_results_not_exceptions() -> None:
    empty = stats.welch_difference([], [1.0, 2.0])
    assert math.isnan(empty.abs_diff) and math.isnan(empty.p_value)
    flat = stats.welch_difference([1.0, 1.0, 1.0], [1.0, 1.0])
    assert flat.abs_diff == 0 and flat.p_value == 1.0 and flat.abs_ci == (0.0, 0.0)
    # scipy's Welch test gives p = 0 for two different constants; so do we
    apart = stats.welch_difference([0.0, 0.0], [1.0, 1.0])
    assert apart.p_value == 0.0 and apart.rel_diff != apart.rel_diff  # relative to a zero control: NaN
    no_plays = stats.ratio_difference([0, 0], [0, 0], [1, 0], [2, 1])
    assert math.isnan(no_plays.abs_diff) and math.isnan(no_plays.p_value)
    assert math.isnan(stats.ratio_estimate([1], [2]).var)


# ---------------------------------------------------------------------------------------------------------- SRM


def test_srm_hand_example_50_50() -> None:
    # expected 5125 each: chi2 = 2 * 125² / 5125 = 6.0976, p = P(chi2_1 > 6.0976) = 0.01354: not flagged at 0.001
    r = stats.sample_ratio_mismatch([5000, 5250], [0.5, 0.5])
    assert r.chi2 == pytest.approx(2 * 125**2 / 5125)
    assert r.p_value == pytest.approx(0.013537, abs=1e-6)
    assert r.p_value == pytest.approx(sps.chisquare([5000, 5250]).pvalue)
    assert r.expected == (5125.0, 5125.0) and not r.flagged
    # 5000 vs 5500: chi2 = 2 * 250² / 5250 = 23.8, p ≈ 1.1e-6: flagged
    r = stats.sample_ratio_mismatch([5000, 5500], [1, 1])
    assert r.chi2 == pytest.approx(2 * 250**2 / 5250) and r.flagged


def test_srm_uneven_weights_match_scipy() -> None:
    observed, weights = [1030, 2950, 6020], [0.1, 0.3, 0.6]
    r = stats.sample_ratio_mismatch(observed, weights)
    ref = sps.chisquare(observed, [1000, 3000, 6000])
    assert (r.chi2, r.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert not r.flagged


def test_srm_edge_cases() -> None:
    assert not stats.sample_ratio_mismatch([0, 0], [0.5, 0.5]).flagged
    assert stats.sample_ratio_mismatch([0, 0], [0.5, 0.5]).p_value == 1.0
    zero_weight = stats.sample_ratio_mismatch([100, 100, 3], [0.5, 0.5, 0.0])
    assert zero_weight.flagged and zero_weight.p_value == 0.0
    assert not stats.sample_ratio_mismatch([100, 98, 0], [0.5, 0.5, 0.0]).flagged
    assert not stats.sample_ratio_mismatch([100], [1.0]).flagged
    assert not stats.sample_ratio_mismatch([3, 4], [0, 0]).flagged


# -------------------------------------------------------------------------------------------------------- mSPRT


def test_msprt_matches_johari_pekelis_walsh_pair_form() -> None:
    """Their two-sample statistic over n pairs with pair variance V: Λ = √(V/(V+nτ²)) exp(n²τ²Δ²/(2V(V+nτ²)))."""
    n, v_pair, tau2, delta = 400, 2 * 1.3**2, 0.05, 0.21
    expected = 0.5 * math.log(v_pair / (v_pair + n * tau2)) + n * n * tau2 * delta**2 / (
        2 * v_pair * (v_pair + n * tau2))
    assert float(stats.msprt_log_likelihood_ratio(delta, v_pair / n, tau2)) == pytest.approx(expected, rel=1e-12)
    assert float(stats.always_valid_p(delta, v_pair / n, tau2)) == pytest.approx(min(1.0, math.exp(-expected)))


def test_always_valid_p_is_never_below_the_fixed_horizon_p() -> None:
    z = np.linspace(0, 12, 601)[:, None]
    ratio = np.logspace(-4, 4, 41)[None, :]  # τ² / Var(Δ̂)
    p_always = np.minimum(1.0, np.exp(-stats.msprt_log_likelihood_ratio(z, 1.0, ratio)))
    assert (p_always >= 2 * sps.norm.sf(z) - 1e-15).all()
    rng = np.random.default_rng(7)
    for effect in (0.0, 0.05, 0.2):
        c, t = rng.normal(0, 1, 3000), rng.normal(effect, 1, 3000)
        d = stats.welch_difference(c, t)
        tau2 = stats.mixing_variance(c.std(ddof=1), t.std(ddof=1))
        assert stats.msprt_p(d, tau2) >= d.p_value


def _sequential_p(rng: np.random.Generator, seeds: int, looks: int, per_look: int,
                  effect: float) -> NDArray[np.float64]:
    """Always-valid p after each look, for ``seeds`` simulated experiments (plug-in variances), vectorised."""
    c = rng.normal(0.0, 1.0, (seeds, looks * per_look))
    t = rng.normal(effect, 1.0, (seeds, looks * per_look))
    n = np.arange(1, looks + 1) * per_look
    sums = [np.cumsum(a, axis=1)[:, n - 1] for a in (c, t)]
    squares = [np.cumsum(a * a, axis=1)[:, n - 1] for a in (c, t)]
    var_mean = [(q - s * s / n) / (n - 1) / n for s, q in zip(sums, squares, strict=True)]
    diff = (sums[1] - sums[0]) / n
    tau2 = stats.mixing_variance(np.sqrt(var_mean[0] * n), np.sqrt(var_mean[1] * n))
    return stats.always_valid_p(diff, var_mean[0] + var_mean[1], tau2)


def test_msprt_keeps_aa_false_positives_under_alpha_over_20_looks() -> None:
    p = _sequential_p(np.random.default_rng(8), seeds=200, looks=20, per_look=100, effect=0.0)
    assert (np.diff(p, axis=1) <= 0).all()  # a running minimum
    never_significant = (p.min(axis=1) > 0.05).mean()
    assert never_significant >= 0.95
    # The same data looked at 20 times with the fixed-horizon test crosses 0.05 far more often (why mSPRT exists).
    rng = np.random.default_rng(8)
    c, t = rng.normal(0, 1, (200, 2000)), rng.normal(0, 1, (200, 2000))
    peeking = []
    for k in range(100, 2001, 100):
        peeking.append(sps.ttest_ind(t[:, :k], c[:, :k], axis=1, equal_var=False).pvalue)
    assert (np.min(peeking, axis=0) > 0.05).mean() < never_significant


def test_msprt_flags_a_real_effect() -> None:
    p = _sequential_p(np.random.default_rng(9), seeds=200, looks=20, per_look=100, effect=0.3)
    assert (p[:, -1] < 0.05).mean() >= 0.95


def test_always_valid_p_degenerate_looks() -> None:
    assert float(stats.always_valid_p(0.0, 0.0, 1.0)) == 1.0
    assert float(stats.always_valid_p(0.5, 0.0, 1.0)) == 0.0
    seq = stats.always_valid_p([np.nan, 0.1, np.nan, 0.0], [np.nan, 0.01, np.nan, 0.01], 0.01)
    assert math.isnan(seq[0]) and seq[2] == seq[1] and seq[3] <= seq[1]


# -------------------------------------------------------------------------------------------------------- CUPED


def _cuped_data(rng: np.random.Generator, n: int, effect: float) -> tuple[NDArray[np.float64], ...]:
    activity = rng.gamma(2.0, 1.0, 2 * n)
    x = rng.poisson(3 * activity).astype(np.float64)
    y = rng.poisson(activity).astype(np.float64)
    y[n:] += rng.poisson(effect, n)
    return y[:n], x[:n], y[n:], x[n:]


def test_cuped_theta_and_adjusted_difference_equal_ols() -> None:
    rng = np.random.default_rng(10)
    yc, xc, yt, xt = _cuped_data(rng, 1500, 0.2)
    result = stats.cuped_difference(yc, xc, yt, xt)
    y = np.concatenate([yc, yt])
    design = np.column_stack([np.ones_like(y), np.r_[np.zeros_like(yc), np.ones_like(yt)], np.r_[xc, xt]])
    (_, treatment, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    assert result.theta == pytest.approx(slope, rel=1e-9)
    assert result.adjusted.abs_diff == pytest.approx(treatment, rel=1e-9)
    # the variance reduction is the squared within-variant correlation of Y and X (Deng et al. 2013)
    rho = np.corrcoef(np.r_[yc - yc.mean(), yt - yt.mean()], np.r_[xc - xc.mean(), xt - xt.mean()])[0, 1]
    assert result.variance_reduction == pytest.approx(rho**2, abs=0.02)
    assert result.variance_reduction > 0.3
    assert result.unadjusted.abs_diff == pytest.approx(yt.mean() - yc.mean())
    lo, hi = result.adjusted.abs_ci
    assert lo < 0.2 < hi and hi - lo < result.unadjusted.abs_ci[1] - result.unadjusted.abs_ci[0]


def test_cuped_without_covariate_variance_is_the_plain_difference() -> None:
    rng = np.random.default_rng(11)
    yc, _, yt, _ = _cuped_data(rng, 300, 0.1)
    result = stats.cuped_difference(yc, np.zeros_like(yc), yt, np.zeros_like(yt))
    assert result.theta == 0.0 and result.variance_reduction == pytest.approx(0.0)
    assert result.adjusted.abs_diff == pytest.approx(result.unadjusted.abs_diff)
    empty = stats.cuped_difference([], [], yt, np.ones_like(yt))
    assert math.isnan(empty.adjusted.abs_diff)


# -------------------------------------------------------------------------------------------------- interleaving


def _interleaved_credit(rng: np.random.Generator, n: int, p_engage: float, p_win_t: float,
                        p_win_c: float) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    engaged = rng.random(n) < p_engage
    outcome = rng.choice(3, n, p=[p_win_t, p_win_c, 1 - p_win_t - p_win_c])  # 0: T wins, 1: C wins, 2: tie
    base = rng.poisson(1.0, n)
    extra = 1 + rng.poisson(0.5, n)
    t = np.where(outcome == 0, base + extra, np.where(outcome == 2, base + 1, base))
    c = np.where(outcome == 1, base + extra, np.where(outcome == 2, base + 1, base))
    return np.where(engaged, c, 0), np.where(engaged, t, 0)


def test_interleaving_hand_example() -> None:
    credit_c = [1, 0, 2, 0, 1, 0]
    credit_t = [0, 1, 2, 0, 3, 2]
    r = stats.interleaving_preference(credit_c, credit_t)
    # users with credit: 5; T wins 3, C wins 1, ties 1 -> (3 + 0.5) / 5 - 0.5 = 0.2
    assert (r.users, r.users_with_credit, r.wins_treatment, r.wins_control, r.ties) == (6, 5, 3, 1, 1)
    assert r.preference == pytest.approx(0.2)
    assert r.p_value == pytest.approx(sps.binomtest(3, 4, 0.5).pvalue)
    assert r.p_value == pytest.approx(0.625)


def test_interleaving_recovers_a_known_preference() -> None:
    rng = np.random.default_rng(12)
    c, t = _interleaved_credit(rng, 3000, p_engage=0.6, p_win_t=0.5, p_win_c=0.3)
    r = stats.interleaving_preference(c, t)
    true_preference = 0.5 + 0.2 / 2 - 0.5  # wins 0.5, ties 0.2 among users with credit
    assert r.ci[0] < true_preference < r.ci[1]
    assert r.p_value < 1e-6 and r.ci[0] > 0
    # No preference: the CI covers 0 and the sign test does not reject.
    c, t = _interleaved_credit(rng, 3000, p_engage=0.6, p_win_t=0.4, p_win_c=0.4)
    r = stats.interleaving_preference(c, t)
    assert r.ci[0] < 0 < r.ci[1] and r.p_value > 0.05


def test_interleaving_ci_matches_a_bootstrap_over_users() -> None:
    rng = np.random.default_rng(13)
    c, t = _interleaved_credit(rng, 1500, p_engage=0.5, p_win_t=0.45, p_win_c=0.35)
    r = stats.interleaving_preference(c, t)
    has = (c + t) > 0
    score = np.where(t > c, 1.0, np.where(t < c, 0.0, 0.5))[has]
    (boot,) = _bootstrap(rng, 3000, score)
    lo, hi = np.percentile(boot.mean(1) - 0.5, [2.5, 97.5])
    assert r.ci == pytest.approx((lo, hi), abs=0.004)


# -------------------------------------------------------------------------------------------------- sample sizes


def test_ab_users_needed_textbook_value_and_statsmodels() -> None:
    assert stats.ab_users_needed(0.2, 1.0) == 394  # Cohen (1988): d = 0.2, alpha .05, power .8 -> 393.4 per group
    direct = TTestIndPower().solve_power(effect_size=0.05 / 0.8, alpha=0.01, power=0.9)
    assert stats.ab_users_needed(-0.05, 0.8, alpha=0.01, power=0.9) == math.ceil(direct)
    assert stats.ab_users_needed(0.0, 1.0) is None and stats.ab_users_needed(0.1, 0.0) is None
    assert stats.ab_users_needed(30.0, 1.0) == 2  # the root finder gives up there; two users per arm do


def test_interleaving_users_needed_one_sample_proportion() -> None:
    # p = 0.6 vs 0.5: h = 2 asin √0.6 − 2 asin √0.5 = 0.2014; n = ((1.96 + 0.8416) / h)² = 193.6 -> 194
    h = 2 * math.asin(math.sqrt(0.6)) - 2 * math.asin(math.sqrt(0.5))
    textbook = ((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / h) ** 2
    assert stats.interleaving_users_needed(0.1) == math.ceil(textbook) == 194
    direct = NormalIndPower().solve_power(effect_size=abs(proportion_effectsize(0.45, 0.5)), alpha=0.05,
                                          power=0.8, ratio=0)
    assert stats.interleaving_users_needed(-0.05) == math.ceil(direct)
    assert stats.interleaving_users_needed(0.0) is None and stats.interleaving_users_needed(math.nan) is None


# ------------------------------------------------------------------------------------------------------ latency


def test_histogram_p99_hand_example() -> None:
    counts = np.zeros(len(LATENCY_EDGES_MS), np.int64)
    counts[LATENCY_EDGES_MS.index(10)] = 98
    counts[LATENCY_EDGES_MS.index(50)] = 1
    counts[LATENCY_EDGES_MS.index(1000)] = 1
    assert stats.histogram_quantile(counts) == 50.0  # the 99th of 100 answers is in the ≤50 ms bucket
    counts[LATENCY_EDGES_MS.index(10)] = 97
    counts[-1] = 2
    assert stats.histogram_quantile(counts) == math.inf  # the 99th is in the overflow bucket
    assert math.isnan(stats.histogram_quantile(np.zeros(len(LATENCY_EDGES_MS))))


def test_histogram_p99_matches_numpy_quantile_on_raw_samples() -> None:
    rng = np.random.default_rng(14)
    edges = np.asarray(LATENCY_EDGES_MS)
    for _ in range(20):
        samples = rng.lognormal(rng.uniform(1, 4), rng.uniform(0.3, 1.5), int(rng.integers(50, 5000)))
        bucket = np.searchsorted(edges, samples, side="left")  # bucket i holds (edge[i-1], edge[i]]
        counts = np.bincount(bucket, minlength=edges.size)
        q = np.quantile(samples, 0.99, method="inverted_cdf")
        assert stats.histogram_quantile(counts) == edges[np.searchsorted(edges, q, side="left")]
