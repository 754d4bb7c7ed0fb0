"""An HNSW index over item vectors (hnswlib), labelled by item index, that can change while serving.

The server applies ``item-vectors`` updates (new titles, retrained or content-projected vectors,
removals) to a live index, so the wrapper supports:

- :meth:`ItemIndex.add_items`: insert new labels or replace the vector of existing ones (hnswlib
  re-links a replaced point to its new neighbours); grows the index (``resize_index``) with
  headroom instead of failing when it is full;
- :meth:`ItemIndex.mark_deleted`: a deleted item is never returned; its slot is reused by later
  inserts (``allow_replace_deleted``), so churn does not grow the index without bound.

Spaces: ``"ip"`` scores by raw inner product, which is exactly the MF score ``user · item`` (item
norms carry popularity, which helps retrieval); ``"cosine"`` is for item-to-item neighbours
("because you watched"), where a popular title should not be everybody's neighbour.

A copy of the vectors is kept beside the graph: it gives exact search for measuring recall, the
seed vectors for item-to-item queries, and a brute-force fallback when HNSW cannot fill k results.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

import hnswlib
import numpy as np
from numpy.typing import NDArray

Space = Literal["ip", "cosine"]
RECALL_KS: Final[tuple[int, ...]] = (10, 100)


@dataclass(frozen=True, slots=True)
class IndexParams:
    space: Space = "ip"
    M: int = 16  # graph degree: 16 keeps recall@10 > 0.98 at d=64 for ~10k items (benchmark)
    ef_construction: int = 200
    ef: int = 128  # query beam; hnswlib searches with max(ef, k), so big k needs no change here
    headroom: float = 1.5  # capacity = headroom × items, so new titles rarely force a resize
    seed: int = 0
    build_threads: int = 1  # one thread builds the same graph every time; more is faster, not repeatable


def _normalise(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class ItemIndex:
    """hnswlib graph + the vectors it holds (rows = item index) + which rows are live."""

    def __init__(self, index: hnswlib.Index, vectors: NDArray[np.float32], live: NDArray[np.bool_],
                 present: NDArray[np.bool_], params: IndexParams) -> None:
        self._index = index
        self.vectors = vectors  # (capacity, d) raw vectors as given; rows of non-live items are stale
        self.live = live  # (capacity,) item is in the index and not deleted
        self._present = present  # hnswlib still holds the label (live, or deleted but slot not reused)
        self.params = params
        self.recall: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: NDArray[np.floating], params: IndexParams = IndexParams(),
              items: NDArray[np.integer] | None = None) -> ItemIndex:
        """Index ``vectors[items]`` under labels ``items`` (default: every row with a nonzero vector).

        Zero rows are skipped by default: they are items with no CF vector yet, and in ``"ip"``
        space they would tie with everything at score 0.
        """
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vecs.shape
        if items is None:
            items = np.flatnonzero(np.any(vecs != 0, axis=1))
        items = np.asarray(items, np.int64)
        capacity = max(16, int(np.ceil(max(n, 1) * params.headroom)))
        index = hnswlib.Index(space=params.space, dim=d)
        index.init_index(max_elements=capacity, M=params.M, ef_construction=params.ef_construction,
                         random_seed=params.seed, allow_replace_deleted=True)
        index.set_ef(params.ef)
        store = np.zeros((capacity, d), np.float32)
        store[:n] = vecs
        out = cls(index, store, np.zeros(capacity, bool), np.zeros(capacity, bool), params)
        if len(items):
            index.add_items(vecs[items], items, num_threads=params.build_threads)
            out.live[items] = True
            out._present[items] = True
        return out

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_live(self) -> int:
        return int(self.live.sum())

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    def set_ef(self, ef: int) -> None:
        self.params = replace(self.params, ef=ef)
        self._index.set_ef(ef)

    # -- updates ----------------------------------------------------------------------------------

    def _grow(self, n_rows: int) -> None:
        """Make room for labels < n_rows in the sidecar arrays."""
        if n_rows <= len(self.live):
            return
        rows = int(np.ceil(n_rows * self.params.headroom))
        grow = rows - len(self.live)
        self.vectors = np.vstack([self.vectors, np.zeros((grow, self.dim), np.float32)])
        self.live = np.concatenate([self.live, np.zeros(grow, bool)])
        self._present = np.concatenate([self._present, np.zeros(grow, bool)])

    def add_items(self, items: NDArray[np.integer] | list[int], vectors: NDArray[np.floating]) -> None:
        """Insert new items or replace the vectors of existing (live or deleted) ones.

        An all-zero vector deletes the item instead (it has no vector to be found by).
        """
        labels = np.asarray(items, np.int64).ravel()
        vecs = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if len(labels) == 0:
            return
        if vecs.shape != (len(labels), self.dim):
            raise ValueError(f"expected vectors of shape {(len(labels), self.dim)}, got {vecs.shape}")
        if labels.min() < 0:
            raise ValueError("item labels must be >= 0")
        # A zero vector means "no vector" (as at build time): such items leave the index.
        zero = ~np.any(vecs != 0, axis=1)
        if zero.any():
            self.mark_deleted(labels[zero])
            labels, vecs = labels[~zero], vecs[~zero]
            if len(labels) == 0:
                return
        # Last write wins for a label given twice (hnswlib would otherwise apply both, in order).
        _, last = np.unique(labels[::-1], return_index=True)
        keep = np.sort(len(labels) - 1 - last)
        labels, vecs = labels[keep], vecs[keep]
        self._grow(int(labels.max()) + 1)
        # hnswlib refuses to *update* a deleted label when slot reuse is on: bring those back first.
        # If the slot was already reused by another label, the label is gone and is simply added anew.
        for label in labels[self._present[labels] & ~self.live[labels]]:
            try:
                self._index.unmark_deleted(int(label))
            except RuntimeError:
                self._present[label] = False
        new = int((~self._present[labels]).sum())
        needed = self._index.get_current_count() + new
        if needed > self._index.get_max_elements():
            self._index.resize_index(int(np.ceil(needed * self.params.headroom)))
        self._index.add_items(vecs, labels, num_threads=1, replace_deleted=True)
        self.vectors[labels] = vecs
        self.live[labels] = True
        self._present[labels] = True
        # A reused slot evicted some deleted label from hnswlib; which one is not reported, so the
        # deleted-but-present flags are re-read lazily in the loop above (RuntimeError path).

    def mark_deleted(self, items: NDArray[np.integer] | list[int]) -> None:
        """Stop returning these items (unknown or already deleted ones are ignored)."""
        labels = np.unique(np.asarray(items, np.int64).ravel())
        labels = labels[(labels >= 0) & (labels < len(self.live))]
        for label in labels[self.live[labels]]:
            self._index.mark_deleted(int(label))
        self.live[labels] = False

    # -- queries ----------------------------------------------------------------------------------

    def query(self, vectors: NDArray[np.floating], k: int, num_threads: int = 1
              ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Top-``k`` live items per query row: ``(labels (n, k'), similarity (n, k'))``, best first.

        ``k' = min(k, live items)``. Similarity is the inner product (``"ip"``) or cosine. One thread
        by default: the server answers many requests at once and must not oversubscribe its cores.
        """
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        k = min(int(k), self.n_live)
        if k <= 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.int32), np.zeros((len(q), 0), np.float32)
        try:
            labels, dist = self._index.knn_query(q, k=k, num_threads=num_threads)
        except RuntimeError:
            # HNSW could not reach k live points (many deletions, tiny graph): answer exactly.
            return self.exact(q, k)
        return labels.astype(np.int32), (1.0 - dist).astype(np.float32)

    def exact(self, vectors: NDArray[np.floating], k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Brute-force top-``k`` over the live items, in the index's similarity."""
        q = np.atleast_2d(np.asarray(vectors, np.float32))
        live = np.flatnonzero(self.live)
        k = min(int(k), len(live))
        if k <= 0:
            return np.zeros((len(q), 0), np.int32), np.zeros((len(q), 0), np.float32)
        base = self.vectors[live]
        if self.params.space == "cosine":
            q, base = _normalise(q), _normalise(base)
        sims = q @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return live[top].astype(np.int32), np.take_along_axis(top_sims, order, axis=1).astype(np.float32)

    def _similarity(self, queries: NDArray[np.float32], labels: NDArray[np.int32]) -> NDArray[np.float32]:
        """Exact similarity of each query row to each of its labels, in the index's space."""
        q, base = queries, self.vectors[labels]
        if self.params.space == "cosine":
            q, base = _normalise(q), _normalise(base)
        return np.einsum("nd,nkd->nk", q, base).astype(np.float32)

    def measure_recall(self, user_vectors: NDArray[np.floating] | None = None, n_queries: int = 1000,
                       ks: tuple[int, ...] = RECALL_KS, seed: int = 0) -> dict[str, Any]:
        """Recall@k of HNSW against exact search on sampled item (and user) vectors; kept in ``recall``.

        Queries: up to ``n_queries`` random live item vectors plus up to ``n_queries`` random
        nonzero user vectors (the queries CF retrieval really sends). The dict is JSON-ready for
        the bundle manifest.
        """
        rng = np.random.default_rng(seed)
        live = np.flatnonzero(self.live)
        parts = [self.vectors[rng.choice(live, size=min(n_queries, len(live)), replace=False)]]
        if user_vectors is not None:
            users = np.asarray(user_vectors, np.float32)
            users = users[np.any(users != 0, axis=1)]
            parts.append(users[rng.choice(len(users), size=min(n_queries, len(users)), replace=False)])
        queries = np.concatenate(parts)
        out: dict[str, Any] = {}
        for k in ks:
            # One query per k: hnswlib searches with max(ef, k), so recall@10 must not borrow
            # the wider beam of a k=100 query.
            got, _ = self.query(queries, k)
            want, want_sims = self.exact(queries, k)
            kk = want.shape[1]
            # Tie-aware: a returned item counts when its exact similarity reaches the k-th best
            # exact similarity (many titles watched by one user only have identical directions).
            sims = self._similarity(queries, got)
            threshold = want_sims[:, -1:] - 1e-5 * np.maximum(np.abs(want_sims[:, -1:]), 1.0)
            hits = np.minimum((sims >= threshold).sum(axis=1), kk)
            out[f"recall@{k}"] = round(float(np.mean(hits / max(kk, 1))), 4)
        out.update(k=list(ks), ef=self.params.ef, M=self.params.M, ef_construction=self.params.ef_construction,
                   space=self.params.space, queries=len(queries), items=self.n_live)
        self.recall = out
        return out

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """``path`` (the hnswlib graph) and ``path.npz``-style sidecar ``<path>.meta.npz``."""
        path = Path(path)
        self._index.save_index(str(path))
        np.savez(_meta_path(path), vectors=self.vectors, live=self.live, present=self._present,
                 params=np.array(json.dumps(asdict(self.params))), recall=np.array(json.dumps(self.recall)))

    @classmethod
    def load(cls, path: Path) -> ItemIndex:
        path = Path(path)
        with np.load(_meta_path(path), allow_pickle=False) as z:
            vectors, live, present = z["vectors"], z["live"], z["present"]
            params = IndexParams(**json.loads(str(z["params"])))
            recall = json.loads(str(z["recall"]))
        index = hnswlib.Index(space=params.space, dim=vectors.shape[1])
        index.load_index(str(path), allow_replace_deleted=True)
        index.set_ef(params.ef)
        out = cls(index, vectors, live, present, params)
        out.recall = recall
        return out


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.npz")
