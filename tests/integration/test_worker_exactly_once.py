"""Exactly once under SIGKILL: worker processes killed at random moments (and a rebalance between two
workers) leave Redis with exactly the state that applying the log once, in memory, gives.

A generated world (with malformed lines) is replayed into per-test topics; its malformed lines are
published too, raw. Workers run as subprocesses (``python -m streams.worker``, features only: the
other effects have no in-memory ground truth here) and are SIGKILLed when the applied share of the
log crosses random thresholds, then restarted, until every partition's stored offset reaches its
end. Then every user's state and every item's counts and popularity sums, read through
:class:`RedisFeatureStore`, must equal those of :class:`MemoryFeatureStore` fed the same events
once; and every malformed record must be on the dead-letters topic (at least once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.dataset import load_log
from models.features.state import EventBatch, ItemStatic
from schemas.decoder import EventError, interaction_decoder
from streamrec.datasets.world import generate_world
from streamrec.feature_store import RedisFeatureStore
from streamrec.feature_store.memory import MemoryFeatureStore
from streamrec.kafka_io import make_producer
from streamrec.replay import replay_log
from streamrec.settings import Settings
from streamrec.stack.process import terminate
from streams.effects import offset_key
from streams.worker import ensure_topics_retrying

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 8


@dataclasses.dataclass
class World:
    path: Path
    events: list  # decoded interaction events, log order
    malformed: list[bytes]
    static: ItemStatic


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    path = tmp_path_factory.mktemp("eo-world")
    generate_world(path, users=120, items=250, events=6000, seed=11, malformed_rate=0.01)
    events, malformed = [], []
    for line in (path / "events.jsonl").read_bytes().splitlines():
        try:
            events.append(interaction_decoder.decode(line))
        except EventError:
            malformed.append(line)
    assert malformed, "the world should hold malformed lines"
    return World(path, events, malformed, ItemStatic.from_catalog(load_log(path).catalog))


def _settings(stack: Settings, tag: str) -> Settings:
    suffix = f"{tag}-{uuid.uuid4().hex[:8]}"
    return stack.model_copy(update={
        "topic_interactions": f"interactions-{suffix}", "topic_catalog": f"catalog-{suffix}",
        "topic_item_vectors": f"item-vectors-{suffix}", "topic_dead_letters": f"dead-letters-{suffix}",
        "interactions_partitions": PARTITIONS,
    })


async def _fill(world: World, settings: Settings, *, catalog: bool = True, events: bool = True) -> dict[int, int]:
    """Replay the world (its catalog, its events) and the malformed lines; returns each interactions
    partition's end offset."""
    await ensure_topics_retrying(settings)
    if catalog:
        await replay_log(world.path / "catalog.jsonl", settings)
    if not events:
        return {}
    report = await replay_log(world.path / "events.jsonl", settings)
    assert report.per_topic[settings.topic_interactions] == len(world.events)
    producer = make_producer(settings)
    await producer.start()
    try:
        for k, raw in enumerate(world.malformed):
            await producer.send(settings.topic_interactions, raw, key=f"bad{k}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_interactions, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: end for tp, end in ends.items()}


def _env(stack_env: dict[str, str], settings: Settings) -> dict[str, str]:
    return {**stack_env, "STREAMREC_TOPIC_INTERACTIONS": settings.topic_interactions,
            "STREAMREC_TOPIC_CATALOG": settings.topic_catalog,
            "STREAMREC_TOPIC_ITEM_VECTORS": settings.topic_item_vectors,
            "STREAMREC_TOPIC_DEAD_LETTERS": settings.topic_dead_letters,
            "STREAMREC_INTERACTIONS_PARTITIONS": str(PARTITIONS), "STREAMREC_LOG_LEVEL": "WARNING",
            "STREAMREC_ARTIFACTS": "/nonexistent-bundle"}


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streams.worker", "--metrics-port", "0", "--max-records", "60",
             "--session-timeout-ms", "6000", "--features-only"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


async def _applied(client: aioredis.Redis, settings: Settings) -> int:
    """Records applied so far (sum over partitions of stored offset + 1)."""
    keys = [offset_key("sr", settings.topic_interactions, p) for p in range(PARTITIONS)]
    return sum(int(v) + 1 for v in await client.mget(keys) if v is not None)


async def _wait_applied(client: aioredis.Redis, settings: Settings, at_least: int, seconds: float,
                        procs: list[subprocess.Popen[bytes]]) -> int:
    deadline = time.monotonic() + seconds
    while True:
        done = await _applied(client, settings)
        if done >= at_least:
            return done
        for proc in procs:
            assert proc.poll() is None, f"worker exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"only {done} of {at_least} records applied"
        await asyncio.sleep(0.005)


def _last_assignment(log_path: Path, topic: str) -> int | None:
    lines = [line for line in log_path.read_text().splitlines() if "worker.assigned" in line]
    return lines[-1].count(f"'{topic}:") if lines else None


async def _wait_split(a: Path, b: Path, settings: Settings, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        owned = [_last_assignment(path, settings.topic_interactions) for path in (a, b)]
        if None not in owned and sum(owned) == PARTITIONS and 0 not in owned:  # type: ignore[arg-type]
            return
        assert time.monotonic() < deadline, f"partitions never split between the workers: {owned}"
        await asyncio.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    terminate(proc, timeout_s=20)


async def _assert_state_equals_ground_truth(client: aioredis.Redis, world: World) -> None:
    truth = MemoryFeatureStore(world.static)
    for start in range(0, len(world.events), 1000):
        await truth.apply(EventBatch.from_events(world.events[start:start + 1000], world.static))
    redis_store = RedisFeatureStore(client, world.static)
    now = max(e.ts for e in world.events) + 1
    items = list(world.static.item_ids)
    got, want = await redis_store.read("nobody", items, now), await truth.read("nobody", items, now)
    np.testing.assert_array_equal(got.items.counts, want.items.counts)
    np.testing.assert_array_equal(got.items.pop, want.items.pop)
    assert got.items.counts.sum() > 1000  # real state was compared
    users = sorted({e.user_id for e in world.events})
    for user in users:
        got, want = await redis_store.read(user, [], now), await truth.read(user, [], now)
        for f in dataclasses.fields(got.user):
            np.testing.assert_array_equal(getattr(got.user, f.name), getattr(want.user, f.name),
                                          err_msg=f"user {user}, {f.name}")


async def _assert_dead_letters(settings: Settings, world: World) -> None:
    consumer = AIOKafkaConsumer(settings.topic_dead_letters, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: set[bytes] = set()
    sources: set[tuple[bytes, bytes]] = set()
    try:
        deadline = time.monotonic() + 20
        while len(seen) < len(world.malformed) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    seen.add(r.value)
                    headers = dict(r.headers)
                    sources.add((headers["x-source-partition"], headers["x-source-offset"]))
    finally:
        await consumer.stop()
    assert seen == set(world.malformed)  # none lost (duplicates allowed: at least once)
    assert len(sources) == len(world.malformed)


async def test_sigkilled_worker_restarts_to_exactly_once_state(
    stack: Settings, stack_env: dict[str, str], redis_client: aioredis.Redis, world: World, tmp_path: Path
) -> None:
    settings = _settings(stack, "kill")
    ends = await _fill(world, settings)
    total = sum(ends.values())
    env = _env(stack_env, settings)
    rng = random.Random(5)
    kills = 0
    for share in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
        proc = _spawn(env, tmp_path / "worker.log")
        try:
            await _wait_applied(redis_client, settings, int(share * total), 60, [proc])
            await asyncio.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    assert kills == 3
    assert await _applied(redis_client, settings) < total  # the last kill left work to do
    proc = _spawn(env, tmp_path / "worker.log")
    try:
        await _wait_applied(redis_client, settings, total, 60, [proc])
    finally:
        _stop(proc)
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    await _assert_state_equals_ground_truth(redis_client, world)
    await _assert_dead_letters(settings, world)


async def test_two_workers_one_killed_rebalance_exactly_once(
    stack: Settings, stack_env: dict[str, str], redis_client: aioredis.Redis, world: World, tmp_path: Path
) -> None:
    settings = _settings(stack, "pair")
    await _fill(world, settings, events=False)  # the catalogue first: workers read it at start-up
    env = {**_env(stack_env, settings), "STREAMREC_LOG_LEVEL": "INFO"}
    a, b = _spawn(env, tmp_path / "a.log"), _spawn(env, tmp_path / "b.log")
    try:
        await _wait_split(tmp_path / "a.log", tmp_path / "b.log", settings)  # both own partitions
        ends = await _fill(world, settings, catalog=False)
        total = sum(ends.values())
        await _wait_applied(redis_client, settings, int(0.3 * total), 60, [a, b])
        a.send_signal(signal.SIGKILL)
        a.wait()
        await _wait_applied(redis_client, settings, total, 60, [b])  # b takes a's partitions over
    finally:
        for proc in (a, b):
            if proc.poll() is None and proc is a:
                proc.kill()
                proc.wait()
        _stop(b)
    assert b.returncode == 0, (tmp_path / "b.log").read_text()[-3000:]
    # Both owned partitions, and b was assigned again after a died (the rebalance).
    assert "worker.assigned" in (tmp_path / "a.log").read_text()
    assert (tmp_path / "b.log").read_text().count("worker.assigned") >= 2
    await _assert_state_equals_ground_truth(redis_client, world)
    await _assert_dead_letters(settings, world)


def test_no_worker_left_running() -> None:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in out.splitlines() if "streams.worker" in line and str(os.getpid()) not in line
            and "ps -eo" not in line]
    assert not [line for line in mine if "--features-only" in line and "--session-timeout-ms 6000" in line]


async def test_a_zombie_batch_is_fenced_by_watch(stack: Settings, redis_client: aioredis.Redis) -> None:
    """Two workers that both believe they own partition 0 handle the same batch at the same time (the
    zombie of a rebalance and the new owner): the WATCH on the offset key lets one EXEC through; the
    other is refused, re-reads the offset and skips, so the events count once."""
    from types import SimpleNamespace

    import orjson

    from streams import metrics
    from streams.worker import Worker, WorkerOptions

    settings = _settings(stack, "zombie")
    records = [
        SimpleNamespace(topic=settings.topic_interactions, partition=0, offset=100 + k, key=b"u1",
                        value=orjson.dumps({"type": "play", "event_id": f"e{k}", "ts": 1_767_225_600_000 + k,
                                            "schema_version": 1, "user_id": "u1", "item_id": "i1"}))
        for k in range(50)
    ]
    tp = TopicPartition(settings.topic_interactions, 0)
    workers = []
    for _ in range(2):
        worker = Worker(settings, WorkerOptions(), effects=[], catalog_hooks=[])
        worker.redis = redis_client
        workers.append(worker)
    fenced_before = metrics.FENCED.labels(settings.topic_interactions)._value.get()
    lasts = await asyncio.gather(*(worker._handle(tp, records) for worker in workers))
    assert lasts == [149, 149]
    assert int(await redis_client.hget("sr:i:i1", "play")) == 50
    assert int(await redis_client.get(offset_key("sr", settings.topic_interactions, 0))) == 149
    assert metrics.FENCED.labels(settings.topic_interactions)._value.get() == fenced_before + 1
    assert sum(worker.processed for worker in workers) == 50
