"""``--rebuild``: after Redis lost everything, a worker that deletes the ``sr:*`` keys and consumes
every partition from the beginning (ignoring the group's committed offsets) restores the same state."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from foundation.kafka_io import connection_options
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.dataset import load_log
from models.features.state import ItemStatic
from online_state import DEFAULT_KEYS, RedisFeatureStore
from tools.datasets.world import generate_world
from tools.replay import replay_log
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4


async def _applied(client: aioredis.Redis, settings: Settings) -> int:
    """Records applied, catalogue included (its batches have no order with the interactions')."""
    keys = [DEFAULT_KEYS.offset(settings.topic_interactions, p) for p in range(PARTITIONS)]
    keys += [DEFAULT_KEYS.offset(settings.topic_catalog, p) for p in range(settings.catalog_partitions)]
    return sum(int(v) + 1 for v in await client.mget(keys) if v is not None)


def _spawn(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamrec.commands.worker", "--metrics-port", "0",
                                 "--features-only", "--session-timeout-ms", "6000", *args],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


async def _run_until_applied(env: dict[str, str], client: aioredis.Redis, settings: Settings, total: int,
                             log_path: Path, *args: str) -> None:
    proc = _spawn(env, log_path, *args)
    try:
        deadline = time.monotonic() + 60
        while await _applied(client, settings) < total:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker too slow"
            await asyncio.sleep(0.05)
    finally:
        terminate(proc, timeout_s=20)
    assert proc.returncode == 0, log_path.read_text()[-3000:]


async def _snapshot(client: aioredis.Redis, static: ItemStatic, now: int) -> dict[str, object]:
    users = sorted([k async for k in client.scan_iter(match=DEFAULT_KEYS.user_state("*"))])
    offsets = sorted([k async for k in client.scan_iter(match=DEFAULT_KEYS.offset("*", "*"))])
    store = RedisFeatureStore(client, static)
    items = await store.read("nobody", static.item_ids, now)
    return {
        "users": dict(zip(users, await client.mget(users), strict=True)) if users else {},
        "offsets": dict(zip(offsets, await client.mget(offsets), strict=True)) if offsets else {},
        "item_counts": items.items.counts, "item_pop": items.items.pop,
    }


async def test_rebuild_after_flush_restores_the_same_state(
    stack: Settings, stack_env: dict[str, str], redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    world = tmp_path / "world"
    generate_world(world, users=80, items=200, events=3000, seed=4)
    suffix = uuid.uuid4().hex[:8]
    settings = stack.model_copy(update={
        "topic_interactions": f"interactions-rb-{suffix}", "topic_catalog": f"catalog-rb-{suffix}",
        "topic_item_vectors": f"item-vectors-rb-{suffix}", "topic_item_state": f"item-state-rb-{suffix}",
        "topic_dead_letters": f"dead-letters-rb-{suffix}",
        "interactions_partitions": PARTITIONS,
    })
    await ensure_topics_retrying(settings)
    await replay_log(world, settings)
    consumer = AIOKafkaConsumer(**connection_options(settings))
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(settings.topic_interactions, p) for p in range(PARTITIONS)]
                                          + [TopicPartition(settings.topic_catalog, p)
                                             for p in range(settings.catalog_partitions)])
    finally:
        await consumer.stop()
    total = sum(ends.values())
    env = {**stack_env, "STREAMREC_TOPIC_INTERACTIONS": settings.topic_interactions,
           "STREAMREC_TOPIC_CATALOG": settings.topic_catalog,
           "STREAMREC_TOPIC_ITEM_VECTORS": settings.topic_item_vectors,
           "STREAMREC_TOPIC_ITEM_STATE": settings.topic_item_state,
           "STREAMREC_TOPIC_DEAD_LETTERS": settings.topic_dead_letters,
           "STREAMREC_INTERACTIONS_PARTITIONS": str(PARTITIONS), "STREAMREC_ARTIFACTS": str(tmp_path / "none")}

    await _run_until_applied(env, redis_client, settings, total, tmp_path / "first.log")
    log = load_log(world)
    static = ItemStatic.from_catalog(log.catalog)
    now = int(log.ts.max()) + 1
    before = await _snapshot(redis_client, static, now)
    assert len(before["users"]) > 50 and before["item_counts"].sum() > 500  # type: ignore[union-attr, attr-defined]

    await redis_client.flushdb()
    junk = DEFAULT_KEYS.prefix + ":junk"  # --rebuild deletes whatever the prefix holds
    await redis_client.set(junk, b"left over")
    await _run_until_applied(env, redis_client, settings, total, tmp_path / "rebuild.log", "--rebuild")
    after = await _snapshot(redis_client, static, now)
    assert not await redis_client.exists(junk)
    assert after["users"] == before["users"]  # byte for byte
    assert after["offsets"] == before["offsets"]
    np.testing.assert_array_equal(after["item_counts"], before["item_counts"])
    np.testing.assert_array_equal(after["item_pop"], before["item_pop"])
