"""Online user embeddings: the user factor follows each interaction by SGD, item factors stay fixed.

Why: a user's CF vector from training is frozen until the next retrain, while tastes drift (the
synthetic world's users follow a slow random walk plus bursts). Refolding the whole history
(:func:`models.cf.fold_in_user`) needs that history; the update below needs only the stored
vector and the new event, so a stream worker can keep every active user's vector current in
O(d) per event and one small Redis value per user.

The model is River's matrix factorisation (:class:`river.reco.FunkMF`, squared loss) with the
item factors initialised from the bundle's CF item vectors and their optimiser's learning rate set
to 0, so only the user factor learns. Item factors stay fixed because (a) they are learnt from
every user by ALS at training time and one user's stream is far too little to move them well,
(b) every user vector and the HNSW index of the bundle live in that item space: a moving item
factor would silently invalidate the index and every other user's stored vector, and (c) item
updates would be shared state written by workers of *all* partitions (not owned by one), which the
exactly-once protocol (``streams/effects.py``) only allows for commutative increments.

Update rule, per event ``e`` (item vector ``v``, target ``y_e``, confidence ``w_e``)::

    η_e = min(lr · w_e, 1 / ‖v‖²)
    u  ←  u + η_e · ((y_e − u·v) · v − reg · u)

- ``y_e`` = 1 for a positive event (play, complete, click, add_to_list, a rating of 3+ stars),
  0 for a negative one (skip, a rating of 2.5 stars or less); ``w_e`` = ``|weight|`` capped at
  ``max_weight`` (2), where ``weight`` is :func:`online_weights` (the training
  :data:`~models.feedback.FEEDBACK_WEIGHT`, except that a rating maps 0.5..5 stars to −2..+2, so a
  bad rating pushes down instead of counting as a weak positive as it does in ALS training).
  Zero-weight events (progress heartbeats, impressions, profiles) change nothing.
- ``lr`` defaults to ``0.1 / s`` and ``reg`` to ``0.1 · s``, with ``s`` the mean ``‖v‖²`` of
  the non-zero item vectors: one weight-1 positive on a typical item closes about a tenth of the
  gap between its score and 1, and shrinks ``u`` by 1% (the forgetting that lets old tastes
  fade). Scaling by ``s`` makes the defaults independent of the bundle's ALS regularisation,
  which sets the norms. Picked on seed 1 of ``benchmarks/bench_online_user.py --grid`` (HR@20
  plateaus at 0.18-0.19 for steps 0.05-0.1 and reg 0.1-0.3; steps of 0.5-1 fall *below* frozen:
  they forget the training history too fast) and reported on seeds 2-4 there.
- The cap ``η_e ≤ 1/‖v‖²`` keeps one step from overshooting its target (at ``η = 1/‖v‖²`` the
  step sets ``u·v`` exactly to ``y``): without it a weight-2 event on a high-norm popular item
  made the score oscillate.
- It is exactly FunkMF's step with ``optimizer=SGD(η_e / 2)`` and ``l2 = 2 · reg`` (River's
  squared-loss gradient is ``2 (ŷ − y)``); :class:`RiverOnlineUser` runs it through River's
  ``learn_one`` and the tests check both agree.

Why a vectorised copy of the rule: River's ``learn_one`` costs ~20 µs per event in this form
(dict-of-arrays latents, Python-level gradient dict, a learning-rate scheduler object per event;
measured by the benchmark), i.e. a whole core for 50k events/s before anything else the worker
does. :meth:`OnlineUserModel.update_many` applies the same rule to all users of a batch at once:
SGD is sequential *per user*, so step ``k`` updates the ``k``-th event of every user in one numpy
operation, which makes a 10k-event batch a few milliseconds.

Determinism: all arithmetic is float32, the same precision as the stored value, so a user's
events give bit-identical vectors however they are split into batches, and replaying a batch
gives the same bytes. New users start from ``start`` (zeros by default: a score of 0 on every
item; their first positive events alone define the vector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.cf import CFModel
from models.dataset import KIND, EventLog
from models.feedback import feedback_weights

OnlineEvent = tuple[int, float, int]  # (item index, signed weight from online_weights, ts in ms)

DEFAULT_STEP: Final = 0.1  # lr = DEFAULT_STEP / mean ‖v‖²
DEFAULT_REG: Final = 0.1  # reg = DEFAULT_REG · mean ‖v‖²
MAX_WEIGHT: Final = 2.0


def online_weights(kind: NDArray[np.integer], value: NDArray[np.floating]) -> NDArray[np.float32]:
    """Signed per-event weight of the online update (``KIND`` codes; ``value`` = rating stars).

    The training weights (:func:`models.feedback.feedback_weights`), except ratings: 0.5..5 stars
    map linearly to −2..+2 (2.75 stars → 0), so a low rating is a negative.
    """
    kind = np.asarray(kind, np.int8)
    value = np.asarray(value, np.float32)
    weights = feedback_weights(kind, value)
    rating = kind == KIND["rating"]
    weights[rating] = np.clip((value[rating] - 2.75) * (4.0 / 4.5), -2.0, 2.0)
    return weights.astype(np.float32)


def online_weight(kind: str, value: float = 0.0) -> float:
    """:func:`online_weights` of one event given its type name (``"play"``, ``"rating"``, ...)."""
    code = KIND.get(kind)
    if code is None:
        return 0.0
    return float(online_weights(np.array([code], np.int8), np.array([value], np.float32))[0])


class OnlineUserModel:
    """The update rule of the module docstring, over fixed item vectors (rows = bundle item index)."""

    def __init__(
        self,
        item_vectors: NDArray[np.floating],
        lr: float | None = None,
        reg: float | None = None,
        *,
        max_weight: float = MAX_WEIGHT,
        start: NDArray[np.floating] | None = None,
    ) -> None:
        self.item_vectors: NDArray[np.float32] = np.ascontiguousarray(item_vectors, np.float32)
        sq = np.einsum("ij,ij->i", self.item_vectors, self.item_vectors)
        self._sq_norms: NDArray[np.float32] = sq.astype(np.float32)
        # 1/‖v‖² caps the step; a zero vector (no CF data) gets an infinite cap, and its step is 0 anyway.
        with np.errstate(divide="ignore"):
            self._inv_sq: NDArray[np.float32] = np.where(sq > 0, 1.0 / np.where(sq > 0, sq, 1.0), np.inf).astype(
                np.float32)
        nonzero = sq[sq > 0]
        self.scale = float(nonzero.mean()) if nonzero.size else 1.0
        self.lr = float(DEFAULT_STEP / self.scale if lr is None else lr)
        self.reg = float(DEFAULT_REG * self.scale if reg is None else reg)
        self.max_weight = float(max_weight)
        d = self.item_vectors.shape[1]
        self.start: NDArray[np.float32] = (np.zeros(d, np.float32) if start is None
                                           else np.asarray(start, np.float32).reshape(d).copy())

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    def update(self, user_vector: NDArray[np.floating] | None, events: Sequence[OnlineEvent]) -> NDArray[np.float32]:
        """The user's vector after ``events`` (in the given order; ``None`` = a new user)."""
        start = self.start if user_vector is None else np.asarray(user_vector, np.float32)
        items = np.fromiter((e[0] for e in events), np.int64, len(events))
        weights = np.fromiter((e[1] for e in events), np.float32, len(events))
        return self.update_many(start[None, :], np.zeros(len(events), np.int64), items, weights)[0]

    def update_many(
        self,
        vectors: NDArray[np.floating],
        owner: NDArray[np.integer],
        items: NDArray[np.integer],
        weights: NDArray[np.floating],
    ) -> NDArray[np.float32]:
        """New vectors for ``n`` users: row ``owner[j]`` of ``vectors`` takes event ``j`` (``items[j]``,
        ``weights[j]``); each user's events are applied in array order. Returns an ``(n, d)`` copy.

        Vectorised across users: step ``k`` applies every user's ``k``-th event at once.
        """
        u = np.array(vectors, np.float32, copy=True, ndmin=2)
        owner = np.asarray(owner, np.int64)
        items = np.asarray(items, np.int64)
        weights = np.asarray(weights, np.float32)
        live = (weights != 0) & (items >= 0) & (items < self.n_items)
        owner, items, weights = owner[live], items[live], weights[live]
        if owner.size == 0:
            return u
        order = np.argsort(owner, kind="stable")  # group by user, keep each user's event order
        owner, items, weights = owner[order], items[order], weights[order]
        first = np.concatenate([[0], np.flatnonzero(np.diff(owner)) + 1])
        step_of = np.arange(owner.size) - np.repeat(first, np.diff(np.append(first, owner.size)))
        targets = (weights > 0).astype(np.float32)
        conf = np.minimum(np.abs(weights), np.float32(self.max_weight))
        eta = np.minimum(np.float32(self.lr) * conf, self._inv_sq[items]).astype(np.float32)
        reg = np.float32(self.reg)
        for k in range(int(step_of.max()) + 1):
            sel = step_of == k
            rows, v = owner[sel], self.item_vectors[items[sel]]
            ur = u[rows]
            err = targets[sel] - np.einsum("ij,ij->i", ur, v)
            u[rows] = ur + eta[sel, None] * (err[:, None] * v - reg * ur)
        return u


class RiverOnlineUser:
    """The same rule run through River's ``FunkMF.learn_one`` (the reference and the benchmark).

    Item latents are the bundle's vectors with a zero learning rate; per event the user
    optimiser's learning rate is set to ``η_e / 2`` and ``l2 = 2 · reg`` (see the module docstring).
    """

    def __init__(self, model: OnlineUserModel) -> None:
        from river import optim, reco

        self.model = model
        self.mf = reco.FunkMF(
            n_factors=model.dim, optimizer=optim.SGD(0.0), loss=optim.losses.Squared(), l2=2.0 * model.reg,
            initializer=optim.initializers.Zeros(),
        )
        self._lr = optim.schedulers.Constant(0.0)
        self.mf.u_optimizer = optim.SGD(self._lr)
        self.mf.i_optimizer = optim.SGD(0.0)  # item factors fixed
        for i, row in enumerate(model.item_vectors):
            self.mf.i_latents[i] = row.copy()

    def learn(self, user: str, user_vector: NDArray[np.floating] | None, events: Sequence[OnlineEvent]) -> NDArray[
            np.float32]:
        m = self.model
        self.mf.u_latents[user] = (m.start if user_vector is None else np.asarray(user_vector, np.float32)).copy()
        for item, weight, _ts in events:
            if weight == 0 or not 0 <= item < m.n_items:
                continue
            conf = min(abs(weight), m.max_weight)
            self._lr.learning_rate = min(m.lr * conf, float(m._inv_sq[item])) / 2.0
            self.mf.learn_one(user, item, 1.0 if weight > 0 else 0.0)
        return np.asarray(self.mf.u_latents[user], np.float32)


def drift_hit_rates(
    log: EventLog,
    item_vectors: NDArray[np.floating],
    user_vectors: NDArray[np.floating],
    split_ts: int,
    model: OnlineUserModel,
    *,
    k: int = 20,
    refold: CFModel | None = None,
) -> dict[str, float]:
    """Next-item HR@k over the events at or after ``split_ts`` (a model trained before it).

    Targets: every ``play`` after the split of an item the user had no positive with before (the
    "next new title"), for users with a trained vector. Each is ranked among all items minus the
    user's earlier positives with (a) ``frozen``: the training vector, (b) ``online``: the training
    vector updated by :meth:`OnlineUserModel.update` with every event of the user after the split
    and before the target, and, given ``refold``, (c) ``refold``: the ALS fold-in of the user's
    whole history up to the target (the costly alternative the online rule approximates).
    """
    v = np.asarray(item_vectors, np.float32)
    online = np.array(user_vectors, np.float32, copy=True)
    frozen = np.asarray(user_vectors, np.float32)
    warm = np.linalg.norm(frozen, axis=1) > 0
    weights = online_weights(log.kind, log.value)
    train_w = feedback_weights(log.kind, log.value)  # the refold uses training's own weights
    seen: list[set[int]] = [set() for _ in range(log.n_users)]
    history: list[list[tuple[int, float]]] = [[] for _ in range(log.n_users)]
    play = KIND["play"]
    hits = {"frozen": 0, "online": 0, "refold": 0}
    targets = 0
    for r in np.flatnonzero(log.item >= 0):
        u, i = int(log.user[r]), int(log.item[r])
        if log.ts[r] >= split_ts:
            if warm[u] and log.kind[r] == play and i not in seen[u]:
                targets += 1
                mask = np.fromiter(seen[u], np.int64, len(seen[u]))
                vectors = {"frozen": frozen[u], "online": online[u]}
                if refold is not None:
                    its, ws = zip(*history[u], strict=True) if history[u] else ((), ())
                    vectors["refold"] = refold.fold_in(np.array(its, np.int64), np.array(ws, np.float64))
                for name, vec in vectors.items():
                    scores = v @ vec
                    scores[mask] = -np.inf
                    hits[name] += int(np.sum(scores >= scores[i]) - 1 < k)  # ties count against
            if weights[r] != 0:
                online[u] = model.update(online[u], [(i, float(weights[r]), int(log.ts[r]))])
        if train_w[r] > 0:
            seen[u].add(i)
        if train_w[r] != 0:
            history[u].append((i, float(train_w[r])))
    out = {name: hits[name] / max(targets, 1) for name in hits if name != "refold" or refold is not None}
    out["targets"] = float(targets)
    return out
