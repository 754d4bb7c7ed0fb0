"""Collaborative-filtering embeddings from implicit feedback, and the fold-in for unseen users.

Training aggregates :func:`models.feedback.feedback_weights` per (user, item) over an
:class:`~models.dataset.EventLog`. A pair whose net weight is > 0 is a positive with confidence
``1 + alpha * weight`` (Hu, Koren & Volinsky 2008); a pair whose net weight is < 0 (mostly skips)
is, by default, an explicit negative: preference 0 with confidence ``1 + alpha * |weight|``, which
pushes the pair's score down harder than the unobserved pairs (confidence 1) do. Pairs netting to
exactly 0 (impressions, heartbeats) are left out.

Why ALS (``implicit``'s conjugate-gradient ALS) by default rather than BPR: on ml-latest-small with
a user-last 80/20 split (``benchmarks/bench_retrieval.py``; d = 64, mean of 3 seeds) pure MF
retrieval scores NDCG@10 0.125 / recall@20 0.122 with ALS (α = 1.5, λ = 30) against 0.102 / 0.105
for the best BPR of a small grid and 0.087 / 0.069 for popularity. ALS also uses the confidence
weights where BPR only sees "interacted", its solves are per row and so deterministic even on
several threads, and its user step has a closed form: :func:`fold_in_user` is that same solve, so
a user who was not in training (or whose history changed since) gets a vector in the same space
from their recent items alone. λ = 30 is large because ``implicit`` does not scale it by history
length; α and λ between 1–3 and 20–40 were all within noise, λ ≤ 5 or ≥ 50 clearly worse.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from models.dataset import EventLog
from models.feedback import feedback_weights

Algorithm = Literal["als", "bpr"]


@dataclass(frozen=True, slots=True)
class ALSParams:
    """Hyper-parameters of the ALS fit; the defaults were picked on ml-latest-small (module doc)."""

    alpha: float = 1.5  # confidence = 1 + alpha * net feedback weight
    reg: float = 30.0  # not scaled by history length: a much bigger log may want it re-tuned
    iterations: int = 15
    negatives: bool = True  # net-negative pairs become preference-0 pairs with extra confidence


@dataclass(frozen=True, slots=True)
class BPRParams:
    """The best of a small grid on the same split (lr 0.005–0.05, reg 0.001–0.05, 100–200 epochs)."""

    learning_rate: float = 0.01
    reg: float = 0.01
    iterations: int = 100


DEFAULT_ALS: Final = ALSParams()
DEFAULT_BPR: Final = BPRParams()


@dataclass
class CFModel:
    """User and item factors in one space: ``score(u, i) = user_vectors[u] @ item_vectors[i]``.

    Rows follow the log's dense indices (``EventLog.user_index``, ``Catalog.index``). Items with no
    positive in training have a zero row (``trained_items`` is False) until
    :meth:`with_item_vectors` fills them, e.g. with content-projected vectors.
    """

    user_vectors: NDArray[np.float32]  # (n_users, d)
    item_vectors: NDArray[np.float32]  # (n_items, d)
    trained_users: NDArray[np.bool_]  # (n_users,) user had at least one positive in training
    trained_items: NDArray[np.bool_]  # (n_items,) item had at least one positive in training
    algorithm: str = "als"
    alpha: float = DEFAULT_ALS.alpha  # fold-in must use the confidences training used
    reg: float = DEFAULT_ALS.reg
    seconds: float = 0.0  # wall time of the fit (reported in the bundle manifest)
    _yty: NDArray[np.float64] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def yty(self) -> NDArray[np.float64]:
        """``Yᵀ Y`` of the item factors: every fold-in needs it, so it is computed once."""
        if self._yty is None:
            y = self.item_vectors.astype(np.float64)
            self._yty = y.T @ y
        return self._yty

    def fold_in(self, items: NDArray[np.integer], weights: NDArray[np.floating]) -> NDArray[np.float32]:
        """A user vector for a history of (item, feedback weight): see :func:`fold_in_user`."""
        return fold_in_user(self.item_vectors, items, weights, self.reg, alpha=self.alpha, yty=self.yty)

    def with_item_vectors(self, items: NDArray[np.integer], vectors: NDArray[np.floating]) -> CFModel:
        """A copy with some item rows replaced (cold items given content-projected vectors)."""
        item_vectors = self.item_vectors.copy()
        item_vectors[np.asarray(items, np.int64)] = np.asarray(vectors, np.float32)
        return CFModel(self.user_vectors, item_vectors, self.trained_users, self.trained_items,
                       self.algorithm, self.alpha, self.reg, self.seconds)

    def save(self, path: Path) -> None:
        np.savez(path, user_vectors=self.user_vectors, item_vectors=self.item_vectors,
                 trained_users=self.trained_users, trained_items=self.trained_items,
                 meta=np.array([self.alpha, self.reg, self.seconds], np.float64),
                 algorithm=np.array(self.algorithm))

    @classmethod
    def load(cls, path: Path) -> CFModel:
        with np.load(path, allow_pickle=False) as z:
            alpha, reg, seconds = (float(x) for x in z["meta"])
            return cls(z["user_vectors"], z["item_vectors"], z["trained_users"], z["trained_items"],
                       str(z["algorithm"]), alpha, reg, seconds)


def interaction_matrix(log: EventLog) -> sp.csr_matrix:
    """Net feedback weight per (user, item) as a (n_users, n_items) CSR matrix (zeros dropped)."""
    rows = log.item_events()
    weights = feedback_weights(log.kind[rows], log.value[rows])
    keep = weights != 0  # heartbeats and impressions say nothing; keep the matrix small
    matrix = sp.csr_matrix(
        (weights[keep].astype(np.float32), (log.user[rows][keep], log.item[rows][keep])),
        shape=(log.n_users, log.catalog.n_items), dtype=np.float32,
    )
    matrix.sum_duplicates()  # csr construction from COO sums repeated pairs: the *net* weight
    matrix.eliminate_zeros()  # a play then a skip can cancel out exactly
    return matrix


def confidence_matrix(net: sp.csr_matrix, alpha: float, negatives: bool = True) -> sp.csr_matrix:
    """``implicit``'s input: +(1 + α·w) for positives, −(1 + α·|w|) for negatives (or dropped).

    ``implicit`` reads a value ``c > 0`` as preference 1 with confidence ``c`` and ``c < 0`` as
    preference 0 with confidence ``|c|``; its own ``alpha`` multiplies without the ``1 +``, so we
    pass the finished confidences and leave its ``alpha`` at 1.
    """
    out = net.copy()
    if not negatives:
        out.data[out.data < 0] = 0.0
        out.eliminate_zeros()
    out.data = (np.sign(out.data) * (1.0 + alpha * np.abs(out.data))).astype(np.float32)
    return out


def fit_cf(
    log: EventLog,
    dim: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    *,
    algorithm: Algorithm = "als",
    als: ALSParams = DEFAULT_ALS,
    bpr: BPRParams = DEFAULT_BPR,
    num_threads: int = 1,
) -> CFModel:
    """Fit user and item factors on every item event of ``log``; ``progress(1)`` per iteration.

    Deterministic for a given ``seed``: the initial factors come from ``random_state`` and ALS
    solves each row independently. BPR is Hogwild SGD, so it is only repeatable on one thread,
    which is why ``num_threads`` defaults to 1 (on the shared 2-core dev box a second thread gave
    no speed-up on ml-latest-small: ~0.9 s either way, see the benchmark).
    """
    started = time.perf_counter()
    net = interaction_matrix(log)
    n_items = net.shape[1]
    positive = net.copy()
    positive.data = (positive.data > 0).astype(np.float32)
    positive.eliminate_zeros()
    trained_users = np.diff(positive.indptr) > 0
    trained_items = np.bincount(positive.indices, minlength=n_items) > 0

    def callback(*_: Any) -> None:
        if progress is not None:
            progress(1)

    # Imported here (not at module level) so that the server, which only folds users in, needs
    # neither implicit nor threadpoolctl (both come with the ``train`` extra); implicit is imported
    # *before* the limit below so that the BLAS it loads is limited too.
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    # implicit warns (and runs far slower) when OpenBLAS runs its own thread pool under ours.
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # implicit's "not a csr matrix" nags
        if algorithm == "als":
            model: Any = AlternatingLeastSquares(
                factors=dim, regularization=als.reg, alpha=1.0, iterations=als.iterations,
                num_threads=num_threads, random_state=seed, dtype=np.float32,
            )
            model.fit(confidence_matrix(net, als.alpha, als.negatives), show_progress=False, callback=callback)
            user_vectors = np.asarray(model.user_factors, np.float32)
            item_vectors = np.asarray(model.item_factors, np.float32)
            alpha, reg = als.alpha, als.reg
        elif algorithm == "bpr":
            model = BayesianPersonalizedRanking(
                factors=dim, learning_rate=bpr.learning_rate, regularization=bpr.reg,
                iterations=bpr.iterations, num_threads=num_threads, random_state=seed,
            )
            model.fit(positive, show_progress=False, callback=callback)
            # BPR appends an item-bias column (users get a constant 1 there); fold it into the
            # vectors so user @ item is still the model's score.
            user_vectors = np.asarray(model.user_factors, np.float32)
            item_vectors = np.asarray(model.item_factors, np.float32)
            alpha, reg = 1.0, bpr.reg
        else:
            raise ValueError(f"unknown algorithm {algorithm!r}")
    # Items/users without a positive got random init and were pulled towards 0 by regularisation
    # only; make that explicit so nobody mistakes them for learned vectors.
    item_vectors[~trained_items] = 0.0
    user_vectors[~trained_users] = 0.0
    return CFModel(user_vectors, item_vectors, trained_users, trained_items, algorithm, alpha, reg,
                   seconds=time.perf_counter() - started)


_blas: Any = None  # threadpoolctl.ThreadpoolController, or False when threadpoolctl is absent


def _one_blas_thread() -> Any:
    """A context that holds BLAS to one thread (~10 µs with a cached controller).

    The fold-in's matrices are tiny (d = 64), so BLAS threads never pay; on a busy 2-core box a
    2-thread OpenBLAS turned a 2,700-item fold-in from ~1 ms into ~90 ms (spinning threads).
    Without threadpoolctl (a server installed without the ``train`` extra) it does nothing: set
    ``OPENBLAS_NUM_THREADS=1`` there instead.
    """
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas") if _blas else contextlib.nullcontext()


def fold_in_user(
    item_vectors: NDArray[np.floating],
    items: NDArray[np.integer] | list[int],
    weights: NDArray[np.floating] | list[float],
    reg: float,
    *,
    alpha: float = DEFAULT_ALS.alpha,
    yty: NDArray[np.floating] | None = None,
) -> NDArray[np.float32]:
    """The ALS user step for one history: ``(YᵀY + Yᵀ(Cᵤ−I)Y + λI)⁻¹ YᵀCᵤpᵤ``.

    ``items``/``weights`` are raw events (feedback weights, repeats allowed): they are summed per
    item exactly as training did, so a trained user's own history gives back (up to the CG solver's
    tolerance) the vector training gave them. Pass ``yty`` (``CFModel.yty``) when calling often:
    it is the only part that costs O(n_items·d²). Returns zeros for an empty or all-zero history.
    """
    y = np.asarray(item_vectors)
    d = y.shape[1]
    items_arr = np.asarray(items, np.int64)
    w_arr = np.asarray(weights, np.float64)
    if items_arr.size == 0:
        return np.zeros(d, np.float32)
    uniq, inverse = np.unique(items_arr, return_inverse=True)
    net = np.bincount(inverse, weights=w_arr, minlength=len(uniq))
    keep = net != 0
    uniq, net = uniq[keep], net[keep]
    if not np.any(net > 0):
        return np.zeros(d, np.float32)  # no positive: the solve would give exactly 0 anyway
    conf = 1.0 + alpha * np.abs(net)
    with _one_blas_thread():
        yu = y[uniq].astype(np.float64)
        gram = (y.T.astype(np.float64) @ y.astype(np.float64)) if yty is None else np.asarray(yty, np.float64)
        a = gram + (yu.T * (conf - 1.0)) @ yu + reg * np.eye(d)
        b = (conf * (net > 0)) @ yu
        return np.linalg.solve(a, b).astype(np.float32)
