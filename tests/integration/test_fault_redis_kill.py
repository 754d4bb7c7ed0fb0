"""Fault: Redis SIGKILLed and restarted while a real worker applies a stream of events (issue 11, item 8).

What it kills: the ``redis-server`` of a stack of this test's own (``stack_factory``; its pid from the stack's pid
record), with SIGKILL, once the worker has applied about a third of the stream and while the rest keeps arriving;
then restarts only that ``redis-server`` the way ``streamrec stack up`` does (its config, data folder and the
stack's password; the broker still runs). The stack's Redis runs with ``appendonly yes`` (tools/stack/redis.py),
so what it acknowledged before the kill is in the AOF.

What it compares: the state after = the state the whole log gives applied once: every user's play count equals
the plays sent for them (nothing lost with the kill, nothing applied twice by the retries around it), every
partition's stored offset is at the end of the log, and no event had to be dropped as a duplicate (the offsets,
which commit in the same transaction as the state, held; the event-id window was not needed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from test_worker_dead_letters import T0, per_test_settings, running_worker, send_records

from foundation.redis_io import redis_client
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.feature_codec import decode_user_blob
from online_state.keys import DEFAULT_KEYS
from tools.stack import credentials as stack_credentials
from tools.stack import process
from tools.stack import redis as redis_service
from tools.stack.layout import StackLayout

USERS = tuple(f"rk-u{n}" for n in range(12))
ITEMS = tuple(f"rk-i{n}" for n in range(5))
PLAYS_PER_USER = 60
WAVES = 8  # the stream is sent in waves, so that events keep arriving while Redis is dead


def _play(user: str, n: int) -> tuple[str, bytes]:
    return user, orjson.dumps({"type": "play", "event_id": f"{user}-play-{n}", "ts": T0 + n, "schema_version": 1,
                               "user_id": user, "item_id": ITEMS[n % len(ITEMS)]})


async def _until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


def test_redis_sigkill_and_restart_loses_and_doubles_nothing(stack_factory: Any) -> None:
    own = stack_factory("rkill", 24092, 24093, 24379)  # its Redis is killed here: not the session's stack
    asyncio.run(_redis_killed_mid_stream(own))


async def _redis_killed_mid_stream(own: Settings) -> None:
    started = time.monotonic()
    settings = per_test_settings(own, "redis-kill")
    await ensure_topics_retrying(settings)
    layout = StackLayout.from_settings(own)
    plays = [_play(user, n) for n in range(PLAYS_PER_USER) for user in USERS]
    wave = len(plays) // WAVES
    offsets = [DEFAULT_KEYS.offset(settings.topic_interactions, p) for p in range(settings.interactions_partitions)]
    client: aioredis.Redis = redis_client(own)
    try:
        async with running_worker(settings, effects=False) as worker:
            sender = asyncio.create_task(_send_in_waves(settings, plays, wave))
            await _until(lambda: _true(worker.processed >= wave), "the first wave applied")

            record = process.read_record(layout.redis_pid_file)
            assert record is not None and process.owns(record)
            os.kill(record.pid, signal.SIGKILL)  # mid-stream: more waves are on their way, batches in flight
            killed_at = time.monotonic()
            applied_at_kill = worker.processed
            # The rest of the stream arrives while Redis is dead: the worker's batches fail and are rewound.
            await sender
            assert not process.owns(record)
            restarted = _restart_redis(own, layout)
            assert restarted.pid != record.pid
            print(f"redis down for {time.monotonic() - killed_at:.1f} s; {applied_at_kill} of {len(plays)} events "
                  "applied before the kill")

            await _until(lambda: _at_end(client, offsets, len(plays)), "every record's offset stored", 40)
            assert worker.duplicates == 0  # no batch was applied twice and caught only by the event-id window
    finally:
        await client.aclose()
    async with redis_client(own) as check:
        for user in USERS:
            blob = decode_user_blob(await check.get(DEFAULT_KEYS.user_state(user)))
            assert blob.n[1] == PLAYS_PER_USER, (user, blob.n)  # every play once: none lost, none doubled
    print(f"redis kill test took {time.monotonic() - started:.1f} s")


async def _send_in_waves(settings: Settings, plays: list[tuple[str, bytes]], wave: int) -> None:
    for start in range(0, len(plays), wave):
        await send_records(settings, settings.topic_interactions, plays[start:start + wave])
        await asyncio.sleep(0.1)  # a stream, not one burst: the kill lands between and during batches


def _restart_redis(own: Settings, layout: StackLayout) -> process.ProcessRecord:
    """Start redis-server again as ``streamrec stack up`` does for a stack whose broker still runs: the same config
    (``appendonly yes``, its data folder) and the stack's password from its credentials file; the caller waits for
    it to answer (while it loads its AOF it refuses commands)."""
    record = redis_service.start(own, layout, redis_service.find_redis_server(), stack_credentials.load(layout))
    process.write_record(layout.redis_pid_file, record)  # so the factory's `stack down` stops this one
    return record


async def _true(value: bool) -> bool:
    return value


async def _at_end(client: aioredis.Redis, offsets: list[str], records: int) -> bool:
    """True once the stored offsets (last applied offset per partition) account for every record sent."""
    try:
        stored = await client.mget(offsets)
    except (aioredis.ConnectionError, aioredis.ResponseError, OSError):
        return False  # still loading its AOF, or not up yet
    return sum(int(v) + 1 for v in stored if v is not None) >= records
