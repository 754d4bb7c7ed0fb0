"""The experiment report (models/experiments/report.py) on synthetic ExperimentData with a known truth: effects
found and covered, SRM raised only when the split is off, interleaving, edge cases, JSON, text and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.experiments.data import LATENCY_EDGES_MS, POSITIONS, ExperimentData, VariantData
from models.experiments.report import build_report, render_text, write_plots

CATALOGUE = 1000


def _synthetic_variant(name: str, n: int, rng: np.random.Generator, *, play_lift: float = 1.0, hit_rate: float = 0.2,
             slow: bool = False) -> VariantData:
    """Users whose activity drives pre-period engagements and plays alike (what CUPED uses). Expected plays per
    user 2·play_lift; expected hit rate ``hit_rate``."""
    activity = rng.gamma(2.0, 1.0, n)
    exposures = 1 + rng.poisson(3.0, n)
    plays = rng.poisson(activity * play_lift)
    engagements = plays + rng.poisson(0.5, n)
    shown = np.full(POSITIONS, int(exposures.sum()), np.int64)
    latency_p = np.geomspace(1.0, 1e-4, len(LATENCY_EDGES_MS))
    if slow:
        latency_p = latency_p[::-1]
    answers = int(exposures.sum())
    return VariantData(
        name=name,
        users=[f"{name}-{i}" for i in range(n)],
        exposures=exposures,
        clicks=rng.binomial(exposures, 0.3),
        plays=plays,
        completes=rng.binomial(plays, 0.6),
        ratings=rng.poisson(0.2, n),
        hits=rng.binomial(engagements, hit_rate),
        engagements=engagements,
        pre_engagements=rng.poisson(3.0 * activity),
        shown_by_position=shown,
        clicks_by_position=rng.binomial(shown, 0.2 / (1 + np.arange(POSITIONS))),
        titles_shown=int(rng.integers(100, 600)),
        latency_counts=rng.multinomial(answers, latency_p / latency_p.sum()),
        degraded=answers // 100,
    )


def _ab(rng: np.random.Generator, n_control: int, n_treatment: int, **treatment: Any) -> ExperimentData:
    variants = [_synthetic_variant("control", n_control, rng),
                _synthetic_variant("treatment", n_treatment, rng, **treatment)]
    return ExperimentData(name="ranker-v2", kind="ab", variants=variants,
                          weights={"control": 0.5, "treatment": 0.5}, catalogue_size=CATALOGUE)


def _variant(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in report["variants"] if v["name"] == name)


def _plain(value: Any) -> None:
    """Only JSON's own types, and no NaN or inf anywhere."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            _plain(v)
    elif isinstance(value, list):
        for v in value:
            _plain(v)
    else:
        assert type(value) in (int, float, str, bool, type(None)), (value, type(value))
        if type(value) is float:
            assert math.isfinite(value)


def test_known_effect_is_found_and_covered() -> None:
    rng = np.random.default_rng(20)
    data = _ab(rng, 5000, 5000, play_lift=1.1, hit_rate=0.23)
    report = build_report(data)
    _plain(report)
    assert orjson.loads(orjson.dumps(report)) == report
    comp = report["comparisons"]["treatment"]
    plays = comp["metrics"]["plays_per_user"]
    lo, hi = plays["abs_ci"]
    assert lo < 0.2 < hi and plays["significant"] and plays["p_value"] < 1e-4  # truth: 2.2 − 2.0
    assert plays["rel_ci"][0] < 0.1 < plays["rel_ci"][1]
    assert plays["always_valid_p"] >= plays["p_value"] and plays["always_valid_p"] < 0.05
    assert plays["users_needed_per_arm"] < 5000  # found with 5000 per arm: the power calculation agrees
    hits = comp["metrics"]["hit_rate"]
    assert hits["method"] == "delta" and hits["abs_ci"][0] < 0.03 < hits["abs_ci"][1] and hits["significant"]
    # no effect on completion (0.6 in both) or click-through (0.3): the CIs cover 0
    for name in ("completion_rate", "click_through"):
        m = comp["metrics"][name]
        assert m["abs_ci"][0] < 0 < m["abs_ci"][1], name
    cuped = comp["cuped"]
    assert cuped["abs_ci"][0] < 0.2 < cuped["abs_ci"][1]
    assert cuped["variance_reduction"] > 0.2
    assert cuped["abs_ci"][1] - cuped["abs_ci"][0] < hi - lo
    assert report["srm"]["flag"] is False
    assert [v["name"] for v in report["variants"]] == ["control", "treatment"]  # in the data's order
    v = _variant(report, "treatment")
    assert v["users"] == 5000 and v["exposures"] == int(data.variant("treatment").exposures.sum())
    assert v["plays_per_user"] == pytest.approx(data.variant("treatment").plays.mean())
    assert v["coverage"] == pytest.approx(data.variant("treatment").titles_shown / CATALOGUE)
    assert len(v["ctr_by_position"]) == POSITIONS and v["ctr_by_position"][0] == pytest.approx(0.2, abs=0.01)
    assert v["guardrails"]["latency_p99_ms"] in LATENCY_EDGES_MS
    assert v["guardrails"]["degraded_share"] == pytest.approx(0.01, abs=0.001)


def test_aa_shows_no_srm_and_no_effect() -> None:
    rng = np.random.default_rng(21)
    n_control = int(rng.binomial(10_000, 0.5))  # users split by a fair coin
    report = build_report(_ab(rng, n_control, 10_000 - n_control))
    assert report["srm"]["flag"] is False and report["srm"]["p_value"] > 0.001
    plays = report["comparisons"]["treatment"]["metrics"]["plays_per_user"]
    assert plays["abs_ci"][0] < 0 < plays["abs_ci"][1]


def test_losing_10_percent_of_one_variant_flags_srm() -> None:
    rng = np.random.default_rng(22)
    data = _ab(rng, 5000, 5000)
    kept = 4500
    t = data.variant("treatment")
    t.users = t.users[:kept]
    for field in ("exposures", "clicks", "plays", "completes", "ratings", "hits", "engagements", "pre_engagements"):
        setattr(t, field, getattr(t, field)[:kept])
    report = build_report(data)
    assert report["srm"]["flag"] is True
    assert report["srm"]["observed"] == {"control": 5000, "treatment": 4500}
    assert report["srm"]["expected"] == {"control": 4750.0, "treatment": 4750.0}
    assert "MISMATCH" in render_text(report)
    # A configured variant that got no users at all (absent from the data) is a mismatch too.
    data.weights = {"control": 1 / 3, "treatment": 1 / 3, "forgotten": 1 / 3}
    srm = build_report(data)["srm"]
    assert srm["flag"] is True and srm["observed"]["forgotten"] == 0


def test_slow_variant_shows_in_the_latency_guardrail() -> None:
    rng = np.random.default_rng(23)
    report = build_report(_ab(rng, 500, 500, slow=True))
    fast, slow = (_variant(report, n)["guardrails"] for n in ("control", "treatment"))
    assert fast["latency_p99_ms"] is not None and fast["latency_p99_ms"] < 100
    # nearly every answer of the slow variant is in the overflow bucket: no finite p99, beyond the last edge
    assert slow["latency_p99_ms"] is None and slow["latency_p99_beyond_ms"] == LATENCY_EDGES_MS[-2]


def test_interleaving_preference_and_sample_sizes() -> None:
    rng = np.random.default_rng(24)
    n = 3000
    engaged = rng.random(n) < 0.5
    outcome = rng.choice(3, n, p=[0.5, 0.35, 0.15])  # T wins, C wins, tie (among users who engage)
    base, extra = rng.poisson(1.0, n), 1 + rng.poisson(0.5, n)
    credit_t = np.where(engaged, np.where(outcome == 0, base + extra, np.where(outcome == 2, base + 1, base)), 0)
    credit_c = np.where(engaged, np.where(outcome == 1, base + extra, np.where(outcome == 2, base + 1, base)), 0)
    users = [f"u{i}" for i in range(n)]
    teams = [VariantData(name, users=users, credit=credit) for name, credit in
             (("control", credit_c), ("treatment", credit_t))]
    data = ExperimentData(name="ranker-il", kind="interleave", variants=teams,
                          weights={"control": 0.5, "treatment": 0.5}, catalogue_size=CATALOGUE, control="control")
    report = build_report(data)
    _plain(report)
    assert report["srm"] is None and report["comparisons"] == {}
    il = report["interleaving"]["treatment"]
    truth = 0.5 + 0.15 / 2 - 0.5
    assert il["ci"][0] < truth < il["ci"][1] and il["significant"] and il["p_value"] < 1e-4
    assert il["users"] == n and il["users_with_credit"] == int(engaged.sum())
    ss = il["sample_size"]
    assert 0 < ss["interleaving_users_with_credit_needed"] < il["users_with_credit"]
    # spread over every exposed user at the share who engage (about half)
    assert ss["interleaving_users_needed"] == pytest.approx(ss["interleaving_users_with_credit_needed"] * 2, rel=0.1)
    assert ss["ab_users_needed"] == 2 * ss["ab_users_needed_per_arm"] > ss["interleaving_users_needed"]
    text = render_text(report)
    assert "interleaving treatment vs control" in text and "users needed" in text


def test_edge_cases_give_clean_output() -> None:
    rng = np.random.default_rng(25)
    empty = VariantData("empty")
    idle = VariantData("idle", users=["a", "b", "c"])  # users with every per-user counter left empty: zeros
    flat = VariantData("flat", users=["d", "e"], exposures=np.array([1, 1]), plays=np.array([0, 0]),
                       completes=np.array([0, 0]), engagements=np.array([0, 0]), hits=np.array([0, 0]),
                       clicks=np.array([0, 0]), ratings=np.array([0, 0]), pre_engagements=np.array([2, 2]))
    data = ExperimentData(name="odd", kind="ab", variants=[empty, idle, flat, _synthetic_variant("real", 50, rng)],
                          weights={"empty": 0.25, "idle": 0.25, "flat": 0.25}, catalogue_size=0)
    report = build_report(data)
    _plain(report)
    orjson.dumps(report)
    assert report["control"] == "empty"
    assert _variant(report, "empty")["plays_per_user"] is None
    assert _variant(report, "idle")["completion_rate"] is None  # zero plays
    assert _variant(report, "idle")["coverage"] is None  # no catalogue size
    assert _variant(report, "idle")["ctr_by_position"] == [None] * POSITIONS
    assert _variant(report, "idle")["guardrails"]["latency_p99_ms"] is None
    assert report["comparisons"]["real"]["metrics"]["plays_per_user"]["abs_diff"] is None  # vs an empty control
    assert report["srm"]["flag"] is True  # 'real' has users and no configured weight
    # Zero variance on both sides and no difference: p = 1, a point interval.
    no_change = ExperimentData(name="zeros", kind="ab", variants=[idle, VariantData("idle2", users=["x", "y"])],
                               weights={"idle": 0.6, "idle2": 0.4})
    r = build_report(no_change)
    _plain(r)
    plays = r["comparisons"]["idle2"]["metrics"]["plays_per_user"]
    assert plays["p_value"] == 1.0 and plays["abs_ci"] == [0.0, 0.0] and plays["always_valid_p"] == 1.0
    assert plays["users_needed_per_arm"] is None and r["comparisons"]["idle2"]["cuped"]["theta"] == 0.0
    assert build_report(ExperimentData(name="none", kind="ab", variants=[], weights={}))["control"] is None
    for rep in (report, r):
        assert render_text(rep)


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(26)
    data = _ab(rng, 400, 400, play_lift=1.2)
    report = build_report(data)
    paths = write_plots(report, data, tmp_path / "plots")
    assert [p.name for p in paths] == ["differences.png", "ctr_by_position.png", "latency.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    text = render_text(report)
    assert "plays_per_user (CUPED)" in text and "SRM" in text and "treatment vs control" in text
    # degenerate data still plots
    empty = ExperimentData(name="e", kind="ab", variants=[VariantData("a"), VariantData("b")],
                           weights={"a": 1, "b": 1})
    assert len(write_plots(build_report(empty), empty, tmp_path / "empty")) == 3
