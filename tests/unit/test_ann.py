"""The HNSW item index: recall against exact search, live updates, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from models.ann import IndexParams, ItemIndex


def clustered(n: int, d: int = 32, clusters: int = 40, seed: int = 0) -> NDArray[np.float32]:
    """Vectors around a few centres with varying norms: like CF item factors, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return (x * rng.uniform(0.2, 2.0, (n, 1))).astype(np.float32)


@pytest.mark.parametrize("space", ["ip", "cosine"])
def test_recall_against_exact_search(space: str) -> None:
    items = clustered(3000)
    users = clustered(500, seed=1)
    index = ItemIndex.build(items, IndexParams(space=space, M=16, ef_construction=100, ef=64))  # type: ignore[arg-type]
    report = index.measure_recall(users, n_queries=300)
    assert report["recall@10"] > 0.9 and report["recall@100"] > 0.9, report
    assert report["k"] == [10, 100] and report["ef"] == 64 and report["M"] == 16
    assert index.recall is report
    labels, sims = index.query(users[:5], 10)
    assert labels.shape == (5, 10) and labels.dtype == np.int32 and sims.dtype == np.float32
    assert np.all(np.diff(sims, axis=1) <= 1e-5)  # best first
    exact_sims = np.einsum("d,kd->k", users[0], items[labels[0]])
    if space == "ip":
        np.testing.assert_allclose(sims[0], exact_sims, rtol=1e-4, atol=1e-4)


def test_zero_vectors_are_not_indexed() -> None:
    items = clustered(200)
    items[[3, 7]] = 0.0  # no CF vector yet
    index = ItemIndex.build(items)
    assert index.n_live == 198 and not index.live[3] and not index.live[7]
    labels, _ = index.query(items[:10], 198)
    assert not np.isin([3, 7], labels).any()


def test_deleted_items_are_never_returned() -> None:
    items = clustered(1000)
    index = ItemIndex.build(items, IndexParams(ef=50))
    gone = np.arange(0, 1000, 2)
    index.mark_deleted(gone)
    index.mark_deleted([5000, -1, 0])  # unknown and repeated labels are ignored
    assert index.n_live == 500
    labels, _ = index.query(items[:200], 50)
    assert not np.isin(labels, gone).any()
    # Asking for more than is left returns what is left (and only live items).
    labels, _ = index.query(items[:3], 10_000)
    assert labels.shape == (3, 500) and not np.isin(labels, gone).any()


def test_replaced_vector_is_found_by_its_new_neighbours() -> None:
    items = clustered(1000)
    index = ItemIndex.build(items, IndexParams(space="cosine"))
    x, y = 10, 500
    assert x not in index.query(items[y], 5)[0][0]
    index.add_items([x], items[y:y + 1] * 3.0)  # x now points where y does
    labels, sims = index.query(items[y], 2)
    assert set(labels[0].tolist()) == {x, y}
    np.testing.assert_allclose(sims[0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(index.vectors[x], items[y] * 3.0)
    # In "ip" space the replaced, longer vector is now the best match for y's direction.
    ip = ItemIndex.build(items)
    ip.add_items([x], items[y:y + 1] * 10.0)
    assert ip.query(items[y], 1)[0][0][0] == x


def test_add_delete_readd_and_growth_past_capacity() -> None:
    items = clustered(100)
    index = ItemIndex.build(items, IndexParams(space="cosine", headroom=1.0))  # full from the start
    start_capacity = index.capacity
    index.mark_deleted([1, 2])
    new = clustered(300, seed=7)
    index.add_items(np.arange(100, 400), new)  # reuses the two freed slots, then resizes
    assert index.capacity >= 400 - 2 > start_capacity
    assert index.n_live == 398 and not index.live[1] and not index.live[2]
    labels, _ = index.query(new[50], 1)
    assert labels[0][0] == 150
    # A deleted label comes back, with a new vector (whether or not its slot was reused meanwhile).
    index.add_items([1, 2], new[:2] * 5.0)
    assert index.live[1] and index.live[2] and index.n_live == 400
    assert set(index.query(new[0], 2)[0][0].tolist()) == {1, 100}  # same direction as item 100
    # Labels far beyond the current rows grow the side arrays too.
    index.add_items([10_000], new[3:4])
    assert index.live[10_000] and set(index.query(new[3], 2)[0][0].tolist()) == {10_000, 103}
    # A label given twice in one call keeps its last vector.
    index.add_items([20, 20], np.stack([new[4], new[5]]))
    np.testing.assert_array_equal(index.vectors[20], new[5])
    with pytest.raises(ValueError):
        index.add_items([1], np.zeros((1, 5), np.float32))
    # A zero vector is "no vector": the item leaves the index.
    index.add_items([150, 151], np.stack([np.zeros(32, np.float32), new[51]]))
    assert not index.live[150] and index.live[151]
    assert 150 not in index.query(new[50], 20)[0][0]


def test_empty_and_edge_queries() -> None:
    index = ItemIndex.build(np.zeros((10, 4), np.float32))
    assert index.n_live == 0
    labels, sims = index.query(np.ones(4), 10)
    assert labels.shape == (1, 0) and sims.shape == (1, 0)
    index.add_items([3], np.ones((1, 4)))
    assert index.query(np.ones(4), 10)[0].tolist() == [[3]]


def test_save_load_round_trip(tmp_path: Path) -> None:
    items = clustered(800)
    index = ItemIndex.build(items, IndexParams(space="cosine", ef=40))
    index.mark_deleted([1, 2, 3])
    index.measure_recall(n_queries=50)
    index.save(tmp_path / "items.hnsw")
    back = ItemIndex.load(tmp_path / "items.hnsw")
    assert back.params == index.params and back.recall == index.recall and back.n_live == index.n_live
    q = clustered(20, seed=3)
    for a, b in zip(index.query(q, 20), back.query(q, 20), strict=True):
        np.testing.assert_array_equal(a, b)
    # The loaded index keeps accepting updates: re-adding a deleted item, replacing another.
    back.add_items([1, 900], items[:2])
    assert back.live[1] and back.live[900]
    assert not np.isin(back.query(q, 100)[0], [2, 3]).any()
