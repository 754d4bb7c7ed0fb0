"""The trained two-stage model on a small generated world: bundle, parity on real rows, recommendations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from models.bundle import open_bundle
from models.candidates import user_histories
from models.config import TwoStageConfig
from models.dataset import EventLog, load_log
from models.exposure import EXPOSURE_FILE
from models.features.spec import FEATURE_SPEC_VERSION, check_feature_spec, feature_layout
from models.features.state import ItemStatic
from models.recommend.model import RecommenderModel
from models.split import make_split
from models.two_stage import (
    TwoStageRecommender,
    _plan,
    _rows,
    fit_retrieval,
    fit_two_stage,
    recommender,
)
from tools.datasets.world import generate_world

SMALL = TwoStageConfig(dim=16, rank_users=120, ranker_epochs=3, sequence_epochs=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    generate_world(folder, users=150, items=800, events=12_000, seed=4, days=10)
    return folder


@pytest.fixture(scope="module")
def log(world: Path) -> EventLog:
    return load_log(world)


def test_fit_two_stage_learns_a_ranker_and_recommends_valid_titles(log: EventLog) -> None:
    split = make_split(log, "user-last")
    model = fit_two_stage(split.train, SMALL)
    ranker = model.metrics["ranker"]
    # The config stays as given; the debiasing training chose is the fit's result, and what stage 3 runs with.
    assert model.config == SMALL
    assert (ranker["debias"]["beta"], ranker["debias"]["cap"]) == (model.debias.beta, model.debias.cap)
    assert model.stage3_config.post.popularity_correction == model.debias.beta
    assert model.stage3_config.exposure_cap == model.debias.cap
    assert ranker["requests"] > 50 and ranker["positive_rows"] > 0
    assert 0.0 < ranker["valid_ndcg@10"] <= 1.0
    assert model.metrics["retrieval"]["hnsw"]["recall@10"] > 0.9
    # The export checks training records (issue 13): every ONNX model serves what PyTorch computed.
    assert ranker["onnx_max_abs_diff"] <= 1e-5
    assert model.metrics["retrieval"]["sequence_onnx_max_abs_diff"] <= 1e-5
    users = split.test_users[:40]
    top = TwoStageRecommender(model, split.train).recommend(users, 10)
    assert top.shape == (len(users), 10)
    histories = user_histories(split.train)
    for row, user in zip(top, users.tolist(), strict=True):
        assert len(set(row.tolist())) == 10, "no duplicates in a list"
        assert not set(row.tolist()) & set(histories.of(user)[0].tolist()), "watched titles are excluded"
        assert log.catalog.available[row].all(), "unavailable titles are never recommended"


def test_onnx_matches_torch_on_real_feature_rows(log: EventLog, tmp_path: Path) -> None:
    from models.ranker import export_onnx, parity_max_abs_diff, train_ranker

    retrieval = fit_retrieval(log, SMALL)
    static = ItemStatic.from_catalog(log.catalog)
    layout = feature_layout(log.catalog.n_items, static.n_genres)
    model = recommender(retrieval, log, SMALL, layout, None)
    users = np.unique(log.user)[:30]
    now = int(log.ts.max()) + 1
    plans = [_plan(model, log, int(u), now, 0) for u in users]
    batch, group = _rows(log, plans, static)
    assert len(batch) > 1000
    labels = (np.random.default_rng(0).random(len(batch)) < 0.05).astype(np.float32)
    ranker, _ = train_ranker(batch, labels, group, layout, epochs=1, seed=0)
    path = export_onnx(ranker, layout, tmp_path / "ranker.onnx")
    assert parity_max_abs_diff(ranker, path, batch) < 1e-5


def test_train_cli_publishes_a_complete_bundle(world: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    cmd = [sys.executable, "-m", "streamrec.cli", "train", "--data", str(world), "--out", str(artifacts),
           "--dim", "16", "--rank-users", "100", "--epochs", "2", "--sequence-epochs", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    bundle = open_bundle(artifacts)  # verifies every checksum
    assert summary["bundle"] == str(bundle.path)
    manifest = bundle.manifest
    assert manifest["feature_spec_version"] == FEATURE_SPEC_VERSION
    check_feature_spec(manifest["feature_spec_version"])
    assert {"ranker.onnx", "cf.npz", "content.npz", "projection.npz", "hnsw_cf.bin", "hnsw_items.bin",
            "items.npz", "catalog.json", "item_ids.json", "user_ids.json", "item_neighbours.npz", "sequence.onnx",
            "sequence.npz"} <= set(manifest["files"])
    assert manifest["metrics"]["ranker"]["onnx_max_abs_diff"] <= 1e-5
    assert manifest["metrics"]["retrieval"]["sequence_onnx_max_abs_diff"] <= 1e-5
    assert manifest["metrics"]["retrieval"]["hnsw"]["recall@10"] > 0.9
    assert manifest["params"]["dim"] == 16 and manifest["data_fingerprint"]
    # The params are the config as given; the loaded model runs stage 3 with the debiasing training chose.
    given = TwoStageConfig()
    assert manifest["params"]["post"]["popularity_correction"] == given.post.popularity_correction
    assert manifest["params"]["exposure_cap"] == given.exposure_cap
    chosen = manifest["metrics"]["ranker"]["debias"]
    loaded = RecommenderModel.load(artifacts)
    assert loaded.config.post.popularity_correction == chosen["beta"]
    assert loaded.config.exposure_cap == chosen["cap"]
    assert (f"{EXPOSURE_FILE}.npy" in manifest["files"]) == (chosen["cap"] > 0)
    assert len(bundle.json("item_ids")) == bundle.arrays("items")["popularity"].shape[0]
    assert not list(bundle.path.glob("*.onnx.data")), "the ranker is one self-contained file"
