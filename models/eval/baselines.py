"""Three strong non-personalised / neighbourhood / linear baselines, plus random for sanity checks.

All of them read the binary user x item matrix of the training log (any item event of any kind
counts once, whatever its value), as the reference protocol does, and score every catalogue item
for the users asked; the protocol masks training items and takes the top K.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from numpy.typing import NDArray

from models.dataset import EventLog
from models.eval.protocol import evaluate_system
from models.linalg import spd_inverse_lower
from models.split import Split, interaction_matrix

EASE_LAMBDAS: Final[tuple[float, ...]] = (50.0, 100.0, 200.0, 500.0, 1000.0)


class Popularity:
    """Score = number of distinct training users of the item (the same list for everyone)."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.float32)
        self.extra: dict[str, Any] = {}

    def fit(self, train: EventLog) -> Popularity:
        self.counts = np.asarray(interaction_matrix(train).sum(axis=0), np.float32).ravel()
        return self

    def scores(self, users: NDArray[np.int32]) -> NDArray[np.float32]:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


class RandomScores:
    """Uniform random scores: the floor any real system must clear."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_items = 0
        self.extra: dict[str, Any] = {}

    def fit(self, train: EventLog) -> RandomScores:
        self.n_items = train.catalog.n_items
        return self

    def scores(self, users: NDArray[np.int32]) -> NDArray[np.float32]:
        return self.rng.random((len(users), self.n_items), dtype=np.float32)


class ItemKNN:
    """Item-item cosine on the binary matrix, ``neighbours`` kept per item; score = sum of similarities.

    ``prune="target"`` keeps, for every candidate item j, its ``neighbours`` most similar items,
    and scores j by the similarities of those among the user's items (Sarwar et al.; RecBole's
    ItemKNN). ``prune="source"`` keeps the top neighbours of every item the user has and spreads
    their similarity onto them (implicit's ItemItemRecommender). Cosine is symmetric, so the two
    differ only in which side is pruned.
    """

    def __init__(self, neighbours: int = 100, prune: str = "target", chunk: int = 1024) -> None:
        if prune not in ("target", "source"):
            raise ValueError("prune must be 'target' or 'source'")
        self.neighbours, self.prune, self.chunk = neighbours, prune, chunk
        self.train_items = sp.csr_matrix((0, 0), dtype=np.float32)
        self.weights = sp.csr_matrix((0, 0), dtype=np.float32)  # scores = train_items @ weights
        self.extra: dict[str, Any] = {"neighbours": neighbours, "prune": prune}

    def fit(self, train: EventLog) -> ItemKNN:
        x = interaction_matrix(train)
        n_items = x.shape[1]
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0), np.float64).ravel()).astype(np.float32)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        k = min(self.neighbours, max(n_items - 1, 1))
        rows_out: list[NDArray[np.int64]] = []
        cols_out: list[NDArray[np.int64]] = []
        vals_out: list[NDArray[np.float32]] = []
        # Item chunks bound memory to chunk x n_items dense floats (40 MB for 10k items) instead of
        # the full n_items^2 co-occurrence matrix.
        for start in range(0, n_items, self.chunk):
            stop = min(start + self.chunk, n_items)
            co = (xt[start:stop] @ x).toarray().astype(np.float32)
            sim = co * inv[start:stop, None] * inv[None, :]
            sim[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(sim, part, axis=1)
            keep = vals > 0
            rows_out.append(np.repeat(np.arange(start, stop), keep.sum(axis=1)))
            cols_out.append(part[keep])
            vals_out.append(vals[keep])
        rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
        cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
        vals = np.concatenate(vals_out) if vals_out else np.zeros(0, np.float32)
        # neighbours[i] = row i: the kept neighbours of item i.
        neighbours = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
        # target: score(u, j) = sum_{i in I_u, i in N(j)} sim -> weights[i, j] = neighbours[j, i].
        self.weights = (neighbours.T if self.prune == "target" else neighbours).tocsr()
        self.train_items = x
        return self

    def scores(self, users: NDArray[np.int32]) -> NDArray[np.float32]:
        return np.asarray((self.train_items[users] @ self.weights).toarray(), np.float32)


class EASE:
    """EASE (Steck 2019): B = argmin ||X - XB||² + λ||B||², diag(B) = 0, in closed form.

    With P = (XᵀX + λI)⁻¹, B = I - P·diag(1/diag(P)), so the score of item j for a user row x is
    ``x_j - (xP)_j / P_jj``. When there are fewer users than items the item x item inverse is
    never formed: by Woodbury, P = (I - Xᵀ(λI + XXᵀ)⁻¹X)/λ, which needs only a users x users
    solve (610 x 610 on ml-latest-small instead of 9,742 x 9,742) and gives the same B exactly.
    Everything is float64; scores are returned as float32.
    """

    def __init__(self, lam: float = 200.0, form: str = "auto") -> None:
        if form not in ("auto", "primal", "dual"):
            raise ValueError("form must be 'auto', 'primal' or 'dual'")
        self.lam = float(lam)
        self.form = form
        self.extra: dict[str, Any] = {"lambda": self.lam}
        self.train_items = sp.csr_matrix((0, 0), dtype=np.float32)
        self.dual = False
        self.b = np.zeros((0, 0), np.float32)  # primal: the item-item weights
        self.x_active = np.zeros((0, 0))  # dual: dense rows of users with training items
        self.k_inv_x = np.zeros((0, 0))  # dual: (λI + XXᵀ)⁻¹X
        self.p_diag = np.zeros(0)

    def fit(self, train: EventLog) -> EASE:
        x = interaction_matrix(train)
        self.train_items = x
        active = np.flatnonzero(np.diff(x.indptr) > 0)  # users without training items add nothing
        n_items = x.shape[1]
        self.dual = len(active) < n_items if self.form == "auto" else self.form == "dual"
        if self.dual:
            xa = x[active].toarray().astype(np.float64)
            gram = xa @ xa.T
            gram[np.diag_indices_from(gram)] += self.lam
            self.k_inv_x = sla.cho_solve(sla.cho_factor(gram, lower=True, check_finite=False), xa,
                                         check_finite=False)
            self.p_diag = (1.0 - np.einsum("ui,ui->i", xa, self.k_inv_x)) / self.lam
            self.x_active = xa
        else:
            gram = (x.T @ x).toarray().astype(np.float64)
            gram[np.diag_indices_from(gram)] += self.lam
            p = _spd_inverse(gram)
            b = p / (-np.diag(p))[None, :]
            np.fill_diagonal(b, 0.0)
            self.b = b.astype(np.float32)
        return self

    def scores(self, users: NDArray[np.int32]) -> NDArray[np.float32]:
        xu = self.train_items[users]
        if not self.dual:
            return np.asarray((xu @ self.b), np.float32)
        xu_dense = xu.toarray().astype(np.float64)
        xp = (xu_dense - (xu_dense @ self.x_active.T) @ self.k_inv_x) / self.lam  # rows of XuP
        return (xu_dense - xp / self.p_diag[None, :]).astype(np.float32)


def _spd_inverse(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Inverse of a symmetric positive definite matrix via Cholesky (about half the work of LU)."""
    inv = spd_inverse_lower(matrix)
    return np.tril(inv) + np.tril(inv, -1).T


def select_ease_lambda(
    validation: Split,
    lambdas: Sequence[float] = EASE_LAMBDAS,
    *,
    metric: str = "ndcg@10",
    progress: Callable[[str], None] | None = None,
) -> tuple[float, dict[str, float]]:
    """The λ with the best ``metric`` on ``validation`` (a split of the training part), and every λ's value."""

    results: dict[str, float] = {}
    best, best_value = float(lambdas[0]), -np.inf
    for lam in lambdas:
        started = time.perf_counter()
        model = EASE(lam).fit(validation.train)
        metrics, _ = evaluate_system(model, validation)
        value = metrics[metric]
        results[f"{lam:g}"] = value
        if progress:
            progress(f"ease λ={lam:g}: validation {metric}={value:.4f} ({time.perf_counter() - started:.1f}s)")
        if value > best_value:
            best, best_value = float(lam), value
    return best, results
