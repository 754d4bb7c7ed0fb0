"""Sparse EASE neighbours: the fit against a dense EASE written out here, scoring, the source, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.typing import NDArray

from models.dataset import load_log
from models.item_item import ItemNeighbours, fit_item_neighbours, item_item

N_USERS, N_ITEMS, LAM = 300, 40, 8.0


def _matrix(seed: int = 0) -> sp.csr_matrix:
    """Binary users x items with a popularity skew and item blocks, so neighbours are not noise."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 4, N_USERS)
    block = np.arange(N_ITEMS) % 4
    p = 0.04 + 0.25 * (taste[:, None] == block[None, :]) * np.linspace(1.0, 0.2, N_ITEMS)[None, :]
    x = (rng.random((N_USERS, N_ITEMS)) < p).astype(np.float64)
    x[:, -2:] = 0.0  # two titles nobody touched
    return sp.csr_matrix(x)


def _dense_ease(x: NDArray[np.float64], lam: float) -> NDArray[np.float64]:
    """The textbook closed form: B = I - P / diag(P) with P = (XᵀX + λI)⁻¹, i.e. diag(B) = 0."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _top_positive(b: NDArray[np.float64], k: int) -> list[set[int]]:
    return [set(np.argsort(-row)[:k][np.sort(row)[::-1][:k] > 0].tolist()) for row in b]


def test_dense_limit_keeps_full_ease_top_neighbours_with_their_weights() -> None:
    x = _matrix()
    b = _dense_ease(x.toarray(), LAM)
    k = 5
    nb = fit_item_neighbours(x, N_ITEMS, lam=LAM, top_k=k)
    w = nb.weights
    assert w.shape == (N_ITEMS, N_ITEMS) and w.data.dtype == np.float32 and w.indices.dtype == np.int32
    kept = [set(w.indices[w.indptr[i]:w.indptr[i + 1]].tolist()) for i in range(N_ITEMS)]
    assert kept == _top_positive(b, k)
    assert max(len(row) for row in kept) == k  # pruned: the dense rows have far more positive weights
    assert (b[:-2] > 0).sum(axis=1).min() > k
    rows, cols = w.nonzero()
    np.testing.assert_allclose(w.data[np.lexsort((cols, rows))], b[rows, cols][np.lexsort((cols, rows))], rtol=1e-5)
    assert (w.data > 0).all()
    assert not w.diagonal().any()  # diag(B) = 0 survives pruning
    assert nb.fitted.tolist() == list(range(N_ITEMS - 2))  # untouched titles need no solve ...
    assert not w[N_ITEMS - 2:].nnz and not w[:, N_ITEMS - 2:].nnz  # ... and are nobody's neighbour


def test_the_diagonal_constraint_is_what_is_fitted() -> None:
    """Without diag(B) = 0 the best 'neighbour' of every item is itself; ridge regression ≠ EASE."""
    x = _matrix(1)
    nb = fit_item_neighbours(x, N_ITEMS, lam=LAM, top_k=N_ITEMS)
    b = _dense_ease(x.toarray(), LAM)
    np.testing.assert_allclose(nb.weights.toarray(), np.where(b > 0, b, 0.0), atol=1e-6)
    ridge = np.linalg.solve(x.T @ x + LAM * np.eye(N_ITEMS), (x.T @ x).toarray())  # unconstrained
    assert not np.allclose(np.where(ridge > 0, ridge, 0.0) - np.diag(np.diag(ridge)), nb.weights.toarray(), atol=1e-3)


def test_large_catalogue_fits_the_most_interacted_items_only() -> None:
    x = _matrix(2)
    m = 12
    nb = fit_item_neighbours(x, N_ITEMS, lam=LAM, top_k=N_ITEMS, max_dense_items=m)
    users = np.asarray((x > 0).sum(axis=0)).ravel()
    head = np.sort(np.argsort(-users, kind="stable")[:m])
    assert nb.fitted.tolist() == head.tolist()
    outside = np.setdiff1d(np.arange(N_ITEMS), head)
    assert not nb.weights[outside].nnz and not nb.weights[:, outside].nnz
    b_head = _dense_ease(x[:, head].toarray(), LAM)  # exact EASE of the restricted problem
    np.testing.assert_allclose(nb.weights[head][:, head].toarray(), np.where(b_head > 0, b_head, 0.0), atol=1e-6)


def test_scores_equal_dense_product_with_the_kept_weights() -> None:
    x = _matrix(3)
    nb = fit_item_neighbours(x, N_ITEMS, lam=LAM, top_k=6)
    kept = nb.weights.toarray().astype(np.float64)
    rng = np.random.default_rng(0)
    items = np.array([3, 7, 7, 20, N_ITEMS + 5, -1])  # a repeat, a title newer than the model, padding
    weights = rng.uniform(-1.0, 2.0, len(items))
    dense = np.zeros(N_ITEMS)
    np.add.at(dense, items[:4], weights[:4])
    np.testing.assert_allclose(nb.scores(items, weights), dense @ kept, rtol=1e-5, atol=1e-6)
    assert nb.scores(np.zeros(0, np.int64), np.zeros(0)).shape == (N_ITEMS,)


def test_source_ranks_by_score_honours_exclusion_and_budget() -> None:
    x = _matrix(4)
    nb = fit_item_neighbours(x, N_ITEMS, lam=LAM, top_k=8)
    history, ones = np.array([0, 4, 8]), np.ones(3)
    scores = nb.scores(history, ones)
    items, got = item_item(nb, history, ones, budget=10)
    assert len(items) == 10 and items.dtype == np.int32 and got.dtype == np.float32
    assert (np.diff(got) <= 0).all() and (got > 0).all()
    np.testing.assert_array_equal(got, scores[items])
    assert scores[items].min() >= np.sort(scores)[-10]
    exclude = np.zeros(N_ITEMS, bool)
    exclude[items[:3]] = True
    again, _ = item_item(nb, history, ones, budget=10, exclude=exclude)
    assert not exclude[again].any() and len(again) == 10
    np.testing.assert_array_equal(again[:7], items[3:])
    every, _ = item_item(nb, history, ones, budget=N_ITEMS)
    assert len(every) == int((scores > 0).sum()) < N_ITEMS  # unreached titles are not candidates


def test_save_load_round_trip(tmp_path: Path) -> None:
    nb = fit_item_neighbours(_matrix(5), N_ITEMS, lam=LAM, top_k=4, max_dense_items=20)
    path = nb.save(tmp_path)
    assert path.parent == tmp_path
    back = ItemNeighbours.load(tmp_path)
    assert (back.weights != nb.weights).nnz == 0 and back.weights.shape == nb.weights.shape
    assert back.weights.data.dtype == np.float32 and back.weights.indices.dtype == np.int32
    np.testing.assert_array_equal(back.fitted, nb.fitted)
    assert (back.lam, back.top_k) == (LAM, 4)
    np.testing.assert_array_equal(back.scores(np.array([1, 2]), np.ones(2)), nb.scores(np.array([1, 2]), np.ones(2)))


def _ev(kind: str, ts: int, user: str, item: str, extra: str = "") -> str:
    return (f'{{"type":"{kind}","event_id":"e{ts}","ts":{ts},"schema_version":1,"user_id":"{user}",'
            f'"item_id":"{item}"{extra}}}')


def test_log_input_counts_positive_net_feedback_once(tmp_path: Path) -> None:
    (tmp_path / "catalog.jsonl").write_text("\n".join(
        f'{{"type":"item_upsert","event_id":"c{i}","ts":1000,"schema_version":1,"item_id":"i{i}",'
        f'"title":"T{i}","genres":["Drama"],"release_ts":0}}' for i in range(3)) + "\n")
    (tmp_path / "events.jsonl").write_text("\n".join([
        _ev("play", 2000, "u1", "i0"), _ev("complete", 2001, "u1", "i0", ',"watched_seconds":60'),
        _ev("play", 2002, "u1", "i1"), _ev("skip", 2003, "u1", "i2", ',"watched_seconds":3'),
        _ev("rating", 2004, "u2", "i0", ',"value":1.0'), _ev("rating", 2005, "u2", "i1", ',"value":5.0'),
    ]) + "\n")
    log = load_log(tmp_path)
    i0, i1, i2 = (log.catalog.index[f"i{k}"] for k in range(3))
    x = np.zeros((2, 3))
    x[:, [i0, i1]] = 1.0  # u1's skip of i2 is no positive; u1's play + complete of i0 counts once
    from_log = fit_item_neighbours(log, 3, lam=1.0, top_k=2)
    from_matrix = fit_item_neighbours(sp.csr_matrix(x), 3, lam=1.0, top_k=2)
    assert (from_log.weights != from_matrix.weights).nnz == 0
    assert from_log.weights[i0, i1] > 0 and i2 not in from_log.fitted
    with pytest.raises(ValueError, match="item columns"):
        fit_item_neighbours(log, 4)
