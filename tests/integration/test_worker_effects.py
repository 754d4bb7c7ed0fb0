"""The worker with its registered effects: trending, sessions, new releases, online user vectors and
item vectors of new titles, all maintained from the stream against the real broker and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from test_worker_dead_letters import (
    T0,
    _play,
    _upsert,
    _wait_for,
    per_test_settings,
    running_worker,
    send_records,
)

from foundation.kafka_io import connection_options
from foundation.settings import Settings
from models.item_vector_codec import decode_item_vector
from online_state.sessions import read_session
from online_state.trending import read_new_releases, read_trending
from online_state.user_vectors import read_user_vector


async def _publish(settings: Settings, catalog: list[tuple[str, bytes]], plays: list[tuple[str, bytes]]) -> None:
    await send_records(settings, settings.topic_catalog, catalog)  # on the broker before the plays
    await send_records(settings, settings.topic_interactions, plays)


def _play_ctx(user: str, item: str, ts: int, device: str, session: str) -> bytes:
    body = orjson.loads(_play(user, item, ts))
    body["context"] = {"device": device, "country": "NL", "local_hour": 20, "session_id": session}
    return orjson.dumps(body)


async def test_worker_maintains_trending_sessions_and_new_releases(stack: Settings, redis_client: aioredis.Redis):
    from foundation.topics import ensure_topics_retrying

    settings = per_test_settings(stack, "effects")
    await ensure_topics_retrying(settings)
    catalog = [(f"i{n}", _upsert(f"i{n}", T0 + n)) for n in range(5)]
    # i0 is watched by every user, i1 by two of them: the trending order must say so.
    plays = [(f"u{u}", _play_ctx(f"u{u}", "i0", T0 + 1000 + u, "tv", f"s{u}")) for u in range(4)]
    plays += [(f"u{u}", _play_ctx(f"u{u}", "i1", T0 + 2000 + u, "tv", f"s{u}")) for u in range(2)]
    await _publish(settings, catalog, plays)
    async with running_worker(settings):
        async def applied() -> bool:  # the catalogue's batches too: they have no order with the plays'
            return bool(await read_session(redis_client, "u1")) and len(
                await read_trending(redis_client, "1h", None, T0 + 3000, 5)) >= 2 and len(
                await read_new_releases(redis_client, 10)) >= 5
        await _wait_for(applied)
    top = await read_trending(redis_client, "1h", None, T0 + 3000, 5)
    assert [item for item, _ in top[:2]] == ["i0", "i1"]
    assert top[0][1] > top[1][1] > 0
    by_device = await read_trending(redis_client, "1h", {"device": "tv"}, T0 + 3000, 5)
    assert by_device[0][0] == "i0"
    session = await read_session(redis_client, "u1")
    assert session["session_id"] == "s1" and session["device"] == "tv"
    assert session["genre_mix"] == {"Drama": pytest.approx(1.0)}  # genres from the worker's live catalogue
    releases = await read_new_releases(redis_client, 10)
    assert {item for item, _ in releases} == {f"i{n}" for n in range(5)}


async def test_worker_learns_user_vectors_and_publishes_new_title_vectors(
    stack: Settings, redis_client: aioredis.Redis, small_bundle: Path
):
    from foundation.topics import ensure_topics_retrying
    from models.bundle import open_bundle

    settings = per_test_settings(stack, "vectors")
    await ensure_topics_retrying(settings)
    bundle = open_bundle(small_bundle)
    known = bundle.json("item_ids")[:3]
    new_title = orjson.dumps({"type": "item_upsert", "event_id": "c-new", "ts": T0, "schema_version": 1,
                              "item_id": "brand-new", "title": "A Brand New Drama", "genres": ["Drama"],
                              "tags": [], "cast": [], "release_ts": T0})
    plays = [("fresh-user", _play("fresh-user", item, T0 + 10 + n)) for n, item in enumerate(known)]
    await _publish(settings, [("brand-new", new_title)], plays)
    async with running_worker(settings, artifacts=small_bundle):
        async def learned() -> bool:
            vector, _ = await read_user_vector(redis_client, "fresh-user")
            return vector is not None
        await _wait_for(learned, seconds=60)
    vector, version = await read_user_vector(redis_client, "fresh-user")
    assert vector is not None and version == len(known) and np.linalg.norm(vector) > 0
    consumer = AIOKafkaConsumer(settings.topic_item_vectors, **connection_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        found = None
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == b"brand-new":
                        found = decode_item_vector(record.key, record.value)
            if found is not None:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    assert found is not None and found.source == "content" and np.linalg.norm(found.vector) > 0
