"""User vectors through real Redis pipelines (as the worker runs effects) and item vectors on real Kafka."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from foundation.kafka_io import connection_options, make_producer
from foundation.settings import Settings
from models.bundle import Bundle, open_bundle
from models.cf import CFModel
from models.config import TwoStageConfig
from models.item_vector_codec import ItemVector, decode_item_vector, space_id
from models.online_user import OnlineUserModel, online_weight
from models.train import train_bundle
from online_state.keys import DEFAULT_KEYS
from online_state.user_vectors import read_user_vector
from schemas.events import Complete, Impression, InteractionEvent, ItemRemove, ItemUpsert, Play, Rating, Skip
from streams.effects import Batch, BatchInfo
from streams.item_vectors import ItemVectorPublisher, publish_bundle_vectors
from streams.user_vectors import UserVectorEffect
from tools.datasets.world import generate_world


async def apply_batch(redis: Any, effect: UserVectorEffect, events: list[InteractionEvent], info: BatchInfo) -> None:
    """What the worker does: reads in one non-transactional pipeline, writes inside MULTI/EXEC."""
    batch = Batch(info, events)
    pipe = redis.pipeline(transaction=False)
    reads = effect.read(pipe, batch)
    reads.replies = await pipe.execute() if reads.queued else []
    async with redis.pipeline(transaction=True) as tx:
        tx.multi()
        effect.write(tx, batch, reads)
        tx.set(DEFAULT_KEYS.offset(info.topic, info.partition), info.last_offset)
        await tx.execute()


def _events(item_ids: list[str]) -> list[InteractionEvent]:
    base = {"schema_version": 1}
    return [
        Play(event_id="e1", ts=1, user_id="alice", item_id=item_ids[0], **base),
        Impression(event_id="e2", ts=2, user_id="alice", item_ids=item_ids[:3], request_id="r", **base),
        Complete(event_id="e3", ts=3, user_id="alice", item_id=item_ids[1], watched_seconds=10.0, **base),
        Skip(event_id="e4", ts=4, user_id="bob", item_id=item_ids[2], **base),
        Rating(event_id="e5", ts=5, user_id="bob", item_id=item_ids[3], value=4.5, **base),
        Play(event_id="e6", ts=6, user_id="carol", item_id="not-in-bundle", **base),
        Play(event_id="e7", ts=7, user_id="alice", item_id=item_ids[4], **base),
    ]


async def test_user_vector_effect_through_redis(redis_client: Any) -> None:
    rng = np.random.default_rng(0)
    vectors = (rng.standard_normal((20, 8)) * 0.3).astype(np.float32)
    item_ids = [f"m{i}" for i in range(20)]
    model = OnlineUserModel(vectors)
    effect = UserVectorEffect(model, {iid: i for i, iid in enumerate(item_ids)})
    events = _events(item_ids)
    info = BatchInfo("interactions", 0, 0, len(events) - 1)
    await apply_batch(redis_client, effect, events, info)

    alice, version = await read_user_vector(redis_client, "alice", space=space_id(vectors))
    assert version == 3  # play, complete, play; the impression moves nothing
    expected = model.update(None, [(0, 1.0, 1), (1, 2.0, 3), (4, 1.0, 7)])
    assert alice is not None
    np.testing.assert_array_equal(alice, expected)
    bob, bob_version = await read_user_vector(redis_client, "bob")
    assert bob is not None and bob_version == 2
    np.testing.assert_array_equal(bob, model.update(None, [(2, -1.0, 4), (3, online_weight("rating", 4.5), 5)]))
    assert await read_user_vector(redis_client, "carol") == (None, 0)  # only an unknown title
    assert 0 < await redis_client.ttl(DEFAULT_KEYS.user_vector("alice")) <= 400 * 86_400
    assert len(await redis_client.get(DEFAULT_KEYS.user_vector("alice"))) == 8 + 4 * 8

    # A second batch continues from the stored value, bit-identical to one long update.
    more = [Play(event_id="e8", ts=8, user_id="alice", item_id="m9", schema_version=1)]
    await apply_batch(redis_client, effect, more, BatchInfo("interactions", 0, 7, 7))
    alice2, version2 = await read_user_vector(redis_client, "alice")
    assert version2 == 4 and alice2 is not None
    np.testing.assert_array_equal(alice2, model.update(expected, [(9, 1.0, 8)]))

    # Another bundle's space: the stored vector is ignored and the user starts again.
    other = UserVectorEffect(OnlineUserModel(vectors * 2), effect.item_index)
    await apply_batch(redis_client, other, more, BatchInfo("interactions", 0, 8, 8))
    alice3, version3 = await read_user_vector(redis_client, "alice", space=space_id(vectors * 2))
    assert version3 == 1 and alice3 is not None
    np.testing.assert_array_equal(alice3, other.model.update(None, [(9, 1.0, 8)]))


async def test_initial_vector_from_the_bundle(redis_client: Any) -> None:
    vectors = np.eye(4, dtype=np.float32)
    model = OnlineUserModel(vectors)
    start = np.array([0.5, 0, 0, 0], np.float32)
    effect = UserVectorEffect(model, {"a": 0, "b": 1}, initial=lambda uid: start if uid == "u1" else None)
    events: list[InteractionEvent] = [Play(event_id="x", ts=1, user_id="u1", item_id="b", schema_version=1)]
    await apply_batch(redis_client, effect, events, BatchInfo("interactions", 1, 0, 0))
    got, _ = await read_user_vector(redis_client, "u1")
    assert got is not None
    np.testing.assert_array_equal(got, model.update(start, [(1, 1.0, 1)]))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("ivbundle")
    generate_world(root / "data", users=150, items=800, events=12_000, seed=4, days=10)
    train_bundle(root / "data", root / "artifacts",
                 TwoStageConfig(dim=16, rank_users=100, ranker_epochs=2, sequence_epochs=3))
    return open_bundle(root / "artifacts")


async def _topic(stack: Settings) -> Settings:
    settings = stack.model_copy(update={"topic_item_vectors": f"item-vectors-{uuid.uuid4().hex[:8]}"})
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic_item_vectors, num_partitions=4, replication_factor=1,
                                            topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    return settings


async def _read_topic(settings: Settings, expected: int) -> list[tuple[bytes, bytes | None]]:
    consumer = AIOKafkaConsumer(settings.topic_item_vectors, **connection_options(settings),
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        for _ in range(100):
            batches = await consumer.getmany(timeout_ms=200)
            for recs in batches.values():
                records.extend(recs)
            if len(records) >= expected:
                break
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return [(r.key, r.value) for r in records]


async def test_publisher_new_title_change_and_remove(stack: Settings, bundle: Bundle) -> None:
    settings = await _topic(stack)
    producer = make_producer(settings)
    await producer.start()
    try:
        cf = CFModel.load(bundle.file("cf.npz"))
        item_ids: list[str] = bundle.json("item_ids")
        trained_row = int(np.flatnonzero(cf.trained_items)[0])
        pub = ItemVectorPublisher.from_bundle(bundle, producer, topic=settings.topic_item_vectors)
        new = ItemUpsert(event_id="c1", ts=1000, item_id="brand-new", title="Space Heist (2027)",
                         genres=["Sci-Fi", "Action"], tags=["heist"], release_ts=0, year=2027, schema_version=1)
        assert await pub.handle(new)
        assert not await pub.handle(new)  # same metadata: the vector did not move
        fix = ItemUpsert(event_id="c2", ts=1001, item_id=item_ids[trained_row], title="Renamed",
                         genres=["Drama"], release_ts=0, schema_version=1)
        assert not await pub.handle(fix)  # a trained title keeps its CF vector: nothing to publish
        assert await pub.handle(ItemRemove(event_id="c3", ts=1002, item_id="brand-new", schema_version=1))
        await pub.flush()
        records = await _read_topic(settings, 2)
    finally:
        await producer.stop()
    assert [k for k, _ in records] == [b"brand-new", b"brand-new"]
    first = decode_item_vector(*records[0])
    assert isinstance(first, ItemVector)
    assert first.bundle == bundle.version and first.source == "content" and first.ts == 1000
    expected, _ = pub.vector_for(new)
    np.testing.assert_array_equal(first.vector, expected)
    assert first.vector.shape == (cf.dim,) and np.any(first.vector)
    assert records[1][1] is None and decode_item_vector(*records[1]) is None  # the tombstone


async def test_publish_bundle_vectors_seeds_every_item(stack: Settings, bundle: Bundle) -> None:
    settings = await _topic(stack)
    producer = make_producer(settings)
    await producer.start()
    try:
        sent = await publish_bundle_vectors(bundle, producer, topic=settings.topic_item_vectors)
    finally:
        await producer.stop()
    cf = CFModel.load(bundle.file("cf.npz"))
    index = {iid: i for i, iid in enumerate(bundle.json("item_ids"))}
    assert sent == int(np.sum(np.any(cf.item_vectors != 0, axis=1)))
    records = await _read_topic(settings, sent)
    assert len(records) == sent
    for key, value in records[:50]:
        item = decode_item_vector(key, value)
        assert item is not None
        np.testing.assert_array_equal(item.vector, cf.item_vectors[index[item.item_id]])

