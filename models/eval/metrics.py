"""Top-K lists and ranking metrics, vectorised over users.

A system's output is reduced to a (users, max_k) matrix of item indices, best first, with -1 for
"no item" (a list shorter than max_k). Every metric is then computed from the boolean hit matrix
of those lists against the positives, for all users at once. Definitions (binary relevance, each
user weighs the same, means over test users):

- ``recall@K`` = hits in the top K / |positives| (the textbook recall; can stay below 1 when the
  user has more than K positives).
- ``recall_capped@K`` = hits in the top K / min(K, |positives|) (RecBole/"normalised" recall,
  reaches 1 for a perfect list).
- ``hit_rate@K``: share of users with at least one hit in the top K.
- ``ndcg@K``: DCG = sum of 1/log2(rank + 1) over hits at ranks 1..K; the ideal DCG puts
  min(K, |positives|) hits at the top.
- ``mrr``: mean reciprocal rank of the first hit within the top ``max_k`` (50), 0 without a hit
  (i.e. MRR@50).
- ``coverage``: distinct items in anybody's top 10 / catalogue size.
- ``top_title_share``: share of users whose top 10 holds the single most common title across all
  top 10s (the report names that title); 1.0 means one title is pushed to everybody.
- ``mean_pop_rank``: mean popularity rank of the titles in the top 10s, pooled over every filled
  slot; rank 1 is the title with the most distinct training users, tied titles share the best rank
  of their tie (competition ranking), so the value does not depend on item indices.
- ``diversity``: mean over users of the mean pairwise cosine distance (1 - cosine) between the
  multi-hot genre vectors of the top 10; an item without genres is at distance 1 from everything.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

MAX_K: Final = 50  # length of the lists every system is scored on (curves run K = 1..MAX_K)
BEYOND_K: Final = 10  # the list length for coverage and diversity

METRIC_DEFINITIONS: Final[dict[str, str]] = {
    "recall@K": "hits in top K / |positives|",
    "recall_capped@K": "hits in top K / min(K, |positives|)",
    "hit_rate@K": "share of users with >= 1 hit in top K",
    "ndcg@K": "binary relevance; DCG=sum 1/log2(rank+1); ideal DCG over min(K, |positives|) hits",
    "mrr": f"mean reciprocal rank of the first hit within the top {MAX_K}, 0 without a hit",
    "coverage": f"distinct items in any user's top {BEYOND_K} / catalogue size",
    "top_title_share": f"share of users whose top {BEYOND_K} holds the most common title of all top {BEYOND_K}s",
    "mean_pop_rank": f"mean popularity rank (1 = most distinct training users; ties share the best rank) "
                     f"of the titles in the top {BEYOND_K}s, pooled over filled slots",
    "diversity": f"mean pairwise (1 - cosine) of genre multi-hot vectors in each top {BEYOND_K}, averaged over users",
}


def top_k(scores: NDArray[np.floating], exclude: sp.csr_matrix | None, k: int) -> NDArray[np.int32]:
    """The k best items per row of ``scores`` (best first), never one of ``exclude``'s items.

    ``scores`` is copied (float32) before masking. Ties are broken by the lower item index inside
    the selected set; which of several items tied at the k-th place gets in is up to
    ``np.argpartition`` (deterministic for given input). Rows with fewer than k allowed items are
    padded with -1; NaN scores rank last.
    """
    masked = np.array(scores, dtype=np.float32, copy=True)
    n, n_items = masked.shape
    np.nan_to_num(masked, copy=False, nan=-np.inf)
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(n), np.diff(exclude.indptr))
        masked[rows, exclude.indices] = -np.inf
    k = min(k, n_items)
    if k == 0:
        return np.zeros((n, 0), np.int32)
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(masked, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    top = np.take_along_axis(part, order, axis=1).astype(np.int32)
    top[np.take_along_axis(values, order, axis=1) == -np.inf] = -1
    return top


def pad_lists(lists: NDArray[np.integer], k: int) -> NDArray[np.int32]:
    """Cut or pad (with -1) a (users, any) matrix of item indices to exactly k columns."""
    lists = np.asarray(lists)
    out = np.full((lists.shape[0], k), -1, np.int32)
    width = min(k, lists.shape[1]) if lists.ndim == 2 else 0
    out[:, :width] = lists[:, :width]
    return out


def hit_matrix(top: NDArray[np.int32], positives: sp.csr_matrix) -> NDArray[np.bool_]:
    """hits[r, j]: is ``top[r, j]`` one of row r's positives (-1 never is)."""
    n_items = positives.shape[1]
    positives = positives.tocsr()
    positives.sort_indices()
    pos_rows = np.repeat(np.arange(positives.shape[0], dtype=np.int64), np.diff(positives.indptr))
    pos_keys = pos_rows * n_items + positives.indices  # sorted: rows ascending, indices sorted in a row
    if len(pos_keys) == 0:
        return np.zeros(top.shape, bool)
    query = np.arange(top.shape[0], dtype=np.int64)[:, None] * n_items + np.maximum(top, 0)
    found = np.minimum(np.searchsorted(pos_keys, query), len(pos_keys) - 1)
    return (pos_keys[found] == query) & (top >= 0)


def _discounts(k: int) -> NDArray[np.float64]:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ranking_curves(hits: NDArray[np.bool_], n_positives: NDArray[np.integer]) -> dict[str, NDArray[np.float64]]:
    """Per-K means for K = 1..hits.shape[1]: recall, recall_capped, hit_rate, ndcg."""
    n, max_k = hits.shape
    n_pos = np.asarray(n_positives, np.float64)
    if n == 0:
        empty = np.zeros(max_k)
        return {"recall": empty, "recall_capped": empty, "hit_rate": empty, "ndcg": empty}
    ks = np.arange(1, max_k + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
    disc = _discounts(max_k)
    dcg = np.cumsum(hits * disc, axis=1)
    ideal_table = np.concatenate([[0.0], np.cumsum(disc)])  # ideal DCG with m hits on top
    ideal_count = np.minimum(ks[None, :], n_pos[:, None]).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(n_pos[:, None] > 0, cum_hits / n_pos[:, None], 0.0)
        capped = np.where(ideal_count > 0, cum_hits / np.maximum(ideal_count, 1), 0.0)
        ndcg = np.where(ideal_count > 0, dcg / np.where(ideal_count > 0, ideal_table[ideal_count], 1.0), 0.0)
    return {"recall": recall.mean(axis=0), "recall_capped": capped.mean(axis=0),
            "hit_rate": (cum_hits > 0).mean(axis=0), "ndcg": ndcg.mean(axis=0)}


def mean_reciprocal_rank(hits: NDArray[np.bool_]) -> float:
    if hits.shape[0] == 0:
        return 0.0
    first = np.argmax(hits, axis=1)
    rr = np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return float(rr.mean())


def coverage(top: NDArray[np.int32], n_items: int, k: int = BEYOND_K) -> float:
    items = top[:, :k]
    return float(len(np.unique(items[items >= 0])) / max(n_items, 1))


def popularity_ranks(item_popularity: NDArray[np.number]) -> NDArray[np.int64]:
    """Rank per item, 1 = most popular; tied items share the best rank of their tie ("1224" ranking)."""
    popularity = np.asarray(item_popularity, np.float64)
    ascending = np.sort(popularity)
    # 1 + the number of strictly more popular items
    return len(popularity) - np.searchsorted(ascending, popularity, side="right").astype(np.int64) + 1


def most_common_item(top: NDArray[np.int32], k: int = BEYOND_K) -> tuple[int, int]:
    """(item, number of lists holding it) for the item found in the most top-k lists; ties go to the
    lower index; (-1, 0) when no list holds an item. An item repeated inside one list counts once."""
    items = np.sort(top[:, :k], axis=1)
    first = np.ones(items.shape, bool)
    first[:, 1:] = items[:, 1:] != items[:, :-1]
    held = items[first & (items >= 0)]
    if held.size == 0:
        return -1, 0
    lists_holding = np.bincount(held)
    item = int(np.argmax(lists_holding))
    return item, int(lists_holding[item])


def top_title_share(top: NDArray[np.int32], k: int = BEYOND_K) -> float:
    """Share of the rows (users, empty lists included) whose top k holds :func:`most_common_item`."""
    return most_common_item(top, k)[1] / max(top.shape[0], 1)


def mean_popularity_rank(top: NDArray[np.int32], ranks: NDArray[np.integer], k: int = BEYOND_K) -> float:
    """Mean of ``ranks`` (see :func:`popularity_ranks`) over every filled slot of the top k; 0 when none is."""
    items = top[:, :k]
    held = items[items >= 0]
    return float(np.asarray(ranks)[held].mean()) if held.size else 0.0


def intra_list_diversity(top: NDArray[np.int32], genre_matrix: NDArray[np.floating], k: int = BEYOND_K) -> float:
    """Mean over users of the mean pairwise cosine distance of genre vectors in the top k."""
    items = top[:, :k]
    if items.size == 0:
        return 0.0
    genres = np.asarray(genre_matrix, np.float32)
    norms = np.linalg.norm(genres, axis=1, keepdims=True)
    unit = np.divide(genres, norms, out=np.zeros_like(genres), where=norms > 0)  # no genres -> zero vector
    valid = items >= 0
    vectors = unit[np.maximum(items, 0)] * valid[:, :, None]
    similarity = np.einsum("nig,njg->nij", vectors, vectors)
    pairs = valid[:, :, None] & valid[:, None, :] & ~np.eye(items.shape[1], dtype=bool)[None]
    n_pairs = pairs.sum(axis=(1, 2))
    distance = ((1.0 - similarity) * pairs).sum(axis=(1, 2))
    scored = n_pairs > 0
    return float((distance[scored] / n_pairs[scored]).mean()) if scored.any() else 0.0


def compute_metrics(
    top: NDArray[np.int32],
    positives: sp.csr_matrix,
    genre_matrix: NDArray[np.floating],
    ks: tuple[int, ...] = (10, 20),
    item_popularity: NDArray[np.number] | None = None,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metrics, curves) for lists ``top`` (rows aligned with ``positives``' rows).

    ``item_popularity`` (per item, e.g. distinct training users) adds ``mean_pop_rank``.
    """
    hits = hit_matrix(top, positives)
    curves = ranking_curves(hits, np.diff(positives.indptr))
    metrics: dict[str, float] = {}
    for k in ks:
        if k > top.shape[1]:
            raise ValueError(f"K={k} is longer than the lists ({top.shape[1]})")
        for name in ("recall", "recall_capped", "hit_rate", "ndcg"):
            metrics[f"{name}@{k}"] = float(curves[name][k - 1])
    metrics["mrr"] = mean_reciprocal_rank(hits)
    metrics["coverage"] = coverage(top, positives.shape[1])
    metrics["diversity"] = intra_list_diversity(top, genre_matrix)
    metrics["top_title_share"] = top_title_share(top)
    if item_popularity is not None:
        metrics["mean_pop_rank"] = mean_popularity_rank(top, popularity_ranks(item_popularity))
    return metrics, {"recall": curves["recall"].tolist(), "ndcg": curves["ndcg"].tolist(),
                     "recall_capped": curves["recall_capped"].tolist()}


def candidate_recall(
    test_positives: sp.csr_matrix | list[NDArray[np.integer]],
    candidates_per_user: dict[str, list[NDArray[np.integer]] | NDArray[np.integer]],
) -> dict[str, float]:
    """Share of all test positives (pooled over users) that each candidate source retrieves, and their union.

    Rows of every source align with the rows of ``test_positives``; a source is a list of item
    arrays (any length per user) or a (users, budget) matrix; -1 entries are padding.
    """
    if isinstance(test_positives, list):
        n_items = 1 + max((int(p.max()) for p in test_positives if len(p)), default=0)
        for cands in candidates_per_user.values():
            flat = _flatten(cands)[1]
            n_items = max(n_items, 1 + int(flat.max()) if len(flat) else 0)
        rows = np.repeat(np.arange(len(test_positives)), [len(p) for p in test_positives])
        cols = np.concatenate(test_positives) if test_positives else np.zeros(0, np.int64)
        positives = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                  shape=(len(test_positives), n_items))
        positives.sum_duplicates()
    else:
        positives = test_positives.tocsr()
        n_items = positives.shape[1]
    pos_rows = np.repeat(np.arange(positives.shape[0], dtype=np.int64), np.diff(positives.indptr))
    pos_keys = pos_rows * n_items + positives.indices.astype(np.int64)
    total = max(len(pos_keys), 1)
    out: dict[str, float] = {}
    found_any = np.zeros(len(pos_keys), bool)
    for source, cands in candidates_per_user.items():
        rows, items = _flatten(cands)
        if rows.size and rows.max() >= positives.shape[0]:
            raise ValueError(f"source {source!r} has more rows than there are test users")
        keep = (items >= 0) & (items < n_items)
        found = np.isin(pos_keys, rows[keep] * n_items + items[keep])
        out[source] = float(found.sum() / total)
        found_any |= found
    out["union"] = float(found_any.sum() / total)
    return out


def _flatten(cands: list[NDArray[np.integer]] | NDArray[np.integer]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row, item) pairs of a candidate source in either form."""
    if isinstance(cands, np.ndarray) and cands.ndim == 2:
        rows = np.repeat(np.arange(cands.shape[0], dtype=np.int64), cands.shape[1])
        return rows, cands.reshape(-1).astype(np.int64)
    arrays = [np.asarray(c, np.int64).ravel() for c in cands]
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), [len(a) for a in arrays])
    items = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return rows, items
