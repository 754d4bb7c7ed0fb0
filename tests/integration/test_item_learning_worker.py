"""Online item learning through the worker, real Kafka and Redis: a new title engaged by several users
is re-published on ``item-vectors`` (``source=online``) moved toward those users' vectors, by the
written rule; a change below the threshold publishes nothing; a committed move never published (a
worker killed in between) is published by the start-up catch-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from numpy.typing import NDArray
from test_worker_dead_letters import T0, _play, _wait_for, per_test_settings, running_worker, send_records

from foundation.kafka_io import connection_options, make_producer
from foundation.settings import Settings
from models.item_vector_codec import ItemVector, decode_item_vector, space_id
from online_state.item_learning import (
    ItemSums,
    bytes_vector,
    increment_fields,
    parse_learning_state,
    state_fields,
    to_fixed,
    vector_bytes,
)
from online_state.keys import DEFAULT_KEYS
from streams.item_learning import PRIOR_WEIGHT, OnlineItemPublisher, cosine_distance, learned_vector
from streams.item_vectors import DEFAULT_THRESHOLD


def _upsert(item: str, title: str, genres: list[str], tags: list[str]) -> bytes:
    return orjson.dumps({"type": "item_upsert", "event_id": f"c-{item}", "ts": T0, "schema_version": 1,
                         "item_id": item, "title": title, "genres": genres, "tags": tags, "cast": [],
                         "release_ts": T0})


async def _vectors(settings: Settings, until: Callable[[list[ItemVector]], bool], seconds: float = 60) -> list[
        ItemVector]:
    """Every record of ``item-vectors`` from the beginning, read until ``until(records)`` holds, then to
    the end offsets of that moment (so nothing published before it is missed)."""
    consumer = AIOKafkaConsumer(settings.topic_item_vectors, **connection_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[ItemVector] = []

    async def poll() -> None:
        for records in (await consumer.getmany(timeout_ms=300)).values():
            out.extend(v for r in records if (v := decode_item_vector(r.key, r.value)) is not None)

    try:
        async def done() -> bool:
            await poll()
            return until(out)
        await _wait_for(done, seconds)
        parts = consumer.partitions_for_topic(settings.topic_item_vectors) or set()
        ends = await consumer.end_offsets([TopicPartition(settings.topic_item_vectors, p) for p in parts])
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            await poll()
    finally:
        await consumer.stop()
    return out


def _online(records: list[ItemVector], item: str) -> list[ItemVector]:
    return [r for r in records if r.item_id == item and r.source == "online"]


async def _state(redis: aioredis.Redis, item: str, dim: int, space: int) -> tuple[NDArray[np.float32], int, int,
                                                                                   NDArray[np.int64]]:
    raw = await redis.hmget(DEFAULT_KEYS.item_learning(space, item), state_fields(dim))
    sums, q0, gone, _ = parse_learning_state(raw, dim)
    vector = bytes_vector(q0, dim)
    assert vector is not None and not gone
    return vector, sums.w, sums.n, sums.s


def _rule(q0: NDArray[np.floating], users: list[NDArray[np.floating]]) -> NDArray[np.float64]:
    """The written rule in float64, plays only (weight 1 each)."""
    return (PRIOR_WEIGHT * np.asarray(q0, np.float64) + np.sum(users, axis=0, dtype=np.float64)) / (
        PRIOR_WEIGHT + len(users))


async def test_engaged_new_title_moves_toward_its_users_and_small_moves_publish_nothing(
    stack: Settings, redis_client: aioredis.Redis, small_bundle: Path
) -> None:
    from foundation.topics import ensure_topics_retrying
    from models.bundle import open_bundle
    from models.cf import CFModel

    settings = per_test_settings(stack, "itemlearn")
    await ensure_topics_retrying(settings)
    bundle = open_bundle(small_bundle)
    cf = CFModel.load(bundle.file("cf.npz"))
    space = space_id(cf.item_vectors)  # the learning keys' CF space
    user_ids: list[str] = bundle.json("user_ids")
    warm = [u for u, ok in zip(user_ids, cf.trained_users, strict=True) if ok]
    vec = {u: cf.user_vectors[user_ids.index(u)] for u in warm}  # plays of new titles leave these unchanged
    titles = {"new-a": _upsert("new-a", "Night Harbour", ["Drama"], ["moody"]),
              "new-b": _upsert("new-b", "Sky Circus", ["Comedy"], ["light"])}
    await send_records(settings, settings.topic_catalog, list(titles.items()))

    async with running_worker(settings, artifacts=small_bundle):
        # The catalog hook stores each new title's content vector (q0) for every worker to start from.
        async def stored() -> bool:
            return all([await redis_client.hexists(DEFAULT_KEYS.item_learning(space, t), "q0") for t in titles])
        await _wait_for(stored, 60)
        q0 = {t: (await _state(redis_client, t, cf.dim, space))[0] for t in titles}

        # Phase 1: the six users nearest to one direction play new-a once each.
        direction = vec[warm[0]] / np.linalg.norm(vec[warm[0]])
        fans = sorted(warm, key=lambda u: -float(vec[u] @ direction) / float(np.linalg.norm(vec[u])))[:6]
        expected = _rule(q0["new-a"], [vec[u] for u in fans])
        target = np.mean([vec[u] for u in fans], axis=0)
        assert cosine_distance(q0["new-a"], expected) > DEFAULT_THRESHOLD  # precondition: a real move
        # Under one key, in one producer batch: one partition batch for the worker (a fetch never splits
        # a record batch), so exactly one decision, taken on all six plays. (Under their own keys the
        # plays land on several partitions, and the first committed part may be what gets published,
        # the rest staying below the threshold: correct, but not one exact value to compare with.)
        await send_records(settings, settings.topic_interactions,
                    [(fans[0], _play(u, "new-a", T0 + 100 + n)) for n, u in enumerate(fans)])
        first = await _vectors(settings, lambda rs: bool(_online(rs, "new-a")))
        got = _online(first, "new-a")[-1]
        _, w, n, s = await _state(redis_client, "new-a", cf.dim, space)
        assert n == len(fans)
        # Published = the rule over the committed sums, and it moved toward the engaging users.
        np.testing.assert_array_equal(got.vector, learned_vector(q0["new-a"], w, s))
        np.testing.assert_allclose(got.vector, expected, rtol=1e-5, atol=1e-6)
        assert cosine_distance(got.vector, target) < cosine_distance(q0["new-a"], target)
        assert got.bundle == bundle.version and got.ts == T0 + 100 + len(fans) - 1
        assert next(r.source for r in first if r.item_id == "new-a") == "content"  # the hook's first record

        # Phase 2, one partition (one user key, in order): one more play of new-a that moves it less
        # than the threshold, then plays of new-b that move it far (the sentinel: once new-b's record
        # is out, new-a's decision was taken in the same or an earlier pass).
        after = {u: _rule(q0["new-a"], [*(vec[f] for f in fans), vec[u]]) for u in warm}
        small_user = min(warm, key=lambda u: cosine_distance(after[u], got.vector))
        assert cosine_distance(after[small_user], got.vector) <= DEFAULT_THRESHOLD  # precondition
        far = max(warm, key=lambda u: cosine_distance(_rule(q0["new-b"], [vec[u]] * 5), q0["new-b"]))
        assert cosine_distance(_rule(q0["new-b"], [vec[far]] * 5), q0["new-b"]) > DEFAULT_THRESHOLD
        # All under far's key (one partition, so the order holds); small_user has no other events.
        plays = [(far, _play(small_user, "new-a", T0 + 500))] + [
            (far, _play(far, "new-b", T0 + 600 + k)) for k in range(5)]
        await send_records(settings, settings.topic_interactions, plays)
        second = await _vectors(settings, lambda rs: bool(_online(rs, "new-b")))
        assert (await _state(redis_client, "new-a", cf.dim, space))[2] == len(fans) + 1  # the small move was applied
    assert len(_online(second, "new-a")) == len(_online(first, "new-a")) == 1  # ... and published nothing
    np.testing.assert_allclose(_online(second, "new-b")[-1].vector, _rule(q0["new-b"], [vec[far]] * 5),
                               rtol=1e-5, atol=1e-6)


async def test_catch_up_publishes_moves_committed_but_never_published(
    stack: Settings, redis_client: aioredis.Redis
) -> None:
    """A worker killed between a batch's EXEC and its publication: the next worker's start-up catch-up
    publishes the committed vector once; moves below the threshold and published ones stay quiet."""
    from foundation.topics import ensure_topics_retrying

    settings = per_test_settings(stack, "catchup")
    await ensure_topics_retrying(settings)
    q0 = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    toward = np.array([0.0, 1.0, 0.0, 0.0])

    def state(weight: float, pub: NDArray[np.float32] | None = None) -> dict[str, bytes | int]:
        sums = ItemSums(int(to_fixed(weight)), 3, to_fixed(weight * toward), 0)
        fields = increment_fields(sums)
        out: dict[str, bytes | int] = {fields[j]: fields[j + 1] for j in range(0, len(fields), 2)}
        out["q0"] = vector_bytes(q0)
        if pub is not None:
            out["pub"] = vector_bytes(pub)
        return out

    moved = learned_vector(q0, int(to_fixed(3.0)), to_fixed(3.0 * toward))
    await redis_client.hset(DEFAULT_KEYS.item_learning(7, "t-moved"), mapping=state(3.0))  # type: ignore[arg-type]
    await redis_client.hset(DEFAULT_KEYS.item_learning(7, "t-small"), mapping=state(0.05))  # type: ignore[arg-type]
    await redis_client.hset(DEFAULT_KEYS.item_learning(7, "t-done"), mapping=state(3.0, pub=moved))  # type: ignore[arg-type]
    await redis_client.hset(DEFAULT_KEYS.item_learning(7, "t-content-only"), mapping={"q0": vector_bytes(q0)})
    producer = make_producer(settings)
    await producer.start()
    try:
        publisher = OnlineItemPublisher(redis_client, producer, topic=settings.topic_item_vectors,
                                        bundle_version="b1", dim=4, space=7, base=lambda _item: None)
        assert await publisher.catch_up() == 1
        assert await publisher.catch_up() == 0  # pub now holds what the topic has
    finally:
        await producer.stop()
    records = await _vectors(settings, lambda rs: bool(_online(rs, "t-moved")))
    assert [(r.item_id, r.source, r.bundle) for r in records] == [("t-moved", "online", "b1")]
    np.testing.assert_array_equal(records[0].vector, moved)
