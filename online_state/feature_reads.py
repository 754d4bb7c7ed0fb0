"""The server's read of the candidates' feature state: one round trip, with the rows fetched by one read-only
Lua script, and kept for a short while per process.

``RedisFeatureStore.read`` queues one ``HMGET`` per candidate: one round trip, but redis-py spends tens of µs
of client CPU per queued command. Here the same ``HMGET`` s run inside Redis, in one script (``EVALSHA``) that
returns every row packed as one msgpack string, which msgspec unpacks in C. Keys and fields come from the store
(:class:`~online_state.keys.KeyLayout`, :func:`~online_state.feature_codec.item_fields`); the result is the
same :class:`~online_state.feature_store.StateSnapshot`. Values travel as Lua numbers (doubles): exact for
integers below 2**53, which the counters and the fixed-point decayed sums stay far below. A server without Lua
scripting, and Redis Cluster (the candidates' keys span slots), fall back to ``store.read``.

The user's own value is read fresh for every request (it is what real-time learning changes per event), once:
the request's first read (:func:`~online_state.reads.read_online_state`) hands it over as a
:class:`~online_state.feature_codec.StoredUser`.

**Item state held in process** (``table``, :mod:`online_state.item_state`): when the server's copy of every
title's state covers the read (loaded, and ``now``'s epochs held), the candidates' rows come from it and the
read sends nothing to Redis. Otherwise (not loaded yet, or a backtest far in the past) the rows are read
from Redis as below.

**Item state cache** (``ttl_s`` > 0, without a table): an item's counters are the same for every request and
move slowly, while re-reading hundreds of rows costs every request Redis time. So the rows are kept in one
numpy matrix per process, aligned to item ids, with the time each was fetched;
a request fetches only its candidates whose row
is older than ``ttl_s`` and reads the rest from the matrix. An item's counters may so lag by up to ``ttl_s``;
replays and evaluations that need exact point-in-time rows use ``ttl_s`` = 0. The matrix is dropped when
``now``'s popularity epochs change (other fields).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np
import redis.asyncio.cluster as aiocluster
from numpy.typing import NDArray

from models.features.state import ItemStates, StaticRows
from online_state.feature_codec import StoredUser, item_fields, item_states
from online_state.feature_store import StateSnapshot
from online_state.item_state import ItemStateTable
from online_state.redis_store import RedisFeatureStore

HMGET_MANY: Final = """
local fields = ARGV
local out = {}
for i = 1, #KEYS do
  local row = redis.call('HMGET', KEYS[i], unpack(fields))
  for j = 1, #row do row[j] = tonumber(row[j]) or 0 end
  out[i] = row
end
return cmsgpack.pack(out)
"""

_decode = msgspec.msgpack.Decoder(list[list[int]]).decode


class FeatureReader:
    """Reads a :class:`StateSnapshot` like ``store.read``, with the candidates' rows fetched by one script
    (and, with ``ttl_s`` > 0, kept for that long: see the module docstring)."""

    def __init__(self, store: RedisFeatureStore, ttl_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, table: ItemStateTable | None = None) -> None:
        self.store = store
        # Every title's state held in this process (online_state.item_state): when it covers a read, the
        # candidates' rows come from it and the read does no I/O.
        self.table = table
        # False: the rows are read by ``store.read``'s pipelined HMGETs. From the start on Redis Cluster (a script
        # may only touch keys of one slot, the candidates' hashes are in many; the cluster client sends each
        # master its HMGETs at once), elsewhere once the server refused the script (no Lua).
        self.scripting = not isinstance(store.client, aiocluster.RedisCluster)
        self.script = store.client.register_script(HMGET_MANY) if self.scripting else None
        self.ttl_s = ttl_s
        self._clock = clock
        self._epochs: tuple[int, ...] | None = None
        self._row: dict[str, int] = {}
        self._ids: list[str] = []
        self._values = np.zeros((0, 0), np.int64)
        self._fetched = np.zeros(0, np.float64)
        self.fetched_rows = 0  # rows read from Redis so far (metrics, tests)
        self.held_reads = 0  # reads answered from the table (no I/O)

    def _cached_rows(self, item_ids: Sequence[str], n_fields: int, epochs: tuple[int, ...]) -> NDArray[np.int64]:
        """Matrix rows of ``item_ids`` (new ids get rows that count as never fetched)."""
        if epochs != self._epochs:  # other popularity fields from now on: start over
            self._epochs, self._row, self._ids = epochs, {}, []
            self._values, self._fetched = np.zeros((0, n_fields), np.int64), np.zeros(0, np.float64)
        row = self._row
        for item in item_ids:
            if item not in row:
                row[item] = len(self._ids)
                self._ids.append(item)
        if len(self._ids) > len(self._fetched):
            grow = max(len(self._ids), 2 * len(self._fetched)) - len(self._fetched)
            self._values = np.vstack([self._values, np.zeros((grow, n_fields), np.int64)])
            self._fetched = np.concatenate([self._fetched, np.full(grow, -np.inf)])
        return np.fromiter((row[i] for i in item_ids), np.int64, len(item_ids))

    def held(self, user_id: str, user: StoredUser, rows: NDArray[np.int64],
             universe: tuple[Sequence[str], Mapping[str, int]],
             static_lookup: tuple[NDArray[np.int64], NDArray[np.int64]], now_ts: int) -> StateSnapshot | None:
        """The snapshot from the table alone, no I/O and no string per candidate (``rows``: the candidates' rows
        in the caller's numbering ``universe``; ``static_lookup``: their ``static.lookup`` (index, hashes));
        ``None`` when the table does not cover ``now_ts`` (then :meth:`read`)."""
        table = self.table
        if table is None:
            return None
        epochs = ItemStates.epochs_at(now_ts)
        if not table.covers(epochs):
            return None
        self.held_reads += 1
        values = table.values_at(table.row_map(*universe)[rows], epochs)
        store = self.store
        return StateSnapshot(user_id=user_id, user=store.user_states(user), items=item_states(values, epochs),
                             static=store.static.rows(*static_lookup), now_ts=now_ts)

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int, *,
                   user: StoredUser | None = None) -> StateSnapshot:
        """The snapshot for ``user_id`` and ``item_ids`` at ``now_ts``; ``user``: the user's value as this
        request read it already (``None``: read it here, in the same round trip as the items). The rows come
        from the table when it covers ``now_ts`` (by id; the server maps by row first: :meth:`held`)."""
        store = self.store
        if self.table is not None and user is not None:
            _, epochs = item_fields(now_ts)
            if self.table.covers(epochs):
                self.held_reads += 1
                return store.snapshot(user_id, store.user_states(user), item_ids,
                                      self.table.values(item_ids, epochs), epochs, now_ts)
        if not self.scripting or not item_ids:
            return await store.read(user_id, item_ids, now_ts, user=user)
        user_key = store.keys.user_state(user_id) if user is None else None
        fetched = await self._fetch(item_ids, now_ts, user_key)
        if fetched is None:  # no Lua on this server
            return await store.read(user_id, item_ids, now_ts, user=user)
        raw_user, values, epochs = fetched
        if user is None:
            user = StoredUser.decode(raw_user)
        return store.snapshot(user_id, store.user_states(user), item_ids, values, epochs, now_ts)

    async def read_items(self, item_ids: Sequence[str], now_ts: int) -> tuple[ItemStates, StaticRows]:
        """The candidates' state and static rows only (for a caller that has the user's state already)."""
        fetched = await self._fetch(item_ids, now_ts, None) if self.scripting and item_ids else None
        if fetched is None:
            snap = await self.store.read("", item_ids, now_ts, user=StoredUser(None))
            return snap.items, snap.static
        _, values, epochs = fetched
        return self.store.item_rows(item_ids, values, epochs)

    async def _fetch(self, item_ids: Sequence[str], now_ts: int, user_key: str | None
                     ) -> tuple[bytes | None, NDArray[np.int64], tuple[int, ...]] | None:
        """One round trip: ``user_key``'s value (when given) and the rows of ``item_ids`` that are not cached
        (fresh enough); returns (raw user, every row of ``item_ids``, epochs), ``None`` without Lua."""
        fields, epochs = item_fields(now_ts)
        rows: NDArray[np.int64] | None = None
        fetch_ids: Sequence[str] = item_ids
        if self.ttl_s > 0:
            rows = self._cached_rows(item_ids, len(fields), epochs)
            stale = np.unique(rows[self._fetched[rows] < self._clock() - self.ttl_s])
            fetch_ids = [self._ids[r] for r in stale.tolist()]
        pipe = self.store.client.pipeline(transaction=False)
        if user_key is not None:
            pipe.get(user_key)
        if fetch_ids:
            keys = [self.store.keys.item_state(i) for i in fetch_ids]
            await self.script(keys=keys, args=fields, client=pipe)  # queues it
        try:
            replies = await pipe.execute()
        except Exception as exc:
            if "unknown command" in str(exc).lower() or "scripting" in str(exc).lower():
                self.scripting = False
                return None
            raise
        raw_user = None
        if user_key is not None:
            raw_user, replies = replies[0], replies[1:]
        fetched = (np.array(_decode(replies[0]), np.int64).reshape(len(fetch_ids), len(fields)) if fetch_ids
                   else np.zeros((0, len(fields)), np.int64))
        self.fetched_rows += len(fetch_ids)
        if rows is None:
            return raw_user, fetched, epochs
        stale_rows = np.fromiter((self._row[i] for i in fetch_ids), np.int64, len(fetch_ids))
        self._values[stale_rows] = fetched
        self._fetched[stale_rows] = self._clock()
        return raw_user, self._values[rows], epochs


def same_snapshot(a: StateSnapshot, b: StateSnapshot) -> bool:
    """Whether two snapshots hold the same state (for the parity tests against ``store.read``)."""
    def eq(x: Any, y: Any) -> bool:
        return all(np.array_equal(getattr(x, f), getattr(y, f)) for f in x.__dataclass_fields__)
    return eq(a.user, b.user) and eq(a.items, b.items) and a.items.epoch == b.items.epoch and eq(a.static, b.static)
