"""The worker's bulk writes (Redis Functions, online_state.redis_functions) store exactly what
the one-command-per-key path stores: same events, two key prefixes, every key family compared."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from models.features.state import EventBatch, ItemStatic
from online_state.keys import KeyLayout
from online_state.redis_functions import functions_available
from online_state.redis_store import RedisFeatureStore
from schemas.events import Context, Play, Rating, Skip
from streams.effects import Batch, BatchInfo
from streams.session import SessionEffect
from streams.trending import TrendingEffect

T0 = 1_767_225_600_000
DAY = 86_400_000


def _events(n: int, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    ctx = [Context(country="US", device="tv", local_hour=21), Context(country="FR"), None]
    out: list[Any] = []
    for k in range(n):
        # Events spread over 20 days, so the popularity epochs (8 days) roll over and the clean-up runs.
        base = {"event_id": f"e{k}", "ts": T0 + k * (20 * DAY // n), "schema_version": 1,
                "user_id": f"u{rng.integers(12)}", "item_id": f"i{rng.integers(30)}",
                "context": ctx[int(rng.integers(3))]}
        kind = int(rng.integers(3))
        out.append(Play(**base) if kind == 0 else Skip(**base) if kind == 1 else Rating(value=4.0, **base))
    return out


async def _apply(client: aioredis.Redis, static: ItemStatic, events: list[Any], prefix: str, bulk: bool) -> None:
    keys = KeyLayout(prefix)
    store = RedisFeatureStore(client, static, keys=keys, bulk=bulk)
    effects = [TrendingEffect(keys=keys, bulk=bulk), SessionEffect(keys=keys, bulk=bulk)]
    for start in range(0, len(events), 37):
        chunk = events[start:start + 37]
        batch = Batch(BatchInfo("interactions", 0, start, start + len(chunk) - 1), chunk)
        plan = store.plan(EventBatch.from_events(chunk, static))
        read_pipe = client.pipeline(transaction=False)
        reads = [effect.read(read_pipe, batch) for effect in effects]
        n_store = store.queue_reads(read_pipe, plan)
        replies = await read_pipe.execute()
        pipe = client.pipeline(transaction=True)
        store.queue_writes(pipe, plan, replies[len(replies) - n_store:])
        pos = 0
        for effect, r in zip(effects, reads, strict=True):
            r.replies = replies[pos:pos + r.queued]
            pos += r.queued
            effect.write(pipe, batch, r)
        store.committed(plan, await pipe.execute())


async def _values(client: aioredis.Redis, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async for key in client.scan_iter(match=KeyLayout(prefix).everything, count=1000):
        name = key.decode().removeprefix(f"{prefix}:")
        kind = await client.type(key)
        if kind == b"string":
            out[name] = (await client.get(key), await client.ttl(key) > 0)
        elif kind == b"zset":
            out[name] = ({m: pytest.approx(s, rel=1e-12) for m, s in await client.zrange(key, 0, -1, withscores=True)},
                         await client.ttl(key) > 0)
        else:
            out[name] = await client.hgetall(key)
    return out


async def test_bulk_writes_store_what_plain_commands_store(redis_client: aioredis.Redis) -> None:
    assert await functions_available(redis_client)
    static = ItemStatic.build([f"i{k}" for k in range(30)], [["Drama"]] * 30, np.zeros(30, np.int64),
                              np.zeros(30, np.int64), np.zeros(30, np.int8), np.zeros(30, np.bool_), ["Drama"])
    events = _events(600, seed=5)
    await _apply(redis_client, static, events, "plain", bulk=False)
    await _apply(redis_client, static, events, "bulk", bulk=True)
    plain, bulk = await _values(redis_client, "plain"), await _values(redis_client, "bulk")
    assert plain.keys() == bulk.keys()
    assert any(k.startswith("trend:") for k in plain) and any(k.startswith("s:") for k in plain)
    for key, value in plain.items():
        if key.startswith("i:"):
            # The bulk path deletes the fields of old popularity epochs in the batch that opens a new
            # epoch; the plain path in the batch after: the fields read (counts, current epochs) agree.
            live = {f: v for f, v in value.items() if f in bulk[key]}
            assert live == bulk[key], key
            assert set(bulk[key]) <= set(value)
        else:
            assert bulk[key] == value, key
    # And the features read back from both are identical.
    now = events[-1].ts + 1
    item_ids = [f"i{k}" for k in range(30)]
    for user in {e.user_id for e in events}:
        a = await RedisFeatureStore(redis_client, static, keys=KeyLayout("plain")).features(user, item_ids, now)
        b = await RedisFeatureStore(redis_client, static, keys=KeyLayout("bulk")).features(user, item_ids, now)
        np.testing.assert_array_equal(a.dense, b.dense)
        np.testing.assert_array_equal(a.wide, b.wide)
