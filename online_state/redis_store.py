"""The Redis backend of the online feature store (the values' format: :mod:`online_state.feature_codec`).

Users: ``{prefix}:u:{user}`` is written only by the worker that owns the user's partition, always whole (read,
update, ``SET ... EX``). Its TTL, ``USER_RETENTION_MS`` + 30 days, is refreshed by every write: the features
treat a user idle for longer than the retention (event time) as new on both paths, so an expired key reads the
same as a present one; the 30 days absorb the gap between wall-clock TTLs and event time.

Items: ``{prefix}:i:{item}`` is updated by *every* worker (a title is watched by users of all partitions) with
``HINCRBY`` only: additions commute, so concurrent workers need no read-modify-write and the sums equal the
offline replay's whatever the interleaving. No TTL: the keys are bounded by the catalogue, and the all-time
counts must survive quiet months. When a batch creates a new popularity epoch field (its ``HINCRBY`` returns
exactly the amount added), the next batch deletes that item's fields of epochs 2 to 6 before it; a field missed
by that (a worker restart, an item idle for over 5 epochs) is never read and only costs memory.

Round trips: :meth:`RedisFeatureStore.apply` does two per batch: one pipelined read of the batch's users
(skipped when no event changes a user), then one ``MULTI``/``EXEC`` with every write and whatever ``on_commit``
adds (the place for a consumed offset, so that state and offset commit together). The stream worker runs the
same steps itself (:meth:`~RedisFeatureStore.plan`, :meth:`~RedisFeatureStore.queue_reads`,
:meth:`~RedisFeatureStore.queue_writes`, :meth:`~RedisFeatureStore.committed`) to share its round trips with
the other effects. :meth:`~RedisFeatureStore.read` does one. ``MULTI`` spans keys of different slots, which
Redis Cluster refuses: there, pass ``transaction=False`` (each command stays atomic; a crash mid-batch then
needs the replay from the last committed offset to be idempotent, which the user values are, being overwritten,
but the item increments are not).

``bulk=True`` (the worker's choice when the server runs Redis Functions): the users are read with one ``MGET``
and the writes are ``FCALL`` s (:mod:`online_state.redis_functions`), with the old-epoch clean-up done inside
Redis right when a new epoch field appears: the same stored values, for a fraction of the client's per-command
cost, which bounds a batch's apply time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from models.features import spec
from models.features.state import (
    ITEM_COUNT_NAMES,
    EventBatch,
    ItemStates,
    ItemStatic,
    StaticRows,
    UserStates,
    apply_user_events,
    item_deltas,
    user_event_mask,
)
from online_state.feature_codec import StoredUser, UserStateCodec, item_fields, item_states, parse_item_rows
from online_state.feature_store import OnlineFeatureStore, StateSnapshot
from online_state.item_state import VERSION_FIELD
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.redis_functions import decode_rows, hincr_many, set_many

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline

DEFAULT_USER_TTL_S: Final = spec.USER_RETENTION_MS // 1000 + 30 * 86_400
_CLEANUP_EPOCHS: Final = range(2, 7)  # delete fields of epochs e-2 .. e-6 when epoch e starts


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
    # With read_back: the item ids whose hash the transaction reads back, and where the replies are (the
    # bulk path: one FCALL reply of every row; else one HGETALL reply per item).
    row_items: list[str] = field(default_factory=list)
    row_replies: list[int] = field(default_factory=list)
    # After the EXEC: item id -> (its hash's version, the hash as HGETALL read it: flat list or dict).
    rows: dict[str, tuple[int, Any]] = field(default_factory=dict)

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
        keys: KeyLayout = DEFAULT_KEYS,
        user_ttl_s: int | None = DEFAULT_USER_TTL_S,
        transaction: bool = True,
        bulk: bool = False,
        read_back: bool = False,
    ) -> None:
        pool = getattr(client, "connection_pool", None)  # a cluster client has one per node, same options
        options = pool.connection_kwargs if pool is not None else client.get_connection_kwargs()
        if options.get("decode_responses"):
            raise ValueError("RedisFeatureStore needs a client with decode_responses=False (it parses bytes)")
        self.client = client
        self.static = static
        self.keys = keys
        self.user_ttl_s = user_ttl_s
        self.transaction = transaction
        # bulk: one MGET for the users and the writes as FCALLs (redis_functions; the library must be
        # loaded); else one command per user and per item field (any Redis, fakeredis too).
        self.bulk = bulk
        # read_back: every item write also bumps the hash's version and reads the hash back in the same
        # transaction (plan.rows after the EXEC), for the servers' copies (online_state.item_state).
        self.read_back = read_back
        self.codec = UserStateCodec(static.genre_vocab)
        self._cleanup: dict[str, set[str]] = {}  # item key -> old epoch fields to delete next batch

    def with_static(self, static: ItemStatic) -> RedisFeatureStore:
        """This store over a newer catalogue (a worker's grows as titles arrive); the epoch clean-ups still
        pending carry over."""
        store = RedisFeatureStore(self.client, static, keys=self.keys, user_ttl_s=self.user_ttl_s,
                                  transaction=self.transaction, bulk=self.bulk, read_back=self.read_back)
        store._cleanup = self._cleanup
        return store

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
        keys = [self.keys.user_state(plan.batch.user_keys[u]) for u in plan.touched]
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
            self.codec.fill_raw(raws, states, touched, id_of)
            apply_user_events(states, batch, self.static)
        deltas = item_deltas(batch)
        plan.items_written = len(deltas.item)
        blobs = self.codec.encode(states, touched, id_of)
        item_keys: Sequence[str] = batch.item_keys
        if self.bulk:
            plan.commands = self._queue_bulk(pipe, [self.keys.user_state(user_ids[u]) for u in touched], blobs, deltas,
                                             item_keys, plan)
            return plan.commands
        for u, blob in zip(touched, blobs, strict=True):
            pipe.set(self.keys.user_state(user_ids[u]), blob, ex=self.user_ttl_s)
        commands = len(touched)
        for pos, counts in zip(deltas.item.tolist(), deltas.counts.tolist(), strict=True):
            key = self.keys.item_state(item_keys[pos])
            for name, value in zip(ITEM_COUNT_NAMES, counts, strict=True):
                if value:
                    pipe.hincrby(key, name, value)
                    commands += 1
        # Remember which replies are popularity increments, to spot newly created epoch fields.
        for (field_prefix, _), pop in zip(spec.POP_HALF_LIVES, deltas.pop, strict=True):
            for pos, epoch, amount in zip(pop.item.tolist(), pop.epoch.tolist(), pop.amount.tolist(), strict=True):
                key = self.keys.item_state(item_keys[pos])
                pipe.hincrby(key, f"{field_prefix}:{epoch}", amount)
                plan.pop_writes.append((commands, key, field_prefix, epoch, amount))
                commands += 1
        plan.cleanup, self._cleanup = self._cleanup, {}
        for key, stale in plan.cleanup.items():
            pipe.hdel(key, *sorted(stale))
            commands += 1
        if self.read_back:
            for pos in deltas.item.tolist():
                key = self.keys.item_state(item_keys[pos])
                pipe.hincrby(key, VERSION_FIELD, 1)
                pipe.hgetall(key)
                plan.row_items.append(item_keys[pos])
                plan.row_replies.append(commands + 1)
                commands += 2
        plan.commands = commands
        return commands

    def _queue_bulk(self, pipe: Any, user_keys: list[str], blobs: list[bytes], deltas: Any,
                    item_keys: Sequence[str], plan: ApplyPlan) -> int:
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
            if self.read_back:
                plan.row_items = [item_keys[pos] for pos in entries]
                plan.row_replies = [commands]
            commands += hincr_many(pipe, [self.keys.item_state(item_keys[pos]) for pos in entries],
                                   list(entries.values()), rows=self.read_back)
        return commands

    def committed(self, plan: ApplyPlan, replies: list[Any]) -> None:
        """After the EXEC (``replies``: the transaction's, the store's first): note the popularity fields
        this batch created, whose old epochs the next batch deletes (the bulk path does that in Redis)."""
        for index, key, field_prefix, epoch, amount in plan.pop_writes:
            if replies[index] == amount:  # this batch created the field: a new epoch for the item
                self._cleanup.setdefault(key, set()).update(f"{field_prefix}:{epoch - k}" for k in _CLEANUP_EPOCHS)
        if plan.row_items:
            if self.bulk:
                rows: list[tuple[int, Any]] = decode_rows(replies[plan.row_replies[0]])
                plan.rows = dict(zip(plan.row_items, rows, strict=True))
            else:  # HINCRBY v, then HGETALL (a dict by redis-py's callback); None where the write was skipped
                # (the per-slot protocol: that slot had the batch already, streams.slot_protocol)
                plan.rows = {item: (int(replies[i - 1]), replies[i])
                             for item, i in zip(plan.row_items, plan.row_replies, strict=True)
                             if replies[i] is not None}

    def failed(self, plan: ApplyPlan) -> None:
        """The transaction did not commit: nothing was deleted, so the clean-ups are due again."""
        self._cleanup = plan.cleanup | self._cleanup

    # --- reads -----------------------------------------------------------------------------------

    def item_fields(self, now_ts: int) -> tuple[list[str], tuple[int, ...]]:
        """The item hash fields a read at ``now_ts`` needs, and ``now``'s popularity epochs."""
        return item_fields(now_ts)

    def user_states(self, stored: StoredUser) -> UserStates:
        """A user's value, as read, as a one-row :class:`UserStates` of this store's genre vocabulary."""
        return self.codec.user_states(stored)

    def item_rows(self, item_ids: Sequence[str], values: NDArray[np.int64], epochs: tuple[int, ...]
                  ) -> tuple[ItemStates, StaticRows]:
        """The candidates' state and static rows from their :meth:`item_fields` values (rows in order)."""
        index, hashes = self.static.lookup(item_ids)
        return item_states(values, epochs), self.static.rows(index, hashes)

    def snapshot(self, user_id: str, user: UserStates, item_ids: Sequence[str], values: NDArray[np.int64],
                 epochs: tuple[int, ...], now_ts: int) -> StateSnapshot:
        """The snapshot of a read: ``values`` holds the candidates' :meth:`item_fields` rows, in order."""
        items, static = self.item_rows(item_ids, values, epochs)
        return StateSnapshot(user_id=user_id, user=user, items=items, static=static, now_ts=now_ts)

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int, *,
                   user: StoredUser | None = None) -> StateSnapshot:
        """The user and the candidates' state in one pipelined round trip (``user``: the user's value when
        the caller read it already; then only the items are read)."""
        fields, epochs = item_fields(now_ts)
        pipe = self.client.pipeline(transaction=False)
        if user is None:
            pipe.get(self.keys.user_state(user_id))
        for item_id in item_ids:
            pipe.hmget(self.keys.item_state(item_id), fields)
        replies = await pipe.execute()
        if user is None:
            user, replies = StoredUser.decode(replies[0]), replies[1:]
        return self.snapshot(user_id, self.user_states(user), item_ids, parse_item_rows(replies, len(fields)),
                             epochs, now_ts)
