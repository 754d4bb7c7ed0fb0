"""Online user vectors in Redis, kept by the worker as one :class:`~streams.effects.Effect`.

Key :meth:`~online_state.keys.KeyLayout.user_vector`, a plain string, TTL 400 days refreshed on every write;
its value (version, CF space, float32 vector) is packed by :mod:`online_state.user_vectors`. A value of another
space (a retrained bundle) reads as absent: the user then restarts from their bundle vector, or zeros. The
update rule is :class:`models.online_user.OnlineUserModel`'s.

Exactly-once: ``read`` GETs each distinct user of the batch once; ``write`` is a pure function of
(events, replies) and queues one SET per user whose vector changed. Interactions are keyed by user
id, so the partition's worker owns these keys and a plain SET is safe (no cross-partition races).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.cf import CFModel
from models.dataset import KIND
from models.item_vector_codec import space_id
from models.online_user import OnlineUserModel, online_weights
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.redis_functions import set_many
from online_state.user_vectors import pack_user_vector, unpack_user_vector
from schemas.events import InteractionEvent, Rating
from streams.effects import Batch, Effect, EffectContext, Reads

DEFAULT_TTL_S: Final = 400 * 86_400

# Per batch: its distinct users (first-seen order) and, per event that moves a vector, (owner row, item row, weight).
_Signals = tuple[list[str], NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


class UserVectorEffect(Effect[InteractionEvent]):
    """Applies a batch's interactions to the users' online vectors (see the module docstring).

    ``initial`` (optional) gives a user's starting vector when Redis has none, e.g. their bundle
    CF vector: ``lambda uid: cf.user_vectors[row] if (row := user_index.get(uid)) is not None else None``.
    Users with neither start from ``model.start`` (zeros).
    """

    name = "user_vectors"

    def __init__(
        self,
        model: OnlineUserModel,
        item_index: dict[str, int],
        *,
        keys: KeyLayout = DEFAULT_KEYS,
        ttl_s: int | None = DEFAULT_TTL_S,
        initial: Callable[[str], NDArray[np.floating] | None] | None = None,
        bulk: bool = False,
    ) -> None:
        self.model = model
        # bulk: one MGET and one FCALL per batch (online_state.redis_functions, loaded)
        self.bulk = bulk
        self.item_index = item_index
        self.keys = keys
        self.ttl_s = ttl_s
        self.initial = initial
        self.space = space_id(model.item_vectors)
        self._kind_code = {name: code for name, code in KIND.items()}

    def _signals(self, events: Sequence[InteractionEvent]) -> _Signals:
        """Distinct users (first-seen order) and, per event that can move a vector, (owner, item, weight)."""
        users: dict[str, int] = {}
        owner: list[int] = []
        items: list[int] = []
        kinds: list[int] = []
        values: list[float] = []
        for event in events:
            item_id = getattr(event, "item_id", None)
            if item_id is None:
                continue  # impressions and profile upserts carry no single-item feedback
            item = self.item_index.get(item_id)
            if item is None:
                continue  # a title the bundle does not know has no vector to learn against
            kind = type(event).__struct_config__.tag
            code = self._kind_code.get(str(kind))
            if code is None:
                continue
            owner.append(users.setdefault(event.user_id, len(users)))
            items.append(item)
            kinds.append(code)
            values.append(event.value if isinstance(event, Rating) else 0.0)
        weights = online_weights(np.array(kinds, np.int8), np.array(values, np.float32))
        keep = weights != 0
        return (list(users), np.array(owner, np.int64)[keep], np.array(items, np.int64)[keep], weights[keep])

    def read(self, pipe: Any, batch: Batch[InteractionEvent]) -> Reads[_Signals]:
        # write() needs the same signals: computed once per batch, handed over in the Reads.
        signals = self._signals(batch.events)
        users, owner, _, _ = signals
        active = [users[o] for o in dict.fromkeys(owner.tolist())]
        if self.bulk:
            if active:
                pipe.mget([self.keys.user_vector(user_id) for user_id in active])
            return Reads(queued=1 if active else 0, state=signals)
        for user_id in active:
            pipe.get(self.keys.user_vector(user_id))
        return Reads(queued=len(active), state=signals)

    def write(self, pipe: Any, batch: Batch[InteractionEvent], reads: Reads[_Signals]) -> None:
        signals = reads.state if reads.state is not None else self._signals(batch.events)
        users, owner, items, weights = signals
        rows = list(dict.fromkeys(owner.tolist()))  # the users read() asked for, same order
        if not rows:
            return
        replies = reads.replies
        if self.bulk:
            replies = replies[0] if replies else []
        if len(replies) != len(rows):
            raise ValueError(f"user_vectors: {len(rows)} reads queued but {len(replies)} replies")
        remap = np.full(len(users), -1, np.int64)
        remap[rows] = np.arange(len(rows))
        start = np.empty((len(rows), self.model.dim), np.float32)
        versions = np.zeros(len(rows), np.int64)
        for j, (row, reply) in enumerate(zip(rows, replies, strict=True)):
            vector, versions[j] = unpack_user_vector(reply, space=self.space, dim=self.model.dim)
            if vector is None and self.initial is not None:
                init = self.initial(users[row])
                vector = None if init is None else np.asarray(init, np.float32)
            start[j] = self.model.start if vector is None else vector
        new = self.model.update_many(start, remap[owner], items, weights)
        counts = np.bincount(remap[owner], minlength=len(rows))
        keys = [self.keys.user_vector(users[row]) for row in rows]
        values = [pack_user_vector(new[j], int(versions[j] + counts[j]), self.space) for j in range(len(rows))]
        if self.bulk:
            set_many(pipe, keys, values, self.ttl_s)
            return
        for key, value in zip(keys, values, strict=True):
            pipe.set(key, value, ex=self.ttl_s)


# --- the worker's effect (listed in streams.effects_registry) ---------------------------------------


def make_effect(ctx: EffectContext) -> UserVectorEffect | None:
    """Online user vectors need the bundle's CF item vectors; without a bundle the effect is off."""
    if ctx.bundle is None:
        return None
    cf = CFModel.load(ctx.bundle.file("cf.npz"))
    item_ids = ctx.bundle.json("item_ids")
    user_ids = ctx.bundle.json("user_ids")
    user_row = {user_id: row for row, user_id in enumerate(user_ids)}

    def initial(user_id: str) -> NDArray[np.float32] | None:
        # A user known at training time starts from their trained vector, a new one from zeros.
        row = user_row.get(user_id)
        return cf.user_vectors[row] if row is not None and cf.trained_users[row] else None

    model = OnlineUserModel(cf.item_vectors)
    return UserVectorEffect(model, {item_id: i for i, item_id in enumerate(item_ids)}, keys=ctx.keys,
                            initial=initial, bulk=ctx.bulk)
