"""Stage 2's Redis read: the user's and ~1,000 candidates' feature state in one round trip, cheaply.

``RedisFeatureStore.read`` queues one ``HMGET`` per candidate. That is one round trip, but redis-py
spends tens of µs of client CPU per queued command (packing, reply objects, callbacks): for 700
candidates ~100 ms on the shared 2-core box (``benchmarks/bench_pipeline.py``), twice the stage's
budget. Here the same ``HMGET``s run inside Redis, in one read-only Lua script (``EVALSHA``; the
script is loaded on first use) that returns every row packed as one msgpack string; msgspec unpacks
it in C and numpy takes the integers. Keys, fields and the user's value come from the store itself
(``user_key``, ``item_key``, the fields of ``now``'s epochs, its user decoder), so the layout stays
defined in ``online_state.redis_store``; the result is the same ``StateSnapshot``.

Values travel as Lua numbers (doubles): exact for integers below 2**53, which the counters and the
fixed-point decayed sums (2**20 scale, at most 2**8 growth within an epoch) stay far below.
A server without Lua scripting falls back to ``store.read``.

**Item state cache** (``ttl_s`` > 0, ``STREAMREC_SERVING_ITEM_STATE_TTL_S``, default 1 s): an item's
counters are the same for every request and move slowly, while re-reading ~700 rows costs every
request ~9 ms of Redis time (Redis saturated near 100 req/s with a worker beside it). So the rows are
kept in one numpy matrix per process, aligned to item ids, with the time each was fetched; a request
fetches only its candidates whose row is older than ``ttl_s`` (none, mostly) and reads the rest from
the matrix. The user's own state is always read fresh (it is what real-time learning changes per
event). An item's counters may so lag by up to ``ttl_s``; replays and evaluations that need exact
point-in-time rows use ``ttl_s`` = 0. The matrix is dropped when ``now``'s popularity epochs change
(other fields). Memory: rows x fields x 8 bytes (~0.7 MB for 5,000 titles).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from models.features.state import ITEM_COUNT_NAMES, ItemStates, UserStates
from online_state.feature_store import StateSnapshot
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._script = store.client.register_script(HMGET_MANY)
        self.scripting = True  # set False after the server refused the script (no Lua): plain reads then
        self.ttl_s = ttl_s
        self._clock = clock
        self._epochs: tuple[int, ...] | None = None
        self._row: dict[str, int] = {}
        self._ids: list[str] = []
        self._values = np.zeros((0, 0), np.int64)
        self._fetched = np.zeros(0, np.float64)
        self.fetched_rows = 0  # rows read from Redis so far (metrics, tests)

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

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        store = self.store
        if not self.scripting or not item_ids:
            return await store.read(user_id, item_ids, now_ts)
        fields, epochs = store._item_fields(now_ts)
        rows: NDArray[np.int64] | None = None
        fetch_ids: Sequence[str] = item_ids
        if self.ttl_s > 0:
            rows = self._cached_rows(item_ids, len(fields), epochs)
            stale = np.unique(rows[self._fetched[rows] < self._clock() - self.ttl_s])
            fetch_ids = [self._ids[r] for r in stale.tolist()]
        pipe = store.client.pipeline(transaction=False)
        pipe.get(store.user_key(user_id))
        if fetch_ids:
            await self._script(keys=[store.item_key(i) for i in fetch_ids], args=fields, client=pipe)  # queues it
        try:
            replies = await pipe.execute()
        except Exception as exc:
            if "unknown command" in str(exc).lower() or "scripting" in str(exc).lower():
                self.scripting = False
                return await store.read(user_id, item_ids, now_ts)
            raise
        raw_user = replies[0]
        user = UserStates.empty(1, store.static.n_genres)
        store._decode_users([raw_user], user, [0], {})
        fetched = (np.array(_decode(replies[1]), np.int64).reshape(len(fetch_ids), len(fields)) if fetch_ids
                   else np.zeros((0, len(fields)), np.int64))
        self.fetched_rows += len(fetch_ids)
        if rows is None:
            values = fetched
        else:
            stale_rows = np.fromiter((self._row[i] for i in fetch_ids), np.int64, len(fetch_ids))
            self._values[stale_rows] = fetched
            self._fetched[stale_rows] = self._clock()
            values = self._values[rows]
        n = len(ITEM_COUNT_NAMES)
        items = ItemStates(counts=values[:, :n], pop=values[:, n:].reshape(len(item_ids), len(epochs), 2), epoch=epochs)
        index, hashes = store.static.lookup(item_ids)
        return StateSnapshot(user_id=user_id, user=user, items=items, static=store.static.rows(index, hashes),
                             now_ts=now_ts)


def same_snapshot(a: StateSnapshot, b: StateSnapshot) -> bool:
    """Whether two snapshots hold the same state (for the parity test against ``store.read``)."""
    def eq(x: Any, y: Any) -> bool:
        return all(np.array_equal(getattr(x, f), getattr(y, f)) for f in x.__dataclass_fields__)
    return eq(a.user, b.user) and eq(a.items, b.items) and a.items.epoch == b.items.epoch and eq(a.static, b.static)
