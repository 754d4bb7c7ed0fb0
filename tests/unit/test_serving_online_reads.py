"""Stage 1's one-round-trip read decodes the workers' keys as their own readers do (fakeredis)."""

from __future__ import annotations

import fakeredis
import numpy as np
import pytest

from schemas.events import Context, Play
from serving.online_reads import RequestScopes, read_online_state
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
