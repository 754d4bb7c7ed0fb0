"""Item-to-item neighbours learned the EASE way, kept sparse, and the candidate source that reads them.

EASE (Steck 2019) learns item-item weights ``B = argmin ||X - XB||² + λ||B||²`` with ``diag(B) = 0``;
in closed form, with ``P = (XᵀX + λI)⁻¹``, ``B = I - P·diag(1/diag(P))``, i.e. ``B_ij = -P_ij / P_jj``
off the diagonal. A user's score for item ``j`` is ``(xB)_j = Σ_i x_i B_ij``: row ``i`` of ``B`` is what
history item ``i`` contributes. Serving a dense ``B`` costs ``n_items²`` floats (380 MB at 9,742
titles), so each row keeps only its ``top_k`` largest positive weights: a CSR matrix of at most
``n_items · top_k`` entries (1 M entries, 8 MB, at 9,742 titles and k = 100), and a request is a
gather of its history rows and one weighted sum.

Which matrix ``X``: from an :class:`~models.dataset.EventLog`, the pairs whose net feedback weight
(:func:`models.cf.interaction_matrix`, built on :mod:`models.feedback`) is positive, each counted
once. Binary, as the EASE baseline of ``streamrec eval``: EASE's λ is on the scale of co-occurrence
counts, and it is tuned for binary data; on MovieLens every rating nets positive, so ``X`` is then
exactly the baseline's matrix. A caller may pass its own users x items matrix of positive weights.

Large catalogues (more interacted items than ``max_dense_items``, ``m``): the solve is dense in the
items it covers, so it covers only the ``m`` most-interacted items (by distinct users) and is the
exact EASE of ``X`` restricted to them; the other items get no neighbours and are nobody's
neighbour. Why this cut: EASE's weights to and from an item seen by few users (``n_i`` much below
λ) are shrunk towards 0 by λ anyway, and the tail is what the content and new-release sources are
for; the restricted problem is still a proper EASE fit, not a truncated inverse. The cost:
``XᵀX`` and its inverse in one float64 ``m x m`` buffer, inverted in place (8·m² bytes: 288 MB at
m = 6,000, 800 MB at 10,000, 3.2 GB at 20,000), plus a few 32 MB temporaries per block of 4 M entries
while ``B`` is pruned; Cholesky then inverse is about ``m³`` flops (2·10¹¹ at 6,000: about 20 s on two
shared cores; 8·10¹² at 20,000: about 15 minutes there). On ml-latest-small the 6,000 most-interacted
of 8,246 titles hold 97% of the training interactions and the cut costs no measurable recall
(``benchmarks/bench_item_item.py``). Items no training user touched need no solve at all: their row
and column of the full ``B`` are exactly zero, so leaving them out changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from models.candidates import ItemMask, Items, Scores, top_k
from models.cf import interaction_matrix
from models.dataset import EventLog
from models.linalg import spd_inverse_lower

ITEM_NEIGHBOURS_FILE: Final = "item_neighbours.npz"
_BLOCK_ELEMENTS: Final = 1 << 22  # entries of one pruning block (32 MB of float64)


@dataclass(frozen=True, slots=True)
class ItemNeighbours:
    """Sparse EASE weights: row ``i`` holds item ``i``'s kept neighbours ``j`` and their weights ``B_ij > 0``."""

    weights: sp.csr_matrix  # (n_items, n_items), float32 data, int32 indices, no diagonal entries
    fitted: NDArray[np.int32]  # catalogue items the solve covered, ascending (the rest have no row)
    lam: float
    top_k: int

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[0])

    def scores(self, history_items: NDArray[np.integer], history_weights: NDArray[np.floating]) -> Scores:
        """``Σ_h w_h · B[item_h, :]`` over the catalogue (float32; 0 where no history item reaches).

        Repeated history items add up, as repeated events net in training; items beyond the
        catalogue (titles newer than the model) and negative indices are skipped.
        """
        items = np.asarray(history_items, np.int64)
        weights = np.asarray(history_weights, np.float64)
        inside = (items >= 0) & (items < self.n_items)
        items, weights = items[inside], weights[inside]
        indptr = self.weights.indptr
        starts = indptr[items].astype(np.int64)
        lengths = indptr[items + 1].astype(np.int64) - starts
        # Positions of every kept entry of the gathered rows, without a loop: each row's start,
        # repeated over its length, plus the offset inside the row.
        offsets = np.cumsum(lengths) - lengths
        at = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        values = self.weights.data[at] * np.repeat(weights, lengths)
        return np.bincount(self.weights.indices[at], weights=values, minlength=self.n_items).astype(np.float32)

    def save(self, folder: Path) -> Path:
        """Write ``folder/item_neighbours.npz`` (plain arrays, no pickle) and return its path."""
        path = Path(folder) / ITEM_NEIGHBOURS_FILE
        w = self.weights
        np.savez(path, data=w.data, indices=w.indices, indptr=w.indptr, shape=np.array(w.shape, np.int64),
                 fitted=self.fitted, lam=np.array(self.lam, np.float64), top_k=np.array(self.top_k, np.int64))
        return path

    @classmethod
    def load(cls, folder: Path) -> ItemNeighbours:
        with np.load(Path(folder) / ITEM_NEIGHBOURS_FILE, allow_pickle=False) as z:
            shape = tuple(int(n) for n in z["shape"])
            weights = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            return cls(weights, z["fitted"], float(z["lam"]), int(z["top_k"]))


def item_item(
    neighbours: ItemNeighbours, history_items: NDArray[np.integer], history_weights: NDArray[np.floating],
    budget: int, exclude: ItemMask | None = None,
) -> tuple[Items, Scores]:
    """The ``budget`` titles with the highest EASE score from the user's history, best first.

    Titles no history item reaches (score 0) or that disliked titles push below 0 are not returned.
    """
    return top_positive(neighbours.scores(history_items, history_weights), budget, exclude)


def top_positive(scores: Scores, budget: int, exclude: ItemMask | None = None) -> tuple[Items, Scores]:
    """The source's cut of precomputed EASE scores (the pipeline also keeps them as a ranking feature)."""
    return top_k(np.where(scores > 0, scores, -np.inf).astype(np.float32), budget, exclude)


def positive_feedback(log: EventLog) -> sp.csr_matrix:
    """Binary (n_users, n_items): 1 where the user's net feedback weight for the title is positive."""
    net = interaction_matrix(log)
    positive = (net > 0).astype(np.float64)
    return sp.csr_matrix(positive)


def fit_item_neighbours(
    train: EventLog | sp.spmatrix | sp.sparray, n_items: int, *, lam: float = 200.0, top_k: int = 100,
    max_dense_items: int = 6000,
) -> ItemNeighbours:
    """EASE over (at most ``max_dense_items`` of) the items, pruned to ``top_k`` positive weights per row.

    ``train``: an event log, or a users x ``n_items`` sparse matrix of positive feedback weights
    (entries <= 0 are ignored). See the module docstring for the matrix and the large-catalogue cut.
    """
    x = positive_feedback(train) if isinstance(train, EventLog) else sp.csr_matrix(train, dtype=np.float64, copy=True)
    if x.shape[1] != n_items:
        raise ValueError(f"the matrix has {x.shape[1]} item columns, the catalogue {n_items}")
    x.data[x.data < 0] = 0.0
    x.eliminate_zeros()
    users_per_item = np.bincount(x.indices, minlength=n_items)
    # Most-interacted first; ties by index, so a fit is the same every time.
    order = np.argsort(-users_per_item, kind="stable")
    fitted = np.sort(order[: min(max_dense_items, int((users_per_item > 0).sum()))]).astype(np.int32)
    p, p_diag = _ease_inverse(x.tocsc()[:, fitted], lam)
    rows, cols, vals = _pruned_rows(p, p_diag, top_k)
    counts = np.bincount(fitted[rows], minlength=n_items)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    # Blocks come in ascending row order and ``fitted`` is ascending: entries are already row-major.
    weights = sp.csr_matrix((vals, fitted[cols].astype(np.int32), indptr), shape=(n_items, n_items))
    weights.sort_indices()
    return ItemNeighbours(weights, fitted, float(lam), int(top_k))


def _ease_inverse(x: sp.csc_matrix, lam: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(XᵀX + λI)⁻¹`` in one m x m buffer (valid in its lower triangle only), and its diagonal."""
    m = x.shape[1]
    gram = np.empty((m, m), np.float64, order="F")
    step = max(1, _BLOCK_ELEMENTS // max(m, 1))
    for start in range(0, m, step):  # column blocks bound the sparse product's temporary memory
        gram[:, start:start + step] = (x.T @ x[:, start:start + step]).toarray()
    gram[np.diag_indices(m)] += lam
    # Fortran order lets LAPACK work in place: one m x m buffer for the Gram, its factor and P.
    p = spd_inverse_lower(gram)
    return p, np.diagonal(p).copy()


def _pruned_rows(
    p: NDArray[np.float64], p_diag: NDArray[np.float64], top_k: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    """(row, column, weight) of each row's ``top_k`` largest positive ``B_ij = -P_ij / P_jj``, row-major."""
    m = len(p_diag)
    k = min(top_k, m - 1)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    scale = -1.0 / p_diag
    columns = np.arange(m)
    rows_out, cols_out, vals_out = [], [], []
    step = max(1, _BLOCK_ELEMENTS // m)
    for start in range(0, m, step):  # blocks of rows: B is never whole in memory
        stop = min(start + step, m)
        block_rows = np.arange(start, stop)
        # P is symmetric and only its lower triangle is valid: P_ij = p[max(i,j), min(i,j)].
        upper = columns[None, :] > block_rows[:, None]
        b = np.where(upper, p[:, start:stop].T, p[start:stop, :]) * scale[None, :]
        b[np.arange(len(block_rows)), block_rows] = 0.0  # diag(B) = 0: an item does not explain itself
        part = np.argpartition(-b, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(b, part, axis=1)
        keep = vals > 0
        rows_out.append(np.repeat(block_rows, keep.sum(axis=1)))
        cols_out.append(part[keep])
        vals_out.append(vals[keep].astype(np.float32))
    return np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(vals_out)
