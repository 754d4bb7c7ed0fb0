"""Online user vectors in Redis, kept by the worker as one :class:`~streams.effects.Effect`.

Key ``{prefix}:uv:{user_id}`` (``prefix`` = ``sr``), a plain string, TTL 400 days refreshed on
every write. Value (little-endian)::

    uint32 version      events applied so far (mod 2**32): lets a reader tell a fresher value
    uint32 space        crc32 of the item vectors the user vector was learnt against
    float32[d] vector

so 8 + 4·d bytes per user (264 at d = 64, plus Redis' ~70 bytes of key and overhead). ``space``
matters after a retrain: a new bundle has a new CF space in which an old vector scores garbage;
values of another space are read as absent (the user then restarts from their bundle vector, or
zeros). The update rule is :class:`models.online_user.OnlineUserModel`'s.

Exactly-once: ``read`` GETs each distinct user of the batch once; ``write`` is a pure function of
(events, replies) and queues one SET per user whose vector changed. Interactions are keyed by user
id, so the partition's worker owns these keys and a plain SET is safe (no cross-partition races).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.dataset import KIND
from models.online_user import OnlineUserModel, online_weights
from online_state.redis_functions import set_many
from schemas.events import InteractionEvent, Rating
from streams.effects import BatchInfo

DEFAULT_TTL_S: Final = 400 * 86_400
_HEADER: Final = struct.Struct("<II")


def space_id(item_vectors: NDArray[np.floating]) -> int:
    """crc32 of the float32 bytes of the item vectors: the id of the space user vectors live in."""
    return zlib.crc32(np.ascontiguousarray(item_vectors, "<f4").tobytes())


def pack_user_vector(vector: NDArray[np.floating], version: int, space: int) -> bytes:
    return _HEADER.pack(version & 0xFFFFFFFF, space & 0xFFFFFFFF) + np.ascontiguousarray(vector, "<f4").tobytes()


def unpack_user_vector(
    value: bytes | None, *, space: int | None = None, dim: int | None = None
) -> tuple[NDArray[np.float32] | None, int]:
    """``(vector, version)``; ``(None, 0)`` for no value, a malformed one, or one of another space/dim."""
    if value is None or len(value) < _HEADER.size or (len(value) - _HEADER.size) % 4:
        return None, 0
    version, stored_space = _HEADER.unpack_from(value)
    vector = np.frombuffer(value, "<f4", offset=_HEADER.size).astype(np.float32)
    if (space is not None and stored_space != space) or (dim is not None and vector.size != dim):
        return None, 0
    return vector, int(version)


async def read_user_vector(
    redis: Any, user_id: str, *, prefix: str = "sr", space: int | None = None, dim: int | None = None
) -> tuple[NDArray[np.float32] | None, int]:
    """The server's read: ``(vector, version)`` of a user, ``(None, 0)`` when there is none.

    Pass ``space`` (:func:`space_id` of the serving bundle's item vectors) to ignore vectors
    learnt against another bundle.
    """
    return unpack_user_vector(await redis.get(user_key(prefix, user_id)), space=space, dim=dim)


def user_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:uv:{user_id}"


class UserVectorEffect:
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
        prefix: str = "sr",
        ttl_s: int | None = DEFAULT_TTL_S,
        initial: Callable[[str], NDArray[np.floating] | None] | None = None,
        bulk: bool = False,
    ) -> None:
        self.model = model
        # bulk: one MGET and one FCALL per batch (online_state.redis_functions, loaded)
        self.bulk = bulk
        # read() and write() of one batch need the same signals: computed once (keyed by the events list)
        self._signals_of: dict[int, tuple[Sequence[InteractionEvent], Any]] = {}
        self.item_index = item_index
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.initial = initial
        self.space = space_id(model.item_vectors)
        self._kind_code = {name: code for name, code in KIND.items()}

    def _signals(self, events: Sequence[InteractionEvent]) -> tuple[list[str], NDArray[np.int64], NDArray[
            np.int64], NDArray[np.float32]]:
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

    def _cached_signals(self, events: Sequence[InteractionEvent], *, keep: bool) -> Any:
        found = self._signals_of.get(id(events))
        if found is not None and found[0] is events:
            if not keep:
                del self._signals_of[id(events)]
            return found[1]
        signals = self._signals(events)
        if keep:
            if len(self._signals_of) >= 64:  # batches whose write never came (a failed batch)
                self._signals_of.clear()
            self._signals_of[id(events)] = (events, signals)
        return signals

    def read(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo) -> int:
        users, owner, _, _ = self._cached_signals(events, keep=True)
        active = [users[o] for o in dict.fromkeys(owner.tolist())]
        if self.bulk:
            if not active:
                return 0
            pipe.mget([user_key(self.prefix, user_id) for user_id in active])
            return 1
        for user_id in active:
            pipe.get(user_key(self.prefix, user_id))
        return len(active)

    def write(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo, replies: list[Any]) -> None:
        users, owner, items, weights = self._cached_signals(events, keep=False)
        rows = list(dict.fromkeys(owner.tolist()))  # the users read() asked for, same order
        if not rows:
            return
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
        keys = [user_key(self.prefix, users[row]) for row in rows]
        values = [pack_user_vector(new[j], int(versions[j] + counts[j]), self.space) for j in range(len(rows))]
        if self.bulk:
            set_many(pipe, keys, values, self.ttl_s)
            return
        for key, value in zip(keys, values, strict=True):
            pipe.set(key, value, ex=self.ttl_s)


# --- worker registry (streams.worker discovers these) ---------------------------------------------


def make_effect(ctx: Any) -> UserVectorEffect | None:
    """Online user vectors need the bundle's CF item vectors; without a bundle the effect is off."""
    if ctx.bundle is None:
        return None
    from models.cf import CFModel

    cf = CFModel.load(ctx.bundle.file("cf.npz"))
    item_ids = ctx.bundle.json("item_ids")
    user_ids = ctx.bundle.json("user_ids")
    user_row = {user_id: row for row, user_id in enumerate(user_ids)}

    def initial(user_id: str) -> NDArray[np.float32] | None:
        # A user known at training time starts from their trained vector, a new one from zeros.
        row = user_row.get(user_id)
        return cf.user_vectors[row] if row is not None and cf.trained_users[row] else None

    model = OnlineUserModel(cf.item_vectors)
    return UserVectorEffect(model, {item_id: i for i, item_id in enumerate(item_ids)}, prefix=ctx.prefix,
                            initial=initial, bulk=getattr(ctx, "bulk", False))
