"""The server's first read (online_state.reads) decodes the workers' keys as their own readers do (fakeredis)."""

from __future__ import annotations

import fakeredis
import numpy as np
import pytest

from models.features.state import ItemStatic
from online_state.feature_codec import StoredUser
from online_state.feature_reads import same_snapshot
from online_state.keys import DEFAULT_KEYS
from online_state.reads import RequestScopes, SharedReads, read_online_state
from online_state.redis_store import RedisFeatureStore
from online_state.trending import read_new_releases, read_trending
from online_state.user_vectors import pack_user_vector
from schemas.events import Context, ItemUpsert, Play
from streams.effects import Batch, BatchInfo, Reads
from streams.trending import TrendingEffect, catalog_writes

NOW = 1_780_000_000_000
HOUR = 3_600_000


def _trending(pipe: object, events: list[Play]) -> None:
    """Queue the trending writes of ``events`` as the worker does."""
    TrendingEffect().write(pipe, Batch(BatchInfo("interactions", 0, 0, 0), events), Reads())


@pytest.fixture
async def redis() -> fakeredis.FakeAsyncRedis:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


async def test_trending_new_releases_and_vector_in_one_read(redis: fakeredis.FakeAsyncRedis) -> None:
    rng = np.random.default_rng(1)
    events = []
    for n in range(300):  # spread over 3 days: both generations of the 1h window hold counts
        item = f"i{int(rng.zipf(1.5)) % 40}"
        ctx = Context(country="NL" if n % 2 else "US", device="tv")
        events.append(Play(event_id=f"e{n}", ts=NOW - int(rng.integers(0, 72 * HOUR)), user_id=f"u{n % 7}",
                           item_id=item, context=ctx, schema_version=1))
    pipe = redis.pipeline(transaction=False)
    _trending(pipe, events)
    catalog_writes(pipe, [ItemUpsert(event_id=f"c{k}", ts=NOW, item_id=f"n{k}", title="t", genres=[],
                                     release_ts=NOW - k * HOUR, schema_version=1) for k in range(5)])
    await pipe.execute()
    vector = np.arange(4, dtype=np.float32)
    await redis.set(DEFAULT_KEYS.user_vector("u1"), pack_user_vector(vector, 3, space=77))

    got = await read_online_state(redis, DEFAULT_KEYS, "u1", RequestScopes(country="NL", device="tv"), NOW,
                                  trending_k=10, new_k=3, window="1h", space=77, dim=4)
    for label, scope in (("all", None), ("country", {"country": "NL"}), ("device", {"device": "tv"})):
        exact = await read_trending(redis, "1h", scope, NOW, 10)
        assert [i for i, _ in got.trending[label].pairs[:5]] == [i for i, _ in exact[:5]]
        assert [s for _, s in got.trending[label].pairs[:5]] == pytest.approx([s for _, s in exact[:5]], rel=1e-9)
    assert got.new_releases.pairs == await read_new_releases(redis, 3, now_ms=NOW)
    np.testing.assert_array_equal(got.user_vector, vector)
    other_space = await read_online_state(redis, DEFAULT_KEYS, "u1", RequestScopes(), NOW, trending_k=5, new_k=1,
                                          window="1h", space=78, dim=4)
    assert other_space.user_vector is None  # learnt against another bundle: ignored
    assert other_space.recent == [] and other_space.session_recent == []


async def test_shared_reads_reuse_trending_and_releases_but_never_the_users_keys(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = [100.0]
    shared = SharedReads(ttl_s=1.0, clock=lambda: clock[0])
    pipe = redis.pipeline(transaction=False)
    _trending(pipe, [Play(event_id="e1", ts=NOW - 1000, user_id="u1", item_id="a", schema_version=1,
                                       context=Context(country="NL"))])
    await pipe.execute()
    scopes = RequestScopes(country="NL")

    async def read(user: str, now: int = NOW) -> object:
        return await read_online_state(redis, DEFAULT_KEYS, user, scopes, now, trending_k=10, new_k=3, window="1h",
                                       space=77, dim=4, shared=shared)

    first = await read("u1")
    assert [i for i, _ in first.trending["all"].pairs] == ["a"]
    assert list(first.trending) == ["all", "country"]
    # New trending counts and a user vector arrive: within the TTL the lists are reused, the user's key is not.
    pipe = redis.pipeline(transaction=False)
    _trending(pipe, [Play(event_id=f"e{n}", ts=NOW - 500, user_id="u2", item_id="b", schema_version=1)
                                  for n in range(2, 6)])
    await pipe.execute()
    await redis.set(DEFAULT_KEYS.user_vector("u2"), pack_user_vector(np.ones(4, np.float32), 1, space=77))
    second = await read("u2")
    assert [i for i, _ in second.trending["all"].pairs] == ["a"]  # cached
    assert second.user_vector is not None  # always read
    assert shared.hits == 3 and shared.misses == 3  # two scopes + releases: missed once, then hit
    # Past the TTL, or for a request "as of" another time, they are read again.
    clock[0] += 1.5
    third = await read("u2")
    assert third.trending["all"].pairs[0][0] == "b"
    other_time = await read("u2", NOW - 3_600_000)
    assert other_time.trending["all"].pairs != third.trending["all"].pairs
    # ttl 0: nothing is kept.
    off = SharedReads(ttl_s=0.0)
    await read_online_state(redis, DEFAULT_KEYS, "u1", scopes, NOW, trending_k=10, new_k=3, window="1h", shared=off)
    assert off.get(("new_releases", DEFAULT_KEYS.prefix, 3), NOW) is None


async def test_the_users_feature_state_is_read_once_and_handed_to_the_feature_read(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    static = ItemStatic.build(["a", "b"], [["Drama"], ["Comedy"]], np.full(2, NOW - 9 * HOUR, np.int64),
                              np.full(2, NOW - 9 * HOUR, np.int64), np.zeros(2, np.int8), np.zeros(2, bool))
    store = RedisFeatureStore(redis, static)
    await store.apply_events([Play(event_id=f"p{n}", ts=NOW - (4 - n) * HOUR, user_id="u1", item_id="ab"[n % 2],
                                   schema_version=1) for n in range(4)])
    got = await read_online_state(redis, DEFAULT_KEYS, "u1", RequestScopes(), NOW, trending_k=5, new_k=1)
    assert got.features_user is not None and got.features_user.blob is not None
    assert [i for i, _ in got.recent] == ["b", "a"]  # the feature state's recent items, newest first
    # The feature read given that value reads only the items, and equals a read of everything.
    expected = await store.read("u1", ["a", "b", "zz"], NOW)
    await redis.delete(DEFAULT_KEYS.user_state("u1"))  # proves the user is not read again
    handed = await store.read("u1", ["a", "b", "zz"], NOW, user=got.features_user)
    assert same_snapshot(handed, expected) and handed.user.counts.sum() > 0
    nobody = await read_online_state(redis, DEFAULT_KEYS, "nobody", RequestScopes(), NOW, trending_k=5, new_k=1)
    assert nobody.features_user == StoredUser(None)  # read, and absent: a new user


async def test_last_known_lists_survive_the_ttl_for_answers_while_redis_is_down(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    shared = SharedReads(ttl_s=0.0)  # no reuse between requests, yet the last lists are kept for failures
    assert shared.last_known().trending == {} and not shared.last_known().new_releases
    pipe = redis.pipeline(transaction=False)
    _trending(pipe, [Play(event_id="e1", ts=NOW - 1000, user_id="u1", item_id="a", schema_version=1)])
    catalog_writes(pipe, [ItemUpsert(event_id="c1", ts=NOW, item_id="n1", title="t", genres=[], release_ts=NOW - HOUR,
                                     schema_version=1)])
    await pipe.execute()
    read = await read_online_state(redis, DEFAULT_KEYS, "u1", RequestScopes(), NOW, trending_k=5, new_k=2,
                                   window="1h", shared=shared)
    fallback = shared.last_known()
    assert fallback.trending == {"all": read.trending["all"]} and fallback.new_releases is read.new_releases
    assert fallback.user_vector is None and fallback.features_user is None  # nothing of any user
