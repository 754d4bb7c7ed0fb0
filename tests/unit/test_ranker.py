"""Wide & Deep ranker: learns known signal, exports to one ONNX file, ONNX Runtime agrees with torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `train` extra
onnx = pytest.importorskip("onnx")

from models.features.batch import FeatureBatch, FeatureLayout  # noqa: E402
from models.ranker import (  # noqa: E402
    OPSET,
    RankerSession,
    WideAndDeep,
    export_onnx,
    grouped_ndcg,
    parity_max_abs_diff,
    read_layout,
    synthetic_examples,
    synthetic_layout,
    torch_scores,
    train_ranker,
)
from models.ranker.train import _listwise_loss  # noqa: E402

torch.set_num_threads(2)  # the box has 2 shared cores

# Small enough that a training run takes ~1 s, big enough that the signal is clearly learnable.
LAYOUT = synthetic_layout(wide_buckets=1 << 14, n_users=200, n_items=2_000)
TRAIN_KW: dict[str, object] = {"epochs": 6, "batch_size": 1024, "negatives_per_group": 64, "lr": 3e-3, "seed": 0}
PARITY_ATOL = 1e-5


def random_batch(layout: FeatureLayout, n: int, seed: int) -> FeatureBatch:
    rng = np.random.default_rng(seed)
    return FeatureBatch(
        rng.normal(0.0, 1.0, (n, len(layout.dense_names))).astype(np.float32),
        rng.integers(0, layout.wide_buckets, (n, len(layout.wide_names)), dtype=np.int64),
        np.stack([rng.integers(0, c, n) for c in layout.cat_cardinalities], axis=1).astype(np.int64),
    )


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[FeatureBatch, np.ndarray, np.ndarray]]:
    return {"train": synthetic_examples(LAYOUT, n_groups=150, group_size=200, seed=1),
            "valid": synthetic_examples(LAYOUT, n_groups=40, group_size=200, seed=2)}


@pytest.fixture(scope="module")
def listwise(data):  # type: ignore[no-untyped-def]
    return train_ranker(*data["train"], LAYOUT, loss="listwise", valid=data["valid"], **TRAIN_KW)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def onnx_path(listwise, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return export_onnx(listwise[0], LAYOUT, tmp_path_factory.mktemp("export") / "ranker.onnx")


# --- learning ------------------------------------------------------------------------------------


def test_both_losses_beat_random_clearly(data, listwise) -> None:  # type: ignore[no-untyped-def]
    valid_batch, valid_labels, valid_groups = data["valid"]
    rng = np.random.default_rng(0)
    random_ndcg = np.mean([grouped_ndcg(rng.random(len(valid_labels)), valid_labels, valid_groups)
                           for _ in range(5)])
    pointwise = train_ranker(*data["train"], LAYOUT, loss="pointwise", valid=data["valid"], **TRAIN_KW)  # type: ignore[arg-type]
    got = {name: grouped_ndcg(torch_scores(model, valid_batch), valid_labels, valid_groups)
           for name, (model, _) in {"listwise": listwise, "pointwise": pointwise}.items()}
    print(f"valid NDCG@10: random {random_ndcg:.3f}, {got}")
    assert random_ndcg < 0.1
    for name, value in got.items():
        assert value > random_ndcg + 0.2, name
    # Early stopping returns the best epoch's weights: the model scores what the history says.
    assert got["listwise"] == pytest.approx(listwise[1].best_valid_ndcg10, abs=1e-9)
    assert got["listwise"] >= got["pointwise"] - 0.05  # listwise optimises the ranking directly


def test_history_and_negative_subsampling(data, listwise) -> None:  # type: ignore[no-untyped-def]
    _, labels, groups = data["train"]
    history = listwise[1]
    assert 1 <= history.best_epoch <= len(history.epochs) <= TRAIN_KW["epochs"]
    assert all(e.valid_ndcg10 is not None for e in history.epochs)
    # Listwise keeps requests with a positive; in each, every positive plus up to 64 negatives.
    pos = np.bincount(groups, labels > 0)
    size = np.bincount(groups)
    expected = int(np.minimum(size, pos + 64)[pos > 0].sum())
    assert {e.rows for e in history.epochs} == {expected}
    assert {e.groups for e in history.epochs} == {int((pos > 0).sum())}


def test_training_is_deterministic_for_a_seed(data) -> None:  # type: ignore[no-untyped-def]
    small = data["train"][0].take(np.arange(40 * 200)), data["train"][1][:8000], data["train"][2][:8000]
    kw = {**TRAIN_KW, "epochs": 2}
    (m1, h1), (m2, h2) = (train_ranker(*small, LAYOUT, **kw) for _ in range(2))  # type: ignore[arg-type]
    m3, _ = train_ranker(*small, LAYOUT, **{**kw, "seed": 1})  # type: ignore[arg-type]
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [e.loss for e in h1.epochs] == [e.loss for e in h2.epochs]
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_listwise_loss_matches_per_group_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 1, 7, 5]
    scores = torch.randn(sum(sizes), generator=gen, dtype=torch.float64) * 10  # large: exercises the max shift
    labels = torch.rand(sum(sizes), generator=gen, dtype=torch.float64)
    seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    reference = torch.stack([
        -(y / y.sum() * torch.log_softmax(s, 0)).sum()
        for s, y in zip(scores.split(sizes), labels.split(sizes), strict=True)
    ]).mean()
    assert torch.allclose(_listwise_loss(scores, labels, seg, len(sizes)), reference, atol=1e-12)


def test_grouped_ndcg_known_values() -> None:
    labels = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    groups = np.array([7, 7, 7, 9, 9, 9])  # group 9 has no positive: skipped
    assert grouped_ndcg(np.array([3.0, 1.0, 2.0, 0.0, 0.0, 0.0]), labels, groups) == pytest.approx(1.0)
    worst = (0.5 / np.log2(3) + 1.0 / np.log2(4)) / (1.0 + 0.5 / np.log2(3))
    assert grouped_ndcg(np.array([1.0, 3.0, 2.0, 0.0, 0.0, 0.0]), labels, groups) == pytest.approx(worst)
    assert grouped_ndcg(np.array([3.0, 1.0, 2.0]), labels[:3], groups[:3], k=1) == pytest.approx(1.0)
    assert np.isnan(grouped_ndcg(np.zeros(3), np.zeros(3), np.zeros(3, np.int64)))


def test_bad_inputs_are_refused(data) -> None:  # type: ignore[no-untyped-def]
    batch, labels, groups = data["train"]
    with pytest.raises(ValueError, match="labels"):
        train_ranker(batch, labels * 2, groups, LAYOUT, epochs=1)
    with pytest.raises(ValueError, match="positive"):
        train_ranker(batch, np.zeros_like(labels), groups, LAYOUT, epochs=1)
    with pytest.raises(ValueError, match="loss"):
        train_ranker(batch, labels, groups, LAYOUT, epochs=1, loss="pairwise")  # type: ignore[arg-type]


# --- export and parity ---------------------------------------------------------------------------


def test_export_is_one_checked_file_with_dynamic_batch(onnx_path: Path) -> None:
    assert sorted(os.listdir(onnx_path.parent)) == ["ranker.onnx"]  # no .onnx.data, no temp dir left
    proto = onnx.load(str(onnx_path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    assert [i.name for i in proto.graph.input] == ["dense", "wide", "cats"]
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert read_layout(onnx_path) == LAYOUT


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_parity_on_random_batches(listwise, onnx_path: Path, n: int) -> None:  # type: ignore[no-untyped-def]
    diff = parity_max_abs_diff(listwise[0], onnx_path, random_batch(LAYOUT, n, seed=n))
    print(f"n={n}: max |torch - ort| = {diff:.2e}")
    assert diff <= PARITY_ATOL


def test_parity_on_a_real_batch(listwise, onnx_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    batch = data["valid"][0]
    model = listwise[0]
    diff = parity_max_abs_diff(model, onnx_path, batch)
    print(f"valid batch ({len(batch)} rows): max |torch - ort| = {diff:.2e}")
    assert diff <= PARITY_ATOL
    # Same order, so the same ranking is served as was evaluated.
    ort_scores = RankerSession(onnx_path).score(batch)
    assert grouped_ndcg(ort_scores, data["valid"][1], data["valid"][2]) == pytest.approx(
        grouped_ndcg(torch_scores(model, batch), data["valid"][1], data["valid"][2]), abs=1e-3)


def test_out_of_range_ids_do_not_crash_and_mean_unknown(listwise, onnx_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = listwise[0]
    good = random_batch(LAYOUT, 64, seed=3)
    wide, cats = good.wide.copy(), good.cats.copy()
    bad_rows = np.arange(0, 64, 2)
    wide[bad_rows, 0] = LAYOUT.wide_buckets + 5
    wide[bad_rows, 1] = -1
    cats[bad_rows, 1] = LAYOUT.cat_cardinalities[1]  # one past the end
    cats[bad_rows, 2] = np.iinfo(np.int64).max
    cats[bad_rows, 3] = -(2**40)
    bad = FeatureBatch(good.dense, wide, cats)
    got = RankerSession(onnx_path).score(bad)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - torch_scores(model, bad))) <= PARITY_ATOL
    # Out-of-range ids score exactly like id 0 (the "unknown" id).
    zeroed = FeatureBatch(good.dense, np.where((wide < 0) | (wide >= LAYOUT.wide_buckets), 0, wide),
                          np.where((cats < 0) | (cats >= np.array(LAYOUT.cat_cardinalities)), 0, cats))
    np.testing.assert_array_equal(got, RankerSession(onnx_path).score(zeroed))


def test_session_from_bytes_gives_the_same_scores(listwise, onnx_path: Path) -> None:  # type: ignore[no-untyped-def]
    batch = random_batch(LAYOUT, 1000, seed=11)
    from_file = RankerSession(onnx_path).score(batch)
    from_bytes = RankerSession(onnx_path.read_bytes())
    np.testing.assert_array_equal(from_file, from_bytes.score(batch))
    assert from_bytes.layout == LAYOUT
    assert from_bytes.score(batch).dtype == np.float32 and from_bytes.score(batch).shape == (1000,)


def test_scorer_checks_batch_shape(onnx_path: Path) -> None:
    session = RankerSession(onnx_path)
    assert session.score(random_batch(LAYOUT, 0, seed=0)).shape == (0,)
    batch = random_batch(LAYOUT, 5, seed=0)
    with pytest.raises(ValueError, match="columns"):
        session.score(FeatureBatch(batch.dense[:, :-1], batch.wide, batch.cats))


def test_legacy_exporter_is_also_one_file_and_agrees(listwise, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = listwise[0]
    model.train()  # export must score in eval mode and give the mode back
    path = export_onnx(model, LAYOUT, tmp_path / "legacy.onnx", dynamo=False)
    assert model.training
    model.eval()
    assert sorted(os.listdir(tmp_path)) == ["legacy.onnx"]
    for n in (1, 7, 1000):
        assert parity_max_abs_diff(model, path, random_batch(LAYOUT, n, seed=100 + n)) <= PARITY_ATOL


def test_untrained_model_and_layout_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WideAndDeep(LAYOUT, emb_dim=4, hidden=(8,), dropout=0.0)
    other = synthetic_layout(wide_buckets=1 << 10, n_users=10, n_items=10)
    with pytest.raises(ValueError, match="layout"):
        export_onnx(model, other, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="deep part"):
        WideAndDeep(FeatureLayout((), ("a",), 8, (), ()))


def test_serving_import_needs_no_torch() -> None:
    # The server has onnxruntime but not torch: `from models.ranker import RankerSession` must work.
    code = "import sys; sys.modules['torch'] = None; from models.ranker import RankerSession; print('ok')"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_subsampling_keeps_exactly_the_requests_with_positives_wherever_they_are() -> None:
    # The first requests have no positive (the case that once emptied an epoch: a per-row flag was
    # read with per-request indices); the later ones do, with more negatives than the cap.
    n_groups, size = 12, 50
    batch = random_batch(LAYOUT, n_groups * size, seed=3)
    groups = np.repeat(np.arange(n_groups), size)
    labels = np.zeros(len(groups), np.float32)
    with_pos = np.arange(6, n_groups)
    labels[with_pos * size] = 1.0  # one positive at the start of each of the later requests
    _, history = train_ranker(batch, labels, groups, LAYOUT, epochs=1, negatives_per_group=10, batch_size=64)
    assert {e.groups for e in history.epochs} == {len(with_pos)}
    assert {e.rows for e in history.epochs} == {len(with_pos) * 11}
