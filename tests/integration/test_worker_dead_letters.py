"""The worker against the real broker and Redis: invalid records become dead letters (original bytes,
source key, the contract's headers), valid ones are applied, and the worker keeps running."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from foundation.kafka_io import connection_options, make_producer
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.feature_codec import decode_user_blob
from online_state.keys import DEFAULT_KEYS
from schemas.topics import DLQ_HEADERS
from streams.worker import Worker, WorkerOptions

T0 = 1_767_225_600_000


def per_test_settings(stack: Settings, tag: str) -> Settings:
    suffix = f"{tag}-{uuid.uuid4().hex[:8]}"
    return stack.model_copy(update={
        "topic_interactions": f"interactions-{suffix}", "topic_catalog": f"catalog-{suffix}",
        "topic_item_vectors": f"item-vectors-{suffix}", "topic_item_state": f"item-state-{suffix}",
        "topic_dead_letters": f"dead-letters-{suffix}",
        "interactions_partitions": 4, "catalog_partitions": 2,
    })


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **options: object) -> AsyncIterator[Worker]:
    worker = Worker(settings, WorkerOptions(group_id=f"g-{uuid.uuid4().hex[:8]}", fetch_timeout_ms=50,
                                            **options))  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stopping.set()
        await asyncio.wait_for(task, 30)


async def send_records(settings: Settings, topic: str, records: Iterable[tuple[str | bytes, bytes]]) -> None:
    """Produce ``(key, value)`` records to ``topic`` in order and wait until the broker has them all."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key.encode() if isinstance(key, str) else key)
        await producer.flush()
    finally:
        await producer.stop()


def _play(user: str, item: str, ts: int) -> bytes:
    return orjson.dumps({"type": "play", "event_id": f"e{ts}", "ts": ts, "schema_version": 1, "user_id": user,
                         "item_id": item})


def _upsert(item: str, ts: int) -> bytes:
    return orjson.dumps({"type": "item_upsert", "event_id": f"c-{item}", "ts": ts, "schema_version": 1,
                         "item_id": item, "title": f"Title {item}", "genres": ["Drama"], "release_ts": ts})


async def _wait_for(predicate, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + seconds
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def test_invalid_records_become_dead_letters_and_valid_ones_are_applied(
    stack: Settings, redis_client: aioredis.Redis
) -> None:
    settings = per_test_settings(stack, "dlq")
    await ensure_topics_retrying(settings)
    invalid = {
        b"u1": (b"{not json", "$"),
        b"u2": (orjson.dumps({"type": "play", "event_id": "x", "ts": "yesterday", "schema_version": 1,
                              "user_id": "u2", "item_id": "i1"}), "$.ts"),
        b"u3": (_upsert("i9", T0), "$.type"),  # a catalog event on the interactions topic
    }
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_catalog, _upsert("i1", T0), key=b"i1")
        await producer.send_and_wait(settings.topic_catalog, b"\xff\xfe garbage", key=b"bad-item")
        for n in range(20):
            await producer.send(settings.topic_interactions, _play(f"u{n % 5}", "i1", T0 + n), key=f"u{n % 5}".encode())
        for key, (raw, _) in invalid.items():
            await producer.send(settings.topic_interactions, raw, key=key)
        await producer.flush()

        async with running_worker(settings) as worker:
            async def all_dead() -> bool:
                return worker.rejected >= len(invalid) + 1 and worker.processed >= 20

            await _wait_for(all_dead)
            # Still alive and consuming after the bad input: one more valid event gets applied.
            await producer.send_and_wait(settings.topic_interactions, _play("u0", "i1", T0 + 100), key=b"u0")

            async def one_more() -> bool:
                return worker.processed >= 21

            await _wait_for(one_more)
            assert not worker.stopping.is_set()
    finally:
        await producer.stop()

    # Valid events applied: item i1 saw 21 plays; every partition's offset is stored.
    assert int(await redis_client.hget(DEFAULT_KEYS.item_state("i1"), "play") or 0) == 21
    assert await redis_client.exists(DEFAULT_KEYS.user_state("u0"))
    stored = [await redis_client.get(DEFAULT_KEYS.offset(settings.topic_interactions, p)) for p in range(4)]
    assert sum(int(v) + 1 for v in stored if v is not None) == 20 + len(invalid) + 1  # every record accounted

    consumer = AIOKafkaConsumer(settings.topic_dead_letters, **connection_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    letters = []
    try:
        while len(letters) < len(invalid) + 1:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 20)
            for records in batch.values():
                letters.extend(records)
    finally:
        await consumer.stop()
    assert len(letters) == len(invalid) + 1  # nothing twice
    by_key = {letter.key: letter for letter in letters}
    for key, (raw, field) in invalid.items():
        letter = by_key[key]
        assert letter.value == raw
        headers = dict(letter.headers)
        assert [name for name, _ in letter.headers] == list(DLQ_HEADERS)
        assert headers["x-error-field"].decode() == field
        assert headers["x-error-reason"]
        assert headers["x-source-topic"].decode() == settings.topic_interactions
        assert int(headers["x-source-offset"]) >= 0
        assert 0 <= int(headers["x-source-partition"]) < 4
    catalog_letter = by_key[b"bad-item"]
    assert catalog_letter.value == b"\xff\xfe garbage"
    assert dict(catalog_letter.headers)["x-source-topic"].decode() == settings.topic_catalog


@pytest.mark.parametrize("n", [1])
async def test_worker_runs_without_bundle_and_knows_catalog_genres(
    stack: Settings, redis_client: aioredis.Redis, n: int
) -> None:
    """Titles come from the catalog topic when there is no bundle: the user's taste gets the genre."""
    settings = per_test_settings(stack, "nobundle")
    await ensure_topics_retrying(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_catalog, _upsert("i7", T0), key=b"i7")
        await producer.send_and_wait(settings.topic_interactions, _play("u1", "i7", T0 + n), key=b"u1")
    finally:
        await producer.stop()
    async with running_worker(settings) as worker:
        async def applied() -> bool:
            return worker.processed >= 1

        await _wait_for(applied)
    blob = decode_user_blob(await redis_client.get(DEFAULT_KEYS.user_state("u1")))
    assert "Drama" in blob.g
