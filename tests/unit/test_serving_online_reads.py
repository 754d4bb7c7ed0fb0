"""Stage 1's one-round-trip read decodes the workers' keys as their own readers do (fakeredis)."""

from __future__ import annotations

import fakeredis
import numpy as np
import pytest

from schemas.events import Context, Play
from serving.online_reads import RequestScopes, SharedReads, read_online_state
from streams.trending import TrendingEffect, catalog_writes, read_new_releases, read_trending
from streams.user_vectors import pack_user_vector, user_key

NOW = 1_780_000_000_000
HOUR = 3_600_000


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
    TrendingEffect().write(pipe, events, None, [])  # type: ignore[arg-type]
    from schemas.events import ItemUpsert

    catalog_writes(pipe, [ItemUpsert(event_id=f"c{k}", ts=NOW, item_id=f"n{k}", title="t", genres=[],
                                     release_ts=NOW - k * HOUR, schema_version=1) for k in range(5)])
    await pipe.execute()
    vector = np.arange(4, dtype=np.float32)
    await redis.set(user_key("sr", "u1"), pack_user_vector(vector, 3, space=77))

    got = await read_online_state(redis, "u1", RequestScopes(country="NL", device="tv"), NOW, trending_k=10,
                                  new_k=3, window="1h", space=77, dim=4)
    for label, scope in (("all", None), ("country", {"country": "NL"}), ("device", {"device": "tv"})):
        exact = await read_trending(redis, "1h", scope, NOW, 10)
        assert [i for i, _ in got.trending[label][:5]] == [i for i, _ in exact[:5]]
        assert [s for _, s in got.trending[label][:5]] == pytest.approx([s for _, s in exact[:5]], rel=1e-9)
    assert got.new_releases == await read_new_releases(redis, 3, now_ms=NOW)
    np.testing.assert_array_equal(got.user_vector, vector)
    other_space = await read_online_state(redis, "u1", RequestScopes(), NOW, trending_k=5, new_k=1, window="1h",
                                          space=78, dim=4)
    assert other_space.user_vector is None  # learnt against another bundle: ignored
    assert other_space.recent == [] and other_space.session_recent == []


async def test_shared_reads_reuse_trending_and_releases_but_never_the_users_keys(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = [100.0]
    shared = SharedReads(ttl_s=1.0, clock=lambda: clock[0])
    pipe = redis.pipeline(transaction=False)
    TrendingEffect().write(pipe, [Play(event_id="e1", ts=NOW - 1000, user_id="u1", item_id="a", schema_version=1,
                                       context=Context(country="NL"))], None, [])  # type: ignore[arg-type]
    await pipe.execute()
    scopes = RequestScopes(country="NL")

    async def read(user: str, now: int = NOW) -> object:
        return await read_online_state(redis, user, scopes, now, trending_k=10, new_k=3, window="1h", space=77,
                                       dim=4, shared=shared)

    first = await read("u1")
    assert [i for i, _ in first.trending["all"]] == ["a"]
    assert list(first.trending) == ["all", "country"]
    # New trending counts and a user vector arrive: within the TTL the lists are reused, the user's key is not.
    pipe = redis.pipeline(transaction=False)
    TrendingEffect().write(pipe, [Play(event_id=f"e{n}", ts=NOW - 500, user_id="u2", item_id="b", schema_version=1)
                                  for n in range(2, 6)], None, [])  # type: ignore[arg-type]
    await pipe.execute()
    await redis.set(user_key("sr", "u2"), pack_user_vector(np.ones(4, np.float32), 1, space=77))
    second = await read("u2")
    assert [i for i, _ in second.trending["all"]] == ["a"]  # cached
    assert second.user_vector is not None  # always read
    assert shared.hits == 3 and shared.misses == 3  # two scopes + releases: missed once, then hit
    # Past the TTL, or for a request "as of" another time, they are read again.
    clock[0] += 1.5
    third = await read("u2")
    assert third.trending["all"][0][0] == "b"
    other_time = await read("u2", NOW - 3_600_000)
    assert other_time.trending["all"] != third.trending["all"]
    # ttl 0: nothing is kept.
    off = SharedReads(ttl_s=0.0)
    await read_online_state(redis, "u1", scopes, NOW, trending_k=10, new_k=3, window="1h", shared=off)
    assert off.get(("new_releases", "sr", 3), NOW) is None
