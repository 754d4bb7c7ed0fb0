"""The Redis backend of the online feature store.

Layout (``prefix`` defaults to ``sr``; every key is self-contained, so it works on Redis Cluster,
where a key's slot is its own):

``sr:u:{user_id}`` — STRING, one user's :class:`~models.features.state.UserStates` row as a
msgpack array (:class:`UserBlob`; :func:`decode_user_blob` shows one from ``redis-cli --no-raw
GET``). Only the worker that owns the user's partition writes it, and always whole (read, update,
``SET ... EX``), so a hash's per-field access would buy nothing; one packed value is one short
command per user instead of an ``HSET`` with ~80 arguments plus an ``EXPIRE``, and decodes ~5x
faster. Fields, in order:

======= ===============================================================================================
v       layout version (1)
n       counts ``[ev, play, comp, skip, rate, click, add]`` (``ev``: interactions, heartbeats excluded)
rsum    sum of ratings in thousandths of a star
last    ts (ms) of the newest interaction (``-2**63``: never)
dev     last known device code (0 unknown) · ``cty`` country code (0 unknown) · ``hr`` hour (-1)
ge      epoch of the genre sums (``ts // (8 * 14 days)``; ``-2**63``: none)
g       ``{genre: [sum of epoch ge-1, sum of epoch ge]}`` (fixed point, 2**20), non-zero genres only
rec     ``[[item_id, ts], ...]``: the last 20 distinct engaged items, most recent first
======= ===============================================================================================

TTL: ``USER_RETENTION_MS`` (365 days) + 30 days, set by every write. The features treat a user
idle for more than 365 days (event time) as new, on both paths, so an expired key reads the same
as a present one; the 30 days absorb the gap between wall-clock TTLs and event time.

``sr:i:{item_id}`` — HASH, one item's state, updated by *every* worker (a title is watched by
users of all partitions) with ``HINCRBY`` only: additions commute, so concurrent workers need no
read-modify-write and the sums equal the offline replay's whatever the interleaving. Values are
decimal integers. No TTL: the keys are bounded by the catalogue, and the all-time counts must
survive quiet months.

======================= ===========================================================================
field                   value
======================= ===========================================================================
play comp skip rate     counts per kind
rsum                    sum of ratings in thousandths of a star
imp click add           impressions (each time shown), clicks, saves
d:{epoch}               1-day-half-life popularity sum of epoch ``ts // 8 days`` (fixed point, 2**20)
w:{epoch}               7-day-half-life popularity sum of epoch ``ts // 56 days``
======================= ===========================================================================

A read needs the epochs of ``now`` and the one before. When a batch creates a new epoch field (its
``HINCRBY`` returns exactly the amount added), the next batch deletes that item's fields of
epochs 2 to 6 before it; a field missed by that (a worker restart, an item idle for over 5 epochs)
is never read and only costs memory.

Memory (``MEMORY USAGE``, Redis 7.0; generated worlds, see the integration test): a user ~0.5 KiB
on average, at most ~0.9 KiB (20 genres and a full recent list, half of it the item ids); an item
~120-220 bytes (a listpack-encoded hash).

Round trips: :meth:`RedisFeatureStore.apply` does two per batch: one pipelined ``GET`` of the
batch's users (skipped when no event changes a user), then one ``MULTI``/``EXEC`` with every write
(user values, item increments, deferred clean-ups, and whatever ``on_commit`` adds — the place for
a consumed offset, so that state and offset commit together). The stream worker runs the same steps
itself (:meth:`~RedisFeatureStore.plan`, :meth:`~RedisFeatureStore.queue_reads`,
:meth:`~RedisFeatureStore.queue_writes`, :meth:`~RedisFeatureStore.committed`) to share its round
trips with the other effects. :meth:`read` does one (``GET`` of the user and ``HMGET`` of each
candidate). ``MULTI`` spans keys of different slots, which Redis Cluster refuses: there, pass
``transaction=False`` (each command stays atomic; a crash mid-batch then needs the replay from the
last committed offset to be idempotent, which the user values are — they are overwritten — but the
item increments are not).

Cost: the client, not Redis, is the bottleneck: redis-py spends ~20 µs per pipelined command
(packing, and reading a ``QUEUED`` plus a result reply in a transaction), and a 1,000-event batch
is ~2,000 item increments. So with ``bulk=True`` (the worker's choice when the server runs Redis
Functions) the users are read with one ``MGET`` and the writes are three ``FCALL`` s
(:mod:`online_state.redis_functions`): the user values, and every item's increments with
the old-epoch clean-up done inside Redis, right when a new epoch field appears (same stored values
and the same reads; fields of old epochs just go one batch earlier).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from models.features import spec
from models.features.hashing import hash_str
from models.features.state import (
    ITEM_COUNT_NAMES,
    NO_ITEM_HASH,
    EventBatch,
    ItemStates,
    ItemStatic,
    UserStates,
    apply_user_events,
    item_deltas,
    user_event_mask,
)
from online_state.feature_store import OnlineFeatureStore, StateSnapshot
from online_state.redis_functions import hincr_many, set_many

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline

DEFAULT_USER_TTL_S: Final = spec.USER_RETENTION_MS // 1000 + 30 * 86_400
USER_BLOB_VERSION: Final = 1
_CLEANUP_EPOCHS: Final = range(2, 7)  # delete fields of epochs e-2 .. e-6 when epoch e starts


class UserBlob(msgspec.Struct, array_like=True, frozen=True):
    """The value of ``sr:u:{user_id}`` (a msgpack array; see the module docstring)."""

    v: int
    n: list[int]
    rsum: int
    last: int
    dev: int
    cty: int
    hr: int
    ge: int
    g: dict[str, tuple[int, int]]
    rec: list[tuple[str, int]]


_encode_blob = msgspec.msgpack.Encoder().encode
_decode_blob = msgspec.msgpack.Decoder(UserBlob).decode


def decode_user_blob(raw: bytes) -> UserBlob:
    """A user's value as a struct (for debugging: ``decode_user_blob(redis.get("sr:u:42"))``)."""
    blob = _decode_blob(raw)
    if blob.v != USER_BLOB_VERSION:
        raise ValueError(f"user state layout {blob.v} is not {USER_BLOB_VERSION}: rebuild the feature store")
    return blob


@dataclass(slots=True)
class ApplyPlan:
    """One batch on its way through :meth:`RedisFeatureStore.plan` .. :meth:`RedisFeatureStore.committed`."""

    batch: EventBatch
    touched: list[int]  # batch user rows whose state changes (read, then written)
    id_of: dict[int, str]  # item hash -> id, for the recent-items lists
    items_written: int = 0
    commands: int = 0
    # (reply index, key, prefix, epoch, amount) of the popularity increments (non-bulk path)
    pop_writes: list[tuple[int, str, str, int, int]] = field(default_factory=list)
    cleanup: dict[str, set[str]] = field(default_factory=dict)

    def stats(self, round_trips: int) -> ApplyStats:
        return ApplyStats(events=len(self.batch), users_written=len(self.touched), items_written=self.items_written,
                          commands=self.commands, round_trips=round_trips)


@dataclass(frozen=True, slots=True)
class ApplyStats:
    """What one :meth:`RedisFeatureStore.apply` did."""

    events: int = 0
    users_written: int = 0
    items_written: int = 0
    commands: int = 0  # write commands (MULTI/EXEC excluded); the read round trip has one GET per user
    round_trips: int = 0


class RedisFeatureStore(OnlineFeatureStore):
    """Feature state in Redis (layout in the module docstring), through ``redis.asyncio``.

    The client must return bytes (``decode_responses=False``, the default).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        static: ItemStatic,
        *,
        prefix: str = "sr",
        user_ttl_s: int | None = DEFAULT_USER_TTL_S,
        transaction: bool = True,
        bulk: bool = False,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisFeatureStore needs a client with decode_responses=False (it parses bytes)")
        self.client = client
        self.static = static
        self.prefix = prefix
        self.user_ttl_s = user_ttl_s
        self.transaction = transaction
        # bulk: one MGET for the users and the writes as FCALLs (redis_functions; the library must be
        # loaded); else one command per user and per item field (any Redis, fakeredis too).
        self.bulk = bulk
        self._genre_pos = {g: i for i, g in enumerate(static.genre_vocab)}
        self._cleanup: dict[str, set[str]] = {}  # item key -> old epoch fields to delete next batch

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}:u:{user_id}"

    def item_key(self, item_id: str) -> str:
        return f"{self.prefix}:i:{item_id}"

    # --- writes ----------------------------------------------------------------------------------

    async def apply(self, batch: EventBatch, *, on_commit: Callable[[Pipeline], None] | None = None) -> ApplyStats:
        """Apply one batch (keys are id strings): one read round trip for its users, one MULTI/EXEC.

        ``on_commit(pipe)`` may queue more commands into the same transaction. (The worker drives the
        same steps itself, :meth:`plan` .. :meth:`committed`, to share its round trips with other effects.)
        """
        if not len(batch):
            return ApplyStats()
        plan = self.plan(batch)
        round_trips = 0
        replies: list[Any] = []
        if plan.touched:
            read = self.client.pipeline(transaction=False)
            self.queue_reads(read, plan)
            replies = await read.execute()
            round_trips += 1
        pipe = self.client.pipeline(transaction=self.transaction)
        self.queue_writes(pipe, plan, replies)
        if on_commit is not None:
            on_commit(pipe)
        try:
            written = await pipe.execute()
        except BaseException:
            self.failed(plan)
            raise
        round_trips += 1
        self.committed(plan, written)
        return plan.stats(round_trips)

    def plan(self, batch: EventBatch) -> ApplyPlan:
        """What applying ``batch`` needs: the users whose state it changes (pure, no I/O)."""
        touched = np.unique(batch.user[user_event_mask(batch)]).tolist()
        return ApplyPlan(batch=batch, touched=touched,
                         id_of=dict(zip(batch.item_hash.tolist(), batch.item_keys, strict=True)))

    def queue_reads(self, pipe: Any, plan: ApplyPlan) -> int:
        """Queue the read of the plan's users on ``pipe``; returns the commands queued (their replies go,
        in order, to :meth:`queue_writes`)."""
        if not plan.touched:
            return 0
        keys = [self.user_key(plan.batch.user_keys[u]) for u in plan.touched]
        if self.bulk:
            pipe.mget(keys)
            return 1
        for key in keys:
            pipe.get(key)
        return len(keys)

    def queue_writes(self, pipe: Any, plan: ApplyPlan, replies: list[Any]) -> int:
        """Update the users from ``replies`` (of :meth:`queue_reads`) and queue every write of the batch on
        ``pipe`` (a transaction), first thing in it: :meth:`committed` finds its replies at the front."""
        batch, touched, id_of = plan.batch, plan.touched, plan.id_of
        user_ids: Sequence[str] = batch.user_keys
        states = UserStates.empty(len(user_ids), self.static.n_genres)
        if touched:
            raws = replies[0] if self.bulk else replies
            self._decode_users(raws, states, touched, id_of)
            apply_user_events(states, batch, self.static)
        deltas = item_deltas(batch)
        plan.items_written = len(deltas.item)
        blobs = self._encode_users(states, touched, id_of)
        item_keys: Sequence[str] = batch.item_keys
        if self.bulk:
            plan.commands = self._queue_bulk(pipe, [self.user_key(user_ids[u]) for u in touched], blobs, deltas,
                                             item_keys)
            return plan.commands
        for u, blob in zip(touched, blobs, strict=True):
            pipe.set(self.user_key(user_ids[u]), blob, ex=self.user_ttl_s)
        commands = len(touched)
        for pos, counts in zip(deltas.item.tolist(), deltas.counts.tolist(), strict=True):
            key = self.item_key(item_keys[pos])
            for name, value in zip(ITEM_COUNT_NAMES, counts, strict=True):
                if value:
                    pipe.hincrby(key, name, value)
                    commands += 1
        # Remember which replies are popularity increments, to spot newly created epoch fields.
        for (field_prefix, _), pop in zip(spec.POP_HALF_LIVES, deltas.pop, strict=True):
            for pos, epoch, amount in zip(pop.item.tolist(), pop.epoch.tolist(), pop.amount.tolist(), strict=True):
                key = self.item_key(item_keys[pos])
                pipe.hincrby(key, f"{field_prefix}:{epoch}", amount)
                plan.pop_writes.append((commands, key, field_prefix, epoch, amount))
                commands += 1
        plan.cleanup, self._cleanup = self._cleanup, {}
        for key, stale in plan.cleanup.items():
            pipe.hdel(key, *sorted(stale))
            commands += 1
        plan.commands = commands
        return commands

    def _queue_bulk(self, pipe: Any, user_keys: list[str], blobs: list[bytes], deltas: Any,
                    item_keys: Sequence[str]) -> int:
        """The batch's writes as three ``FCALL`` s (:mod:`online_state.redis_functions`): the
        user values, then every item's count and popularity increments (old epochs cleaned up inside)."""
        commands = set_many(pipe, user_keys, blobs, self.user_ttl_s)
        entries: dict[int, tuple[list[str], list[str]]] = {}
        counts = deltas.counts
        rows, cols = np.nonzero(counts)
        values = counts[rows, cols].tolist()
        positions = deltas.item.tolist()
        for row, col, value in zip(rows.tolist(), cols.tolist(), values, strict=True):
            entry = entries.get(positions[row])
            if entry is None:
                entry = entries[positions[row]] = ([], [])
            entry[0].extend((ITEM_COUNT_NAMES[col], str(value)))
        for (field_prefix, _), pop in zip(spec.POP_HALF_LIVES, deltas.pop, strict=True):
            for pos, epoch, amount in zip(pop.item.tolist(), pop.epoch.tolist(), pop.amount.tolist(), strict=True):
                entry = entries.get(pos)
                if entry is None:
                    entry = entries[pos] = ([], [])
                entry[1].extend((field_prefix, str(epoch), str(amount)))
        if entries:
            commands += hincr_many(pipe, [self.item_key(item_keys[pos]) for pos in entries], list(entries.values()))
        return commands

    def committed(self, plan: ApplyPlan, replies: list[Any]) -> None:
        """After the EXEC (``replies``: the transaction's, the store's first): note the popularity fields
        this batch created, whose old epochs the next batch deletes (the bulk path does that in Redis)."""
        for index, key, field_prefix, epoch, amount in plan.pop_writes:
            if replies[index] == amount:  # this batch created the field: a new epoch for the item
                self._cleanup.setdefault(key, set()).update(f"{field_prefix}:{epoch - k}" for k in _CLEANUP_EPOCHS)

    def failed(self, plan: ApplyPlan) -> None:
        """The transaction did not commit: nothing was deleted, so the clean-ups are due again."""
        self._cleanup = plan.cleanup | self._cleanup

    def _encode_users(self, states: UserStates, rows: list[int], id_of: dict[int, str]) -> list[bytes]:
        vocab = self.static.genre_vocab
        sub = states.take(np.array(rows, np.int64))
        out = []
        for k in range(len(rows)):
            sums = sub.genre_sums[k]  # (2, G)
            genres = {vocab[g]: (int(sums[0, g]), int(sums[1, g])) for g in np.flatnonzero(sums.any(axis=0)).tolist()}
            recent = [(id_of[h], t) for h, t in zip(sub.recent_item[k].tolist(), sub.recent_ts[k].tolist(), strict=True)
                      if h != NO_ITEM_HASH]
            out.append(_encode_blob(UserBlob(
                v=USER_BLOB_VERSION, n=sub.counts[k].tolist(), rsum=int(sub.rating_milli[k]), last=int(sub.last_ts[k]),
                dev=int(sub.device[k]), cty=int(sub.country[k]), hr=int(sub.hour[k]), ge=int(sub.genre_epoch[k]),
                g=genres, rec=recent,
            )))
        return out

    def _decode_users(
        self, raws: list[bytes | None], states: UserStates, rows: list[int], id_of: dict[int, str]
    ) -> None:
        """Fill ``rows`` of ``states`` from ``GET`` replies (``None``: a new or expired user)."""
        for u, raw in zip(rows, raws, strict=True):
            if raw is None:
                continue
            blob = decode_user_blob(raw)
            states.counts[u] = blob.n
            states.rating_milli[u] = blob.rsum
            states.last_ts[u] = blob.last
            states.device[u] = blob.dev
            states.country[u] = blob.cty
            states.hour[u] = blob.hr
            states.genre_epoch[u] = blob.ge
            for genre, pair in blob.g.items():
                # A genre no longer in the bundle's vocabulary is dropped (and gone at the next write).
                g = self._genre_pos.get(genre)
                if g is not None:
                    states.genre_sums[u, :, g] = pair
            for slot, (item_id, ts) in enumerate(blob.rec[: spec.RECENT_ITEMS]):
                h = hash_str(item_id)
                id_of[h] = item_id
                states.recent_item[u, slot] = h
                states.recent_ts[u, slot] = ts

    # --- reads -----------------------------------------------------------------------------------

    def _item_fields(self, now_ts: int) -> tuple[list[str], tuple[int, ...]]:
        epochs = ItemStates.epochs_at(now_ts)
        fields = list(ITEM_COUNT_NAMES)
        for (field_prefix, _), end in zip(spec.POP_HALF_LIVES, epochs, strict=True):
            fields += [f"{field_prefix}:{end - 1}", f"{field_prefix}:{end}"]
        return fields, epochs

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        """The user and the candidates' state in one pipelined round trip."""
        fields, epochs = self._item_fields(now_ts)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.user_key(user_id))
        for item_id in item_ids:
            pipe.hmget(self.item_key(item_id), fields)
        replies = await pipe.execute()
        user = UserStates.empty(1, self.static.n_genres)
        self._decode_users(replies[:1], user, [0], {})
        values = self._parse_ints(replies[1:], len(item_ids), len(fields))
        n_counts = len(ITEM_COUNT_NAMES)
        items = ItemStates(counts=values[:, :n_counts], pop=values[:, n_counts:].reshape(len(item_ids), len(epochs), 2),
                           epoch=epochs)
        index, hashes = self.static.lookup(item_ids)
        return StateSnapshot(user_id=user_id, user=user, items=items, static=self.static.rows(index, hashes),
                             now_ts=now_ts)

    @staticmethod
    def _parse_ints(rows: list[list[Any]], n: int, width: int) -> NDArray[np.int64]:
        if n == 0:
            return np.zeros((0, width), np.int64)
        flat = [b"0" if v is None else v for row in rows for v in row]
        # numpy parses the decimal byte strings in C: ~10x faster than int() per value.
        return np.array(flat, dtype=np.bytes_).astype(np.int64).reshape(n, width)
