"""Stage 2's Redis read: the user's and ~1,000 candidates' feature state in one round trip, cheaply.

``RedisFeatureStore.read`` queues one ``HMGET`` per candidate. That is one round trip, but redis-py
spends tens of µs of client CPU per queued command (packing, reply objects, callbacks): for 700
candidates ~100 ms on the shared 2-core box (``benchmarks/bench_pipeline.py``), twice the stage's
budget. Here the same ``HMGET``s run inside Redis, in one read-only Lua script (``EVALSHA``; the
script is loaded on first use) that returns every row packed as one msgpack string; msgspec unpacks
it in C and numpy takes the integers. Keys, fields and the user's value come from the store itself
(``user_key``, ``item_key``, the fields of ``now``'s epochs, its user decoder), so the layout stays
defined in ``streamrec.feature_store.redis_store``; the result is the same ``StateSnapshot``.

Values travel as Lua numbers (doubles): exact for integers below 2**53, which the counters and the
fixed-point decayed sums (2**20 scale, at most 2**8 growth within an epoch) stay far below.
A server without Lua scripting falls back to ``store.read``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec
import numpy as np

from models.features.state import ITEM_COUNT_NAMES, ItemStates, UserStates
from streamrec.feature_store.base import StateSnapshot
from streamrec.feature_store.redis_store import RedisFeatureStore

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
    """Reads a :class:`StateSnapshot` like ``store.read``, with the candidates' rows fetched by one script."""

    def __init__(self, store: RedisFeatureStore) -> None:
        self.store = store
        self._script = store.client.register_script(HMGET_MANY)
        self.scripting = True  # set False after the server refused the script (no Lua): plain reads then

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        store = self.store
        if not self.scripting or not item_ids:
            return await store.read(user_id, item_ids, now_ts)
        fields, epochs = store._item_fields(now_ts)
        pipe = store.client.pipeline(transaction=False)
        pipe.get(store.user_key(user_id))
        await self._script(keys=[store.item_key(i) for i in item_ids], args=fields, client=pipe)  # queues it
        try:
            raw_user, packed = await pipe.execute()
        except Exception as exc:
            if "unknown command" in str(exc).lower() or "scripting" in str(exc).lower():
                self.scripting = False
                return await store.read(user_id, item_ids, now_ts)
            raise
        user = UserStates.empty(1, store.static.n_genres)
        store._decode_users([raw_user], user, [0], {})
        values = np.array(_decode(packed), np.int64).reshape(len(item_ids), len(fields))
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
