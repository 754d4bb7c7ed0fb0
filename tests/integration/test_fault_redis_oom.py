"""Fault: Redis full (``maxmemory`` reached under ``noeviction``) while events arrive.

What it does: a real worker (in-process) on the session's stack; ``CONFIG SET maxmemory 1`` makes every write
fail with ``OOM``; events are published (distinct ones and three retries of earlier event ids). What it compares:
while Redis is full the worker is paused (``streamrec_worker_paused{reason="redis_oom"}`` = 1, refused batches
counted and retried with back-off) and nothing is written (no offset moves, no user state); once ``maxmemory`` is
lifted, every event is applied exactly once (each user's play count equals their distinct plays, the retries are
counted as duplicates) and the pause ends. The stack's ``maxmemory`` settings are restored whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from test_worker_dead_letters import T0, per_test_settings, running_worker, send_records

from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.feature_codec import decode_user_blob
from online_state.keys import DEFAULT_KEYS

USERS = ("oom-u1", "oom-u2", "oom-u3", "oom-u4")
ITEMS = ("oom-i1", "oom-i2", "oom-i3")
PLAYS_PER_USER = 10


def _play(user: str, n: int) -> tuple[str, bytes]:
    return user, orjson.dumps({"type": "play", "event_id": f"{user}-play-{n}", "ts": T0 + n, "schema_version": 1,
                               "user_id": user, "item_id": ITEMS[n % len(ITEMS)]})


def _upsert(item: str) -> tuple[str, bytes]:
    return item, orjson.dumps({"type": "item_upsert", "event_id": f"c-{item}", "ts": T0, "schema_version": 1,
                               "item_id": item, "title": f"Title {item}", "genres": ["Drama"], "release_ts": T0})


def _paused() -> float:
    return REGISTRY.get_sample_value("streamrec_worker_paused", {"reason": "redis_oom"}) or 0.0


async def _until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


async def test_a_full_redis_pauses_the_worker_and_every_event_is_applied_once_after(
        stack: Settings, redis_client: aioredis.Redis) -> None:
    settings = per_test_settings(stack, "oom")
    await ensure_topics_retrying(settings)
    await send_records(settings, settings.topic_catalog, [_upsert(i) for i in ITEMS])
    saved = {**await redis_client.config_get("maxmemory"), **await redis_client.config_get("maxmemory-policy")}
    offsets = [DEFAULT_KEYS.offset(settings.topic_interactions, p) for p in range(settings.interactions_partitions)]
    try:
        async with running_worker(settings, effects=False, oom_backoff_s=0.05, oom_backoff_max_s=0.4) as worker:
            await send_records(settings, settings.topic_interactions, [_play("oom-warm", 0)])
            await _until(lambda: _true(worker.processed >= 1), "the warm-up event applied")
            stored_before = await redis_client.mget(offsets)

            await redis_client.config_set("maxmemory-policy", "noeviction")
            await redis_client.config_set("maxmemory", 1)
            plays = [_play(u, n) for n in range(PLAYS_PER_USER) for u in USERS]
            retries = [plays[0], plays[5], plays[-1]]  # the same event_ids again: new records, same events
            await send_records(settings, settings.topic_interactions, plays + retries)

            async def refused_twice() -> bool:
                return _paused() == 1 and worker.oom.refusals >= 2  # refused, backed off, retried, refused

            await _until(refused_twice, "the worker paused on OOM and retrying")
            # Nothing was written meanwhile: no offset moved, no user state appeared.
            assert await redis_client.mget(offsets) == stored_before
            assert await redis_client.exists(*(DEFAULT_KEYS.user_state(u) for u in USERS)) == 0
            assert worker.processed == 1

            await redis_client.config_set("maxmemory", saved["maxmemory"])
            total = 1 + len(plays)
            await _until(lambda: _true(worker.processed >= total and _paused() == 0),
                         f"{total} events applied after Redis took writes again")
            # Every record passed (the offsets reach the end) and nothing more than the distinct events counted.
            await _until(lambda: _all_applied(redis_client, offsets, 1 + len(plays) + len(retries)),
                         "every record's offset stored")
            assert worker.processed == total and worker.duplicates == len(retries)
            assert not worker.oom.paused
    finally:
        await redis_client.config_set("maxmemory", saved["maxmemory"])
        await redis_client.config_set("maxmemory-policy", saved["maxmemory-policy"])
    for user in USERS:
        blob = decode_user_blob(await redis_client.get(DEFAULT_KEYS.user_state(user)))
        assert blob.n[1] == PLAYS_PER_USER, (user, blob.n)  # plays counted once each, retries not at all


async def _true(value: bool) -> bool:
    return value


async def _all_applied(client: aioredis.Redis, offsets: list[str], records: int) -> bool:
    return sum(int(v) + 1 for v in await client.mget(offsets) if v is not None) >= records
