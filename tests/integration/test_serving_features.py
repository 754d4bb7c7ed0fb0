"""The server's scripted feature read returns exactly what ``RedisFeatureStore.read`` returns, on real Redis."""

from __future__ import annotations

import time

import numpy as np
import redis.asyncio as aioredis

from models.features.state import EventBatch, ItemStatic
from online_state.feature_codec import StoredUser
from online_state.feature_reads import FeatureReader, same_snapshot
from online_state.keys import DEFAULT_KEYS
from online_state.redis_store import RedisFeatureStore
from schemas.events import Click, Complete, Context, Impression, InteractionEvent, Play, Rating, Skip

DAY = 86_400_000


def _static() -> ItemStatic:
    ids = [f"i{k}" for k in range(5)]
    genres = [["Drama"], ["Comedy", "Drama"], ["Action"], [], ["Comedy"]]
    release = np.full(5, 1_700_000_000_000, np.int64)
    return ItemStatic.build(ids, genres, release, release, np.zeros(5, np.int8), np.zeros(5, bool))


def _events(now: int) -> list[InteractionEvent]:
    ctx = Context(device="tv", country="NL", local_hour=21)
    out: list[InteractionEvent] = []
    for n in range(40):  # spread over two weeks: several popularity epochs are written
        ts = now - (14 * DAY * (40 - n)) // 40
        user, item = f"u{n % 3}", f"i{n % 5}"
        out.append(Play(event_id=f"p{n}", ts=ts, user_id=user, item_id=item, context=ctx, schema_version=1))
        if n % 2:
            out.append(Complete(event_id=f"c{n}", ts=ts + 1, user_id=user, item_id=item, watched_seconds=5000.0,
                                schema_version=1))
        if n % 3 == 0:
            out.append(Rating(event_id=f"r{n}", ts=ts + 2, user_id=user, item_id=item, value=4.5, schema_version=1))
        if n % 4 == 0:
            out.append(Skip(event_id=f"s{n}", ts=ts + 3, user_id=user, item_id=f"i{(n + 1) % 5}", schema_version=1))
        if n % 5 == 0:
            out.append(Impression(event_id=f"m{n}", ts=ts + 4, user_id=user, item_ids=["i0", "i2", "i4"],
                                  request_id=f"q{n}", schema_version=1))
            out.append(Click(event_id=f"k{n}", ts=ts + 5, user_id=user, item_id="i2", schema_version=1))
    return out


async def test_scripted_read_equals_the_store_read(redis_client: aioredis.Redis) -> None:
    static = _static()
    store = RedisFeatureStore(redis_client, static)
    now = int(time.time() * 1000)
    await store.apply(EventBatch.from_events(_events(now), static))
    reader = FeatureReader(store)
    ids = ["i0", "i1", "i2", "i3", "i4", "not-a-title", "i2"]
    for user in ("u0", "u1", "nobody"):
        expected = await store.read(user, ids, now)
        got = await reader.read(user, ids, now)
        assert reader.scripting, "real Redis runs the script"
        assert same_snapshot(got, expected)
    assert got.items.counts.sum() > 0 and got.items.pop.sum() > 0  # real state, not all defaults
    assert (await reader.read("u0", [], now)).items.counts.shape[0] == 0


async def test_item_rows_are_reused_within_the_ttl_and_the_user_is_always_fresh(
    redis_client: aioredis.Redis,
) -> None:
    static = _static()
    store = RedisFeatureStore(redis_client, static)
    now = int(time.time() * 1000)
    events = _events(now)
    await store.apply(EventBatch.from_events(events[: len(events) // 2], static))
    clock = [100.0]
    reader = FeatureReader(store, ttl_s=1.0, clock=lambda: clock[0])
    ids = ["i0", "i1", "i2", "i3", "i4", "i2"]
    first = await reader.read("u0", ids, now)
    assert same_snapshot(first, await store.read("u0", ids, now))
    assert reader.fetched_rows == 5  # distinct ids, once

    await store.apply(EventBatch.from_events(events[len(events) // 2:], static))
    fresh = await store.read("u0", ids, now)
    assert not np.array_equal(fresh.items.counts, first.items.counts)  # the items did move
    clock[0] += 0.5  # within the TTL: item rows from the cache, the user's state from Redis
    cached = await reader.read("u0", ids, now)
    assert reader.fetched_rows == 5
    assert np.array_equal(cached.items.counts, first.items.counts)
    assert np.array_equal(cached.user.counts, fresh.user.counts)

    clock[0] += 0.6  # past it: every row is read again and equals Redis exactly
    assert same_snapshot(await reader.read("u0", ids, now), fresh)
    assert reader.fetched_rows == 10


async def test_a_user_value_read_earlier_is_used_instead_of_reading_it_again(redis_client: aioredis.Redis) -> None:
    static = _static()
    store = RedisFeatureStore(redis_client, static)
    now = int(time.time() * 1000)
    await store.apply(EventBatch.from_events(_events(now), static))
    ids = ["i0", "i1", "i2", "i3", "i4", "not-a-title", "i2"]
    expected = await store.read("u0", ids, now)
    stored = StoredUser.decode(await redis_client.get(DEFAULT_KEYS.user_state("u0")))
    await redis_client.delete(DEFAULT_KEYS.user_state("u0"))  # a second read of it would now find nothing
    reader = FeatureReader(store)
    assert same_snapshot(await reader.read("u0", ids, now, user=stored), expected)
    assert reader.scripting and expected.user.counts.sum() > 0
    items, static_rows = await reader.read_items(ids, now)
    assert same_snapshot(expected, type(expected)(user_id="u0", user=expected.user, items=items, static=static_rows,
                                                  now_ts=now))
    assert same_snapshot(await reader.read("u0", [], now, user=stored), await store.read("u0", [], now, user=stored))
