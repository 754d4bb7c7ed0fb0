"""The retraining gate's decision (models.retrain_gate.decide), the period parser of `retrain --every`, and the
manifest update that records the comparison."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from models.bundle import BundleError, BundleWriter, open_bundle, update_manifest
from models.retrain_gate import decide
from tools.retrain import parse_every

CURRENT = {"ndcg@10": 0.20, "recall@20": 0.40}


def test_a_better_or_equal_candidate_is_published() -> None:
    assert decide({"ndcg@10": 0.25, "recall@20": 0.45}, CURRENT).publish
    assert decide(dict(CURRENT), CURRENT, tolerance=0.0).publish


def test_a_candidate_within_the_relative_tolerance_is_published() -> None:
    # 2% below on both metrics, tolerance 2%: not worse.
    decision = decide({"ndcg@10": 0.196, "recall@20": 0.392}, CURRENT, tolerance=0.02)
    assert decision.publish and decision.reason == "not worse"


def test_a_candidate_worse_on_one_metric_is_refused_and_says_which() -> None:
    decision = decide({"ndcg@10": 0.30, "recall@20": 0.38}, CURRENT, tolerance=0.02)
    assert not decision.publish
    assert "recall@20" in decision.reason and "ndcg@10" not in decision.reason
    assert decide({"ndcg@10": 0.15, "recall@20": 0.40}, CURRENT, tolerance=0.2).publish is False


def test_a_missing_or_nan_candidate_score_is_refused() -> None:
    assert not decide({"ndcg@10": 0.3}, CURRENT).publish
    assert not decide({"ndcg@10": float("nan"), "recall@20": 0.5}, CURRENT).publish


def test_no_current_bundle_or_a_zero_score_publishes() -> None:
    assert decide({"ndcg@10": 0.0, "recall@20": 0.0}, None).publish
    assert decide({"ndcg@10": 0.0, "recall@20": 0.0}, {"ndcg@10": 0.0, "recall@20": 0.0}).publish


def test_the_decision_records_both_sides_for_the_manifest() -> None:
    record = decide({"ndcg@10": 0.1, "recall@20": 0.2}, CURRENT, 0.05, current_version="v1",
                    window={"test_users": 7}).to_dict()
    assert record["candidate"] == {"ndcg@10": 0.1, "recall@20": 0.2} and record["current"] == CURRENT
    assert record["current_version"] == "v1" and record["window"] == {"test_users": 7}
    assert record["tolerance"] == 0.05 and record["publish"] is False
    orjson.dumps(record)  # JSON-serialisable as it is


def test_tolerance_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError):
        decide({}, CURRENT, tolerance=1.5)


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86_400), ("30m", 1800), ("90s", 90), ("1d", 86_400),
                                               ("3600", 3600), ("0.5h", 1800)])
def test_parse_every(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "0", "soon"])
def test_parse_every_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_every(text)


def test_update_manifest_adds_fields_and_keeps_the_bundle_valid(tmp_path: Path) -> None:
    with BundleWriter(tmp_path, "f" * 64, 1) as writer:
        writer.save_json("x", {"a": 1})
        version = writer.publish(make_latest=False).name
    update_manifest(tmp_path, version, retrain={"outcome": "refused"})
    bundle = open_bundle(tmp_path, version, check_features=False)  # checksums still hold
    assert bundle.manifest["retrain"] == {"outcome": "refused"} and bundle.version == version
    assert not (tmp_path / "latest").exists()  # a candidate: latest never moved
    with pytest.raises(ValueError):
        update_manifest(tmp_path, version, files={})
    with pytest.raises(BundleError):
        update_manifest(tmp_path, "no-such-version", retrain={})
