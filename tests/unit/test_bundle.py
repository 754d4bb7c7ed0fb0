"""The model bundle: atomic publish, the latest pointer, checksums, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from models.bundle import BundleError, BundleWriter, fingerprint_files, latest_version, open_bundle, set_latest
from models.features.spec import FEATURE_SPEC_VERSION


def _publish(root: Path, scale: float = 1.0, **params: object) -> str:
    with BundleWriter(root, data_fingerprint="ab" * 32, feature_spec_version=FEATURE_SPEC_VERSION,
                      params=dict(params)) as writer:
        writer.save_array("item_vectors", np.arange(12, dtype=np.float32).reshape(3, 4) * scale)
        writer.save_json("item_ids", ["a", "b", "c"])
        writer.save_bytes("ranker.onnx", b"\x08\x01onnx")
        writer.metrics["hnsw"] = {"recall@10": 0.99}
        writer.publish()
        return writer.version


def test_published_bundle_round_trips_and_becomes_latest(tmp_path: Path) -> None:
    version = _publish(tmp_path, dim=4)
    assert latest_version(tmp_path) == version
    bundle = open_bundle(tmp_path)
    assert bundle.version == version and bundle.feature_spec_version == FEATURE_SPEC_VERSION
    np.testing.assert_array_equal(bundle.array("item_vectors"), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert bundle.json("item_ids") == ["a", "b", "c"]
    assert bundle.bytes("ranker.onnx") == b"\x08\x01onnx"
    manifest = orjson.loads((bundle.path / "manifest.json").read_bytes())
    assert manifest["params"] == {"dim": 4} and manifest["metrics"]["hnsw"]["recall@10"] == 0.99
    assert set(manifest["files"]) == {"item_vectors.npy", "item_ids.json", "ranker.onnx"}
    assert manifest["data_fingerprint"] == "ab" * 32 and manifest["created_at"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_latest_moves_to_the_newest_bundle_and_can_be_pinned_back(tmp_path: Path) -> None:
    first = _publish(tmp_path, scale=1.0)
    second = _publish(tmp_path, scale=2.0)
    assert first != second and latest_version(tmp_path) == second
    assert open_bundle(tmp_path).array("item_vectors")[1, 0] == 8.0
    set_latest(tmp_path, first)
    assert open_bundle(tmp_path).version == first
    with pytest.raises(BundleError, match="no such published bundle"):
        set_latest(tmp_path, "nope")


def test_a_failed_training_run_leaves_no_bundle(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BundleWriter(tmp_path, "cd" * 32, FEATURE_SPEC_VERSION) as writer:
        writer.save_array("item_vectors", np.zeros(3))
        raise RuntimeError("training crashed")
    assert list((tmp_path / "versions").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(BundleError, match="no bundle published"):
        open_bundle(tmp_path)


def test_corrupt_files_are_detected(tmp_path: Path) -> None:
    _publish(tmp_path)
    bundle = open_bundle(tmp_path)
    (bundle.path / "ranker.onnx").write_bytes(b"\x08\x01onnX")
    with pytest.raises(BundleError, match="checksum"):
        open_bundle(tmp_path)
    (bundle.path / "ranker.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing ranker\.onnx"):
        open_bundle(tmp_path)


def test_unknown_format_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    version = _publish(tmp_path)
    bundle = open_bundle(tmp_path)
    with pytest.raises(BundleError, match=r"has no file 'user_vectors\.npy'"):
        bundle.array("user_vectors")
    manifest_path = bundle.path / "manifest.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    manifest_path.write_bytes(orjson.dumps({**manifest, "format": 99}))
    with pytest.raises(BundleError, match=f"bundle {version} has format 99"):
        open_bundle(tmp_path)


def test_fingerprint_changes_with_the_data(tmp_path: Path) -> None:
    a, b = tmp_path / "catalog.jsonl", tmp_path / "events.jsonl"
    a.write_text("x\n")
    b.write_text("y\n")
    first = fingerprint_files([a, b])
    assert fingerprint_files([a, b]) == first
    b.write_text("y\nz\n")
    assert fingerprint_files([a, b]) != first


def test_a_bundle_for_an_unsupported_feature_spec_is_refused(tmp_path: Path) -> None:
    from models.features.spec import FEATURE_SPEC_VERSION, UnsupportedFeatureSpec

    with BundleWriter(tmp_path, "ef" * 32, feature_spec_version=FEATURE_SPEC_VERSION + 1) as writer:
        writer.save_json("item_ids", [])
        writer.publish()
    with pytest.raises(UnsupportedFeatureSpec, match=str(FEATURE_SPEC_VERSION + 1)):
        open_bundle(tmp_path)
    assert open_bundle(tmp_path, check_features=False).feature_spec_version == FEATURE_SPEC_VERSION + 1
