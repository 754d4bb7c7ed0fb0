"""An experiment's report: per-variant metrics and guardrails, differences against the control with intervals,
SRM, CUPED, always-valid p-values, the interleaving preference and the sample sizes; as a JSON-ready dict, a
plain-text table and PNG plots.

The formulas live in :mod:`models.experiments.stats`; this module picks the metrics and shapes the output. Every
number in the dict is a plain int/float (never NaN or inf: an undefined value is None), so ``orjson.dumps`` takes
it as is and a reader never meets NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.experiments import stats
from models.experiments.data import LATENCY_EDGES_MS, ExperimentData, VariantData

# User-level means (difference in means, Welch) and ratio metrics over users (delta method): name -> field(s).
MEAN_METRICS: dict[str, str] = {
    "plays_per_user": "plays",
    "clicks_per_user": "clicks",
    "engagements_per_user": "engagements",
}
RATIO_METRICS: dict[str, tuple[str, str]] = {
    "click_through": ("clicks", "exposures"),
    "completion_rate": ("completes", "plays"),
    "hit_rate": ("hits", "engagements"),
}
CUPED_METRIC, CUPED_COVARIATE = "plays_per_user", "pre_engagements"
POWER = 0.8  # of the sample sizes


def build_report(data: ExperimentData, *, alpha: float = 0.05,
                 msprt_effect_sd: float = stats.MSPRT_EFFECT_SD) -> dict[str, Any]:
    """The report of ``data``: ``variants`` (a list, in the data's order: each variant's name, metrics and
    guardrails), ``srm``, and for an A/B test ``comparisons`` (per non-control variant against the control), for an
    interleaving ``interleaving`` (per non-control team against the control's team).

    An interleaving shows every user both teams, so there is no split for an SRM check (``srm`` is None) and no
    independent groups to compare (``comparisons`` is empty). ``msprt_effect_sd`` sets the mSPRT mixture
    (:func:`stats.mixing_variance`).
    """
    control = _control(data)
    report: dict[str, Any] = {
        "experiment": data.name,
        "kind": data.kind,
        "control": control.name if control else None,
        "alpha": alpha,
        "power": POWER,
        "catalogue_size": data.catalogue_size,
        "variants": [_variant_summary(v, data.catalogue_size) for v in data.variants],
        "srm": None,
        "comparisons": {},
        "interleaving": None,
    }
    if data.kind == "interleave":
        if control is not None:
            report["interleaving"] = {v.name: _interleaving(control, v, alpha) for v in data.variants
                                      if v is not control}
    else:
        report["srm"] = _srm(data)
        if control is not None:
            report["comparisons"] = {v.name: _comparison(control, v, alpha, msprt_effect_sd) for v in data.variants
                                     if v is not control}
    return _json_ready(report)


def _control(data: ExperimentData) -> VariantData | None:
    if not data.variants:
        return None
    if data.control:
        return next((v for v in data.variants if v.name == data.control), data.variants[0])
    return data.variants[0]


def _per_user(v: VariantData, field: str) -> NDArray[np.float64]:
    """A per-user array as floats; an empty one on a variant with users is a counter never written: zeros."""
    a = np.asarray(getattr(v, field), dtype=np.float64).reshape(-1)
    if a.size == 0:
        return np.zeros(v.n_users)
    if a.size != v.n_users:
        raise ValueError(f"variant {v.name!r}: {field} has {a.size} entries for {v.n_users} users")
    return a


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _variant_summary(v: VariantData, catalogue_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name, "users": v.n_users, "exposures": int(_per_user(v, "exposures").sum())}
    for name, field in MEAN_METRICS.items():
        out[name] = stats.mean_estimate(_per_user(v, field)).value
    for name, (num, den) in RATIO_METRICS.items():
        out[name] = stats.ratio_estimate(_per_user(v, num), _per_user(v, den)).value
    shown = np.asarray(v.shown_by_position, dtype=np.float64)
    clicked = np.asarray(v.clicks_by_position, dtype=np.float64)
    out["ctr_by_position"] = [_share(float(c), float(s)) for c, s in zip(clicked, shown, strict=False)]
    out["titles_shown"] = int(v.titles_shown)
    out["coverage"] = _share(v.titles_shown, catalogue_size)
    latency = np.asarray(v.latency_counts, dtype=np.int64)
    p99 = stats.histogram_quantile(latency) if latency.size == len(LATENCY_EDGES_MS) else math.nan
    out["guardrails"] = {
        "answers_timed": int(latency.sum()),
        "latency_p99_ms": p99,
        # the overflow bucket has no upper edge: say the p99 is beyond the last finite one instead
        "latency_p99_beyond_ms": LATENCY_EDGES_MS[-2] if p99 == math.inf else None,
        "degraded": int(v.degraded),
        "degraded_share": _share(v.degraded, out["exposures"]),
    }
    return out


def _srm(data: ExperimentData) -> dict[str, Any]:
    users = {v.name: v.n_users for v in data.variants}
    # A configured variant missing from the data got no users: that is the mismatch to catch, not a variant to skip.
    names = [*users, *(n for n in data.weights if n not in users)]
    result = stats.sample_ratio_mismatch([users.get(n, 0) for n in names],
                                         [float(data.weights.get(n, 0.0)) for n in names])
    return {
        "chi2": result.chi2,
        "p_value": result.p_value,
        "flag": result.flagged,
        "threshold": stats.SRM_THRESHOLD,
        "observed": dict(zip(names, result.observed, strict=True)),
        "expected": dict(zip(names, result.expected, strict=True)),
    }


def _difference(d: stats.Difference, alpha: float) -> dict[str, Any]:
    return {
        "control": d.control,
        "treatment": d.treatment,
        "abs_diff": d.abs_diff,
        "abs_ci": list(d.abs_ci),
        "rel_diff": d.rel_diff,
        "rel_ci": list(d.rel_ci),
        "p_value": d.p_value,
        "significant": bool(d.p_value < alpha),  # False for NaN
    }


@dataclass(frozen=True)
class _Metric:
    difference: stats.Difference
    sd_control: float
    sd_treatment: float


def _metric(c: VariantData, t: VariantData, name: str, alpha: float) -> _Metric:
    if name in MEAN_METRICS:
        field = MEAN_METRICS[name]
        ec, et = stats.mean_estimate(_per_user(c, field)), stats.mean_estimate(_per_user(t, field))
        diff = stats.compare(ec, et, alpha=alpha, df=stats.welch_df(ec, et))
    else:
        num, den = RATIO_METRICS[name]
        ec = stats.ratio_estimate(_per_user(c, num), _per_user(c, den))
        et = stats.ratio_estimate(_per_user(t, num), _per_user(t, den))
        diff = stats.compare(ec, et, alpha=alpha)
    return _Metric(diff, ec.sd, et.sd)


def _comparison(c: VariantData, t: VariantData, alpha: float, effect_sd: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name in (*MEAN_METRICS, *RATIO_METRICS):
        m = _metric(c, t, name, alpha)
        tau2 = stats.mixing_variance(m.sd_control, m.sd_treatment, effect_sd=effect_sd)
        pooled_sd = math.sqrt((m.sd_control**2 + m.sd_treatment**2) / 2)
        metrics[name] = {
            **_difference(m.difference, alpha),
            "method": "welch" if name in MEAN_METRICS else "delta",
            "always_valid_p": stats.msprt_p(m.difference, tau2),
            "users_needed_per_arm": stats.ab_users_needed(m.difference.abs_diff, pooled_sd, alpha=alpha, power=POWER),
        }
    cuped = stats.cuped_difference(_per_user(c, MEAN_METRICS[CUPED_METRIC]), _per_user(c, CUPED_COVARIATE),
                                   _per_user(t, MEAN_METRICS[CUPED_METRIC]), _per_user(t, CUPED_COVARIATE),
                                   alpha=alpha)
    adj = cuped.adjusted
    # The mixture is set on the unadjusted metric's scale, so the adjusted and plain always-valid p are comparable.
    m = _metric(c, t, CUPED_METRIC, alpha)
    tau2 = stats.mixing_variance(m.sd_control, m.sd_treatment, effect_sd=effect_sd)
    return {
        "users": {"control": c.n_users, "treatment": t.n_users},
        "metrics": metrics,
        "cuped": {
            "metric": CUPED_METRIC,
            "covariate": CUPED_COVARIATE,
            "theta": cuped.theta,
            **_difference(adj, alpha),
            "always_valid_p": stats.msprt_p(adj, tau2),
            "variance_reduction": cuped.variance_reduction,
        },
    }


def _interleaving(c: VariantData, t: VariantData, alpha: float) -> dict[str, Any]:
    credit_c, credit_t = _per_user(c, "credit"), _per_user(t, "credit")
    if credit_c.size != credit_t.size:
        raise ValueError(f"interleaving: team {c.name!r} has {credit_c.size} users, team {t.name!r} {credit_t.size}")
    r = stats.interleaving_preference(credit_c, credit_t, alpha=alpha)
    needed = stats.interleaving_users_needed(r.preference, alpha=alpha, power=POWER)
    credit_share = r.users_with_credit / r.users if r.users else 0.0
    # An A/B of the two rankers on the same outcome: mean credit per user (engaged titles the ranker contributed)
    # compared as two independent groups. A proxy (under interleaving each ranker earns credit for about half the
    # list), so that the report can say how many users each design needs for this difference; a real A/B of the
    # pair gives its own users_needed_per_arm.
    ec, et = stats.mean_estimate(credit_c), stats.mean_estimate(credit_t)
    ab_per_arm = stats.ab_users_needed(et.value - ec.value, math.sqrt((ec.sd**2 + et.sd**2) / 2), alpha=alpha,
                                       power=POWER)
    return {
        "users": r.users,
        "users_with_credit": r.users_with_credit,
        "wins_control": r.wins_control,
        "wins_treatment": r.wins_treatment,
        "ties": r.ties,
        "preference": r.preference,
        "ci": list(r.ci),
        "p_value": r.p_value,
        "significant": bool(r.p_value < alpha),
        "sample_size": {
            "interleaving_users_with_credit_needed": needed,
            # users exposed, at the share of them that engage with either team's titles
            "interleaving_users_needed": math.ceil(needed / credit_share) if needed and credit_share > 0 else None,
            "ab_metric": "credit_per_user",
            "ab_users_needed_per_arm": ab_per_arm,
            "ab_users_needed": 2 * ab_per_arm if ab_per_arm else None,
        },
    }


def _json_ready(value: Any) -> Any:
    """Plain Python types only; NaN and ±inf become None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


# ---------------------------------------------------------------------------------------------------- text


def _fmt(x: Any, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:+.2f}%"


def _signed(x: Any) -> str:
    return _fmt(x, "+.4g")


def _ci(ci: list[Any], fmt: Any) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def render_text(report: dict[str, Any]) -> str:
    """The report as plain-text tables (the CLI prints it)."""
    lines = [f"experiment {report['experiment']} ({report['kind']}), control {report['control']}, "
             f"alpha {report['alpha']}", ""]
    variants = {v["name"]: v for v in report["variants"]}
    header = (f"{'variant':<16}{'users':>8}{'exposures':>11}{'plays/user':>12}{'ctr':>9}{'completion':>12}"
              f"{'hit rate':>10}{'coverage':>10}{'p99 ms':>9}{'degraded':>16}")
    lines += [header, "-" * len(header)]
    for name, v in variants.items():
        g = v["guardrails"]
        p99 = f">{g['latency_p99_beyond_ms']:g}" if g["latency_p99_beyond_ms"] else _fmt(g["latency_p99_ms"], "g")
        degraded = f"{g['degraded']} ({_fmt(g['degraded_share'], '.2%')})"
        lines.append(f"{name:<16}{v['users']:>8}{v['exposures']:>11}{_fmt(v['plays_per_user'], '.4f'):>12}"
                     f"{_fmt(v['click_through'], '.4f'):>9}{_fmt(v['completion_rate'], '.4f'):>12}"
                     f"{_fmt(v['hit_rate'], '.4f'):>10}{_fmt(v['coverage'], '.3f'):>10}{p99:>9}{degraded:>16}")
    lines.append("")
    lines.append("click-through by position (0..):")
    width = max(map(len, variants), default=0) + 2
    for name, v in variants.items():
        lines.append(f"  {name:<{width}}" + " ".join(_fmt(c, ".3f") for c in v["ctr_by_position"]))
    srm = report["srm"]
    if srm is not None:
        verdict = "MISMATCH: do not trust the differences" if srm["flag"] else "ok"
        counts = ", ".join(f"{n} {srm['observed'][n]} (expected {_fmt(srm['expected'][n], '.1f')})"
                           for n in srm["observed"])
        lines += ["", f"SRM: chi2 {_fmt(srm['chi2'])}, p {_fmt(srm['p_value'])} -> {verdict}; {counts}"]
    for name, comp in report["comparisons"].items():
        lines += ["", f"{name} vs {report['control']} ({comp['users']['treatment']} vs {comp['users']['control']} "
                      "users)"]
        head = (f"  {'metric':<22}{'control':>10}{'treatment':>11}  {'abs diff [95% CI]':<34}"
                f"{'rel diff [95% CI]':<32}{'p':>9}{'always-valid p':>16}{'users/arm':>11}")
        lines += [head, "  " + "-" * (len(head) - 2)]
        rows = list(comp["metrics"].items())
        rows.append((f"{comp['cuped']['metric']} (CUPED)", {**comp["cuped"], "users_needed_per_arm": None}))
        for metric, m in rows:
            abs_txt = f"{_signed(m['abs_diff'])} {_ci(m['abs_ci'], _signed)}"
            rel_txt = f"{_pct(m['rel_diff'])} {_ci(m['rel_ci'], _pct)}"
            star = "*" if m["significant"] else " "
            lines.append(f"  {metric:<22}{_fmt(m['control'], '.4f'):>10}{_fmt(m['treatment'], '.4f'):>11}  "
                         f"{abs_txt:<34}{rel_txt:<32}{_fmt(m['p_value'], '.3g'):>8}{star}"
                         f"{_fmt(m['always_valid_p'], '.3g'):>16}{_fmt(m['users_needed_per_arm'], 'd'):>11}")
        cu = comp["cuped"]
        lines.append(f"  CUPED on {cu['covariate']}: theta {_fmt(cu['theta'], '.4f')}, variance reduction "
                     f"{_fmt(cu['variance_reduction'], '.1%')}")
    for name, il in (report["interleaving"] or {}).items():
        ss = il["sample_size"]
        star = " (significant)" if il["significant"] else ""
        lines += ["", f"interleaving {name} vs {report['control']}: {il['users']} users, {il['users_with_credit']} "
                      f"with credit; wins {il['wins_treatment']} vs {il['wins_control']}, ties {il['ties']}",
                  f"  preference {_fmt(il['preference'], '+.4f')} "
                  f"{_ci(il['ci'], lambda x: _fmt(x, '+.4f'))}, sign test p {_fmt(il['p_value'], '.3g')}{star}",
                  f"  users needed (alpha {report['alpha']}, power {report['power']}): interleaving "
                  f"{_fmt(ss['interleaving_users_needed'], 'd')}, A/B on {ss['ab_metric']} "
                  f"{_fmt(ss['ab_users_needed'], 'd')} ({_fmt(ss['ab_users_needed_per_arm'], 'd')} per arm)"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- plots


def write_plots(report: dict[str, Any], data: ExperimentData, out_dir: Path) -> list[Path]:
    """``differences.png`` (relative differences against the control with their CIs, or the interleaving
    preference), ``ctr_by_position.png`` (click-through per position, one line per variant) and ``latency.png``
    (the share of answers per latency bucket, one series per variant, p99 in the legend). Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    title = f"{report['experiment']} ({report['kind']})"

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels: list[str] = []
    points: list[tuple[float, float, float]] = []  # value, low, high
    for variant, comp in report["comparisons"].items():
        for metric, m in [*comp["metrics"].items(), (f"{comp['cuped']['metric']} CUPED", comp["cuped"])]:
            if m["rel_diff"] is not None and None not in m["rel_ci"]:
                labels.append(f"{variant}: {metric}")
                points.append((100 * m["rel_diff"], 100 * m["rel_ci"][0], 100 * m["rel_ci"][1]))
    for team, il in (report["interleaving"] or {}).items():
        if il["preference"] is not None and None not in il["ci"]:
            labels.append(f"{team}: preference")
            points.append((il["preference"], il["ci"][0], il["ci"][1]))
    if points:
        values = np.array(points)
        ys = np.arange(len(points))
        ax.errorbar(values[:, 0], ys, xerr=[values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]], fmt="o",
                    capsize=3)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.invert_yaxis()  # first metric on top, as in the text table
        ax.axvline(0, color="grey", linewidth=0.8)
        unit = "preference Δ" if report["interleaving"] else "relative difference, %"
        ax.set_xlabel(f"{unit} vs {report['control']} ({round(100 * (1 - report['alpha']))}% CI)")
    else:
        ax.text(0.5, 0.5, "no comparison with data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"differences: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "differences.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in report["variants"]:
        ctr = [np.nan if c is None else c for c in v["ctr_by_position"]]
        ax.plot(range(len(ctr)), ctr, marker="o", markersize=3, label=v["name"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("position")
    ax.set_ylabel("click-through")
    ax.set_title(f"click-through by position: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    if report["variants"]:
        ax.legend()
    written.append(_save(fig, out_dir / "ctr_by_position.png", plt))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    edges = [f"≤{e:g}" if math.isfinite(e) else f">{LATENCY_EDGES_MS[-2]:g}" for e in LATENCY_EDGES_MS]
    width = 0.8 / max(1, len(data.variants))
    summaries = {v["name"]: v for v in report["variants"]}
    for i, v in enumerate(data.variants):
        counts = np.asarray(v.latency_counts, dtype=np.float64)
        share = counts / counts.sum() if counts.sum() > 0 else counts
        g = summaries.get(v.name, {}).get("guardrails", {})
        p99 = (f">{g['latency_p99_beyond_ms']:g}" if g.get("latency_p99_beyond_ms")
               else _fmt(g.get("latency_p99_ms"), "g"))
        ax.bar(np.arange(len(share)) + i * width, share, width=width, label=f"{v.name} (p99 {p99} ms)")
    ax.set_xticks(np.arange(len(edges)) + 0.4 - width / 2, edges, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("server time bucket, ms")
    ax.set_ylabel("share of answers (log)")
    if any(np.asarray(v.latency_counts).sum() > 0 for v in data.variants):
        ax.set_yscale("log")  # the p99 lives in the tail, invisible on a linear scale
    ax.set_title(f"latency: {title}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if data.variants:
        ax.legend()
    written.append(_save(fig, out_dir / "latency.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
