"""The statistics of an experiment's report: differences with intervals, SRM, always-valid p, CUPED, interleaving.

Pure numpy/scipy over per-user arrays (one entry per exposed user, as in :mod:`models.experiments.data`). A value
that is undefined for the data (no users, one user, zero variance in a denominator) comes back as NaN (or None for
the sample sizes); the report turns NaN into JSON null. Each formula names the reference it follows.

References:

- Welch, B. L. (1947). The generalization of "Student's" problem when several different population variances are
  involved. Biometrika 34.
- Deng, Knoblich, Lu (2018). Applying the Delta Method in Metric Analytics: A Practical Guide with Novel Ideas.
  KDD 2018 (arXiv:1803.06336): ratio metrics and relative differences.
- Deng, Xu, Kohavi, Walker (2013). Improving the Sensitivity of Online Controlled Experiments by Utilizing
  Pre-Experiment Data. WSDM 2013 (CUPED).
- Johari, Koomen, Pekelis, Walsh (2017). Peeking at A/B Tests. KDD 2017; Johari, Pekelis, Walsh (2022). Always
  Valid Inference: Continuous Monitoring of A/B Tests. Operations Research 70(3) (mSPRT, normal mixture).
- Chapelle, Joachims, Radlinski, Yue (2012). Large-scale validation and analysis of interleaved search
  evaluation. ACM TOIS 30(1) (team-draft credit, Δ_AB).
- Fabijan et al. (2019). Diagnosing Sample Ratio Mismatch in Online Controlled Experiments. KDD 2019 (SRM).
- Cohen (1988). Statistical Power Analysis for the Behavioral Sciences, 2nd ed. (d and h effect sizes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from models.experiments.data import LATENCY_EDGES_MS

NAN = float("nan")
SRM_THRESHOLD = 1e-3  # p below which the split is flagged (Fabijan et al. 2019 use 0.0005-0.001)
# Default prior standard deviation of the mSPRT's normal mixture, in per-user standard deviations of the metric:
# the type-I guarantee holds for any tau; tau only moves the power towards effects of about its size, and a tenth of
# a per-user sd (Cohen's d = 0.1) is the middle of the effects a ranking change is expected to make here.
MSPRT_EFFECT_SD = 0.1


@dataclass(frozen=True)
class Estimate:
    """One variant's estimate of a metric: its value, the variance of that estimate (the squared standard error)
    and the users it was computed over."""

    value: float
    var: float
    n: int

    @property
    def sd(self) -> float:
        """Per-user standard deviation (of the linearised metric for a ratio): what a power calculation needs."""
        return math.sqrt(self.var * self.n) if self.n > 0 and self.var >= 0 else NAN


@dataclass(frozen=True)
class Difference:
    """Treatment minus control, absolute and relative (treatment / control - 1), with two-sided CIs."""

    control: float
    treatment: float
    abs_diff: float
    abs_ci: tuple[float, float]
    rel_diff: float
    rel_ci: tuple[float, float]
    p_value: float
    se: float  # standard error of abs_diff
    df: float  # degrees of freedom of the t reference distribution (inf: normal)


def _floats(values: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _mean(a: NDArray[np.float64]) -> float:
    return float(a.mean()) if a.size else NAN


def _var(a: NDArray[np.float64]) -> float:
    """Sample variance (ddof=1); NaN under two values."""
    return float(a.var(ddof=1)) if a.size >= 2 else NAN


def mean_estimate(y: ArrayLike) -> Estimate:
    """The mean of a user-level metric and its variance s²/n."""
    a = _floats(y)
    return Estimate(_mean(a), _var(a) / a.size if a.size else NAN, int(a.size))


def ratio_estimate(numerator: ArrayLike, denominator: ArrayLike) -> Estimate:
    """A ratio metric R = Σx / Σy over users (e.g. completes / plays) and its delta-method variance.

    Users are the randomisation unit, so the (x_i, y_i) pairs are i.i.d. and R = x̄ / ȳ; Deng, Knoblich, Lu (2018):
    Var(R) ≈ (σ²_x − 2 R σ_xy + R² σ²_y) / (n μ_y²), i.e. the variance of the mean of the linearised per-user
    values (x_i − R y_i) / μ_y. NaN when Σy = 0.
    """
    x, y = _floats(numerator), _floats(denominator)
    if x.shape != y.shape:
        raise ValueError(f"ratio: numerator has {x.size} users, denominator {y.size}")
    n = int(x.size)
    mu_y = _mean(y)
    if n == 0 or mu_y == 0:
        return Estimate(NAN, NAN, n)
    ratio = _mean(x) / mu_y
    if n < 2:
        return Estimate(ratio, NAN, n)
    # The variance of the linearised values is the delta-method expression with the sample (co)variances (ddof=1).
    linear = (x - ratio * y) / mu_y
    return Estimate(ratio, float(linear.var(ddof=1)) / n, n)


def welch_df(control: Estimate, treatment: Estimate) -> float:
    """Welch–Satterthwaite degrees of freedom (Welch 1947) from each variant's variance of the mean."""
    vc, vt = control.var, treatment.var
    denom = (vc * vc / (control.n - 1) if control.n > 1 else NAN) + (vt * vt / (treatment.n - 1)
                                                                       if treatment.n > 1 else NAN)
    return (vc + vt) ** 2 / denom if denom > 0 else NAN


def compare(control: Estimate, treatment: Estimate, *, alpha: float = 0.05, df: float = math.inf) -> Difference:
    """Treatment minus control for independent variants: se = √(Var_c + Var_t); CI and two-sided p from a t with
    ``df`` degrees of freedom (Welch's test for means) or the normal (df = inf: delta-method ratios, CUPED).

    Relative difference r = T/C − 1 by the delta method (Deng, Knoblich, Lu 2018):
    Var(r) ≈ Var_t / C² + T² Var_c / C⁴, with a normal CI. Its p-value is the absolute difference's (same null).
    A zero standard error gives a point CI and p = 1 for no difference, 0 otherwise (what scipy's Welch test gives).
    """
    diff = treatment.value - control.value
    var = control.var + treatment.var
    se = math.sqrt(var) if var >= 0 else NAN
    t_df = df if df > 0 else NAN
    if se == 0:
        abs_ci, p = (diff, diff), (1.0 if diff == 0 else 0.0)
    else:
        q = float(sps.t.ppf(1 - alpha / 2, t_df))
        abs_ci = (diff - q * se, diff + q * se)
        p = float(2 * sps.t.sf(abs(diff) / se, t_df))
    c = control.value
    if c != 0 and math.isfinite(c):
        rel = treatment.value / c - 1
        rel_se = math.sqrt(treatment.var / c**2 + treatment.value**2 * control.var / c**4)
        z = float(sps.norm.ppf(1 - alpha / 2))
        rel_ci = (rel - z * rel_se, rel + z * rel_se)
    else:
        rel, rel_ci = NAN, (NAN, NAN)
    return Difference(control.value, treatment.value, diff, abs_ci, rel, rel_ci, p, se, df)


def welch_difference(y_control: ArrayLike, y_treatment: ArrayLike, *, alpha: float = 0.05) -> Difference:
    """Difference in means of a user-level metric, Welch's unequal-variance t (scipy's ``ttest_ind(equal_var=
    False)``)."""
    c, t = mean_estimate(y_control), mean_estimate(y_treatment)
    return compare(c, t, alpha=alpha, df=welch_df(c, t))


def ratio_difference(num_control: ArrayLike, den_control: ArrayLike, num_treatment: ArrayLike,
                     den_treatment: ArrayLike, *, alpha: float = 0.05) -> Difference:
    """Difference of a ratio metric between variants, delta-method variances, normal intervals."""
    return compare(ratio_estimate(num_control, den_control), ratio_estimate(num_treatment, den_treatment),
                   alpha=alpha)


@dataclass(frozen=True)
class SampleRatioMismatch:
    chi2: float
    p_value: float
    flagged: bool
    expected: tuple[float, ...]
    observed: tuple[int, ...]


def sample_ratio_mismatch(observed: Sequence[int], weights: Sequence[float], *,
                          threshold: float = SRM_THRESHOLD) -> SampleRatioMismatch:
    """Chi-square goodness of fit of users per variant against the configured weights (Fabijan et al. 2019),
    ``scipy.stats.chisquare``; flagged at p < ``threshold``.

    A variant with weight 0 that has users is a mismatch outright (chi² = inf); with fewer than two variants
    expected to get users, or no users, there is nothing to test (p = 1). Weights summing to 0: NaN, not flagged.
    """
    obs = np.asarray(observed, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if obs.shape != w.shape:
        raise ValueError(f"SRM: {obs.size} counts for {w.size} weights")
    counts = tuple(int(c) for c in obs)
    total, w_sum = float(obs.sum()), float(w.clip(min=0).sum())
    if w_sum <= 0:
        return SampleRatioMismatch(NAN, NAN, False, tuple(NAN for _ in counts), counts)
    expected = total * w.clip(min=0) / w_sum
    exp_tuple = tuple(float(e) for e in expected)
    zero = expected <= 0
    if total > 0 and bool((obs[zero] > 0).any()):
        return SampleRatioMismatch(math.inf, 0.0, True, exp_tuple, counts)
    keep = ~zero
    if total == 0 or int(keep.sum()) < 2:
        return SampleRatioMismatch(0.0, 1.0, False, exp_tuple, counts)
    chi2, p = sps.chisquare(obs[keep], expected[keep])
    return SampleRatioMismatch(float(chi2), float(p), bool(p < threshold), exp_tuple, counts)


def mixing_variance(sd_control: float, sd_treatment: float, *, effect_sd: float = MSPRT_EFFECT_SD) -> float:
    """Default τ² of the mSPRT mixture: (effect_sd × pooled per-user sd)², so the mixture's prior sd on the
    difference is ``effect_sd`` of a per-user standard deviation of the metric."""
    return effect_sd**2 * (sd_control**2 + sd_treatment**2) / 2


def msprt_log_likelihood_ratio(diff: ArrayLike, var: ArrayLike, tau2: ArrayLike) -> NDArray[np.float64]:
    """log Λ of the mSPRT with a N(0, τ²) mixture over the difference θ, for an estimate θ̂ ~ N(θ, v).

    Johari, Pekelis, Walsh (2022) give, for n pairs with pair variance V (two-sample, V = σ²_c + σ²_t),
    Λ_n = √(V / (V + n τ²)) · exp(n² τ² θ̂² / (2 V (V + n τ²))). Dividing through by n with v = V/n, the variance
    of θ̂: Λ = √(v / (v + τ²)) · exp(τ² θ̂² / (2 v (v + τ²))), which also covers unequal group sizes (v = s²_c/n_c
    + s²_t/n_t, plug-in). Elementwise over broadcast arrays.
    """
    d, v, t2 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (diff, var, tau2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))


def always_valid_p(diff: ArrayLike, var: ArrayLike, tau2: ArrayLike) -> NDArray[np.float64]:
    """Always-valid p-values (Johari, Pekelis, Walsh 2022): p_n = min(p_{n−1}, 1/Λ_n), p_0 = 1.

    The last axis is the sequence of looks in order (a scalar is one look). Vectorised over any leading axes
    (e.g. simulations). A look with zero variance gives 1 for no difference, 0 otherwise; a NaN look (no data
    yet) leaves the running minimum where it was (NaN before the first real look).
    """
    d, v, t2 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (diff, var, tau2)))
    log_lr = msprt_log_likelihood_ratio(d, v, t2)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.exp(-np.maximum(log_lr, 0.0))  # min(1, 1/Λ) without overflowing Λ
    p = np.where(v == 0, np.where(d == 0, 1.0, 0.0), np.where(t2 > 0, p, NAN))
    p = np.where(np.isfinite(v) & (v >= 0) & np.isfinite(d), p, NAN)
    if p.ndim == 0:
        return p
    # fmin skips NaN, so a look without data does not reset the minimum.
    return np.fmin.accumulate(p, axis=-1)


def msprt_p(difference: Difference, tau2: float) -> float:
    """The always-valid p of one look at a :class:`Difference`."""
    return float(always_valid_p(difference.abs_diff, difference.se**2, tau2))


@dataclass(frozen=True)
class Cuped:
    theta: float
    adjusted: Difference
    unadjusted: Difference
    variance_reduction: float  # 1 − Var(adjusted diff) / Var(unadjusted diff)


def cuped_difference(y_control: ArrayLike, x_control: ArrayLike, y_treatment: ArrayLike, x_treatment: ArrayLike,
                     *, alpha: float = 0.05) -> Cuped:
    """CUPED (Deng, Xu, Kohavi, Walker 2013): Ŷ_cv = Ȳ − θ (X̄ − E X) per variant with a pre-experiment covariate
    X, θ = cov(Y, X) / var(X) pooled over the variants.

    θ pools the within-variant (co)variances, i.e. it is the slope of X in the OLS fit Y ~ 1 + T + X, so the
    adjusted difference is exactly that fit's T coefficient (Frisch–Waugh; the treatment shift in Y does not leak
    into θ as it would with the plain covariance over both variants, a difference that vanishes with n). E X is
    the mean of X over both variants (it cancels in the difference). Var(Ŷ_cv) = var(Y − θX) / n, θ taken as
    known (as in the paper); Welch intervals. θ = 0 when X has no variance.
    """
    yc, xc, yt, xt = (_floats(a) for a in (y_control, x_control, y_treatment, x_treatment))
    if yc.shape != xc.shape or yt.shape != xt.shape:
        raise ValueError("CUPED: metric and covariate have different numbers of users")
    unadjusted = welch_difference(yc, yt, alpha=alpha)
    groups = [(y, x) for y, x in ((yc, xc), (yt, xt)) if y.size]
    sxx = sum(float(((x - x.mean()) ** 2).sum()) for _, x in groups)
    sxy = sum(float(((x - x.mean()) * (y - y.mean())).sum()) for y, x in groups)
    theta = sxy / sxx if sxx > 0 else 0.0
    x_all = _mean(np.concatenate([xc, xt]))

    def adjusted_mean(y: NDArray[np.float64], x: NDArray[np.float64]) -> Estimate:
        resid = y - theta * x
        return Estimate(_mean(y) - theta * (_mean(x) - x_all), _var(resid) / y.size if y.size else NAN, int(y.size))

    c, t = adjusted_mean(yc, xc), adjusted_mean(yt, xt)
    adjusted = compare(c, t, alpha=alpha, df=welch_df(c, t))
    base = unadjusted.se**2
    reduction = 1 - adjusted.se**2 / base if base > 0 else NAN
    return Cuped(theta, adjusted, unadjusted, reduction)


@dataclass(frozen=True)
class Interleaving:
    users: int
    users_with_credit: int
    wins_control: int
    wins_treatment: int
    ties: int
    preference: float  # Δ for the treatment: > 0 when users prefer its ranking
    ci: tuple[float, float]
    p_value: float


def interleaving_preference(credit_control: ArrayLike, credit_treatment: ArrayLike, *,
                            alpha: float = 0.05) -> Interleaving:
    """Team-draft interleaving preference per user (Chapelle et al. 2012, with users in place of queries).

    A user is a win for the team whose ranking contributed more of the titles they engaged with, a tie when the
    credits are equal and non-zero; users with no credit carry no preference and are left out.
    Δ = (wins_T + ties/2) / (wins_T + wins_C + ties) − 0.5: the mean over those users of s_i ∈ {1, ½, 0} minus ½,
    so its CI is the normal one of a mean (s.d. of s_i / √m; what a bootstrap over users approximates).
    The p-value is the sign test on wins (ties dropped): ``scipy.stats.binomtest(wins_T, wins_T + wins_C, ½)``.
    """
    c, t = _floats(credit_control), _floats(credit_treatment)
    if c.shape != t.shape:
        raise ValueError(f"interleaving: {c.size} users in one team, {t.size} in the other")
    has = (c + t) > 0
    score = np.where(t > c, 1.0, np.where(t < c, 0.0, 0.5))[has]
    wins_t, wins_c = int((score == 1.0).sum()), int((score == 0.0).sum())
    ties, m = int(score.size - wins_t - wins_c), int(score.size)
    pref = _mean(score) - 0.5
    se = math.sqrt(_var(score) / m) if m >= 2 else NAN
    z = float(sps.norm.ppf(1 - alpha / 2))
    ci = (pref - z * se, pref + z * se)
    decided = wins_t + wins_c
    p = float(sps.binomtest(wins_t, decided, 0.5).pvalue) if decided else 1.0
    return Interleaving(int(c.size), m, wins_c, wins_t, ties, pref, ci, p)


def ab_users_needed(diff: float, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Users per arm (equal allocation) for a two-sided Welch/t test to detect ``diff`` with per-user standard
    deviation ``sd``: statsmodels ``TTestIndPower`` at Cohen's d = |diff| / sd. None when there is no effect.
    """
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0 or sd <= 0:
        return None
    # statsmodels imports pandas (seconds): only the report's sample sizes need it.
    from statsmodels.stats.power import TTestIndPower
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    d = abs(diff) / sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        n = TTestIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0,
                                        alternative="two-sided")
    n = float(np.asarray(n).reshape(-1)[0])
    if not math.isfinite(n):
        # The root finder fails for huge effects, where two users per arm (the t test's minimum) already suffice.
        return 2 if d >= 1 else None
    return max(2, math.ceil(n))


def interleaving_users_needed(preference: float, *, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Users with a preference an interleaving needs to detect ``preference`` (Δ): a two-sided one-sample test of
    the share p = ½ + Δ against ½, at Cohen's h = 2 asin √p − 2 asin √½ (statsmodels ``proportion_effectsize``;
    ``NormalIndPower`` with ratio = 0 is the one-sample case). None when there is no preference.
    """
    if not math.isfinite(preference) or preference == 0 or abs(preference) > 0.5:
        return None
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    h = abs(float(proportion_effectsize(0.5 + preference, 0.5)))
    n = float(np.asarray(NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=0.0,
                                                      alternative="two-sided")).reshape(-1)[0])
    return max(1, math.ceil(n)) if math.isfinite(n) else None


def histogram_quantile(counts: ArrayLike, edges: Sequence[float] = LATENCY_EDGES_MS, q: float = 0.99) -> float:
    """The q-quantile read from a histogram of upper edges: the upper edge of the first bucket whose cumulative
    count reaches ⌈q · total⌉ (the smallest edge with at least q of the observations at or under it). inf when
    that is the overflow bucket; NaN without observations."""
    c = np.asarray(counts, dtype=np.int64).reshape(-1)
    if c.size != len(edges):
        raise ValueError(f"histogram: {c.size} counts for {len(edges)} edges")
    total = int(c.sum())
    if total <= 0:
        return NAN
    # round() first so that q·total landing a hair above an integer (0.99·300 = 297.00000000000006) is that integer.
    rank = max(1, math.ceil(round(q * total, 9)))
    return float(edges[int(np.searchsorted(np.cumsum(c), rank, side="left"))])
