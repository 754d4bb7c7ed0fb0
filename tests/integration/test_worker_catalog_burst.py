"""The worker under a burst of new titles on several catalog partitions, and after its producer died.

Found by running the default demo: four catalog batches handled at once shared one batch sender,
a batch was handed to the producer twice, aiokafka's sender task died, and from then on every
batch failed ("Unexpected error during batch delivery") and the demo waited forever. Now each
batch flushes a sender of its own, and a worker whose producer died restarts its clients.

The race itself depends on timing (a batch flushing while the one before still lingers in the
producer) and is pinned down deterministically in ``tests/unit/test_keyed_batch_sender.py``; the
burst here checks the outcome through the real worker: every new title's vector on the topic and
no failed catalog batch. The restart test kills a real producer the way the bug did.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_worker_dead_letters import T0, _play, _wait_for, per_test_settings, running_worker, send_records

from foundation.kafka_io import connection_options, producer_failure
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.keys import DEFAULT_KEYS
from streams import metrics

GENRES = ["Drama", "Comedy", "Action", "Thriller", "Documentary"]


def _new_title(n: int) -> bytes:
    return orjson.dumps({"type": "item_upsert", "event_id": f"c-new-{n}", "ts": T0 + n, "schema_version": 1,
                         "item_id": f"new-{n}", "title": f"New Title {n} {GENRES[n % 5]}",
                         "genres": [GENRES[n % 5], GENRES[(n * 7) % 5]], "tags": [f"tag{n % 13}"],
                         "cast": [f"actor{n % 29}"], "release_ts": T0 + n})


async def _keys_on(settings: Settings, topic: str) -> set[bytes]:
    """Every key on ``topic``, read to the end offsets of this moment."""
    consumer = AIOKafkaConsumer(topic, **connection_options(settings), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    keys: set[bytes] = set()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=300)).values():
                keys.update(r.key for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return keys


async def test_a_burst_of_new_titles_on_every_catalog_partition_publishes_each_vector(
    stack: Settings, redis_client: aioredis.Redis, small_bundle: Path
) -> None:
    settings = per_test_settings(stack, "burst").model_copy(update={"catalog_partitions": 4})
    await ensure_topics_retrying(settings)
    # Mostly re-sent known titles (their CF vectors are already on the topic: nothing to publish, so a
    # batch reaches its flush fast, while the one before may still be lingering in the producer:
    # the interleaving that broke the shared sender), with a new title every tenth record.
    from models.bundle import open_bundle

    known = open_bundle(small_bundle).json("item_ids")
    records: list[tuple[bytes, bytes]] = []
    n_titles = 400
    for n in range(10 * n_titles):
        if n % 10 == 0:
            records.append((f"new-{n // 10}".encode(), _new_title(n // 10)))
        else:
            item = known[n % len(known)]
            records.append((item.encode(), orjson.dumps({
                "type": "item_upsert", "event_id": f"c-again-{n}", "ts": T0 + n, "schema_version": 1,
                "item_id": item, "title": f"Known {item}", "genres": ["Drama"], "release_ts": T0})))
    await send_records(settings, settings.topic_catalog, records)
    wanted = {f"new-{n}".encode() for n in range(n_titles)}
    failures_before = metrics.FAILURES.labels(settings.topic_catalog)._value.get()
    async with running_worker(settings, artifacts=small_bundle, concurrency=4) as worker:
        async def all_published() -> bool:
            return wanted <= await _keys_on(settings, settings.topic_item_vectors)
        await _wait_for(all_published, seconds=90)
        assert producer_failure(worker.producer) is None
    # No catalog batch failed along the way (the bug failed them all, forever).
    assert metrics.FAILURES.labels(settings.topic_catalog)._value.get() == failures_before


async def test_a_worker_whose_producer_died_restarts_and_goes_on(
    stack: Settings, redis_client: aioredis.Redis
) -> None:
    settings = per_test_settings(stack, "restart")
    await ensure_topics_retrying(settings)
    restarts_before = metrics.RESTARTS._value.get()

    async def applied(n: int) -> bool:
        stored = 0
        for p in range(settings.interactions_partitions):
            raw = await redis_client.get(DEFAULT_KEYS.offset(settings.topic_interactions, p))
            stored += int(raw) + 1 if raw is not None else 0
        return stored >= n

    await send_records(settings, settings.topic_interactions, [(b"u1", _play("u1", "i1", T0 + n)) for n in range(5)])
    async with running_worker(settings) as worker:
        await _wait_for(lambda: applied(5), seconds=60)
        # Kill the producer the way the bug did: one built batch handed over twice.
        dead = worker.producer
        batch = dead.create_batch()
        batch.append(key=b"k", value=b"v", timestamp=None)
        await dead.send_batch(batch, settings.topic_item_vectors, partition=0)
        await dead.send_batch(batch, settings.topic_item_vectors, partition=0)

        async def died() -> bool:
            return producer_failure(dead) is not None
        await _wait_for(died, seconds=30)

        async def restarted() -> bool:
            return metrics.RESTARTS._value.get() > restarts_before and worker.producer is not dead
        await _wait_for(restarted, seconds=60)
        assert producer_failure(worker.producer) is None
        # The new clients work: more plays are applied, and an invalid record still becomes a dead letter.
        plays = [(b"u2", _play("u2", "i2", T0 + 100 + n)) for n in range(5)]
        await send_records(settings, settings.topic_interactions, [*plays, (b"u3", b"{not json")])
        await _wait_for(lambda: applied(11), seconds=60)

        async def dead_lettered() -> bool:
            return b"u3" in await _keys_on(settings, settings.topic_dead_letters)
        await _wait_for(dead_lettered, seconds=30)
