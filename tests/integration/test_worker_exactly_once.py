"""Exactly once under SIGKILL: worker processes killed at random moments (and a rebalance between two
workers) leave Redis with exactly the state that applying the log once, in memory, gives.

A generated world (with malformed lines) is replayed into per-test topics; its malformed lines are
published too, raw. Workers run as subprocesses (``python -m streamrec.commands.worker``, every effect of the list,
with a bundle trained on the first half of the log, so that titles first engaged later are
content-projected and learn online) and are SIGKILLed when the applied share of the log crosses random
thresholds, then restarted, until every partition's stored offset reaches its end. Then every effect
the worker writes must equal its ground truth, computed by the effects' own pure functions applied
ONCE to the whole log (:func:`_assert_all_effects`):

- ranking features: every user's state and every item's counts and popularity sums
  (:class:`RedisFeatureStore` against :class:`MemoryFeatureStore`), exact;
- trending: the same set of ``sr:trend:*`` keys and members, scores (forward-decayed float sums, added
  in another order and batching) within 1e-9 relative (:meth:`TrendingEffect.increments`);
- new releases (:func:`catalog_writes`) and sessions (:meth:`SessionEffect.apply`), exact;
- online user vectors: version = the user's signals, vector within 1e-5 of
  :meth:`OnlineUserModel.update` over the user's events in order from their bundle start;
- online item learning: the fixed-point sums of every title, exact (:meth:`ItemLearningEffect.sums`),
  and the catalog effect's content vectors / removals (:func:`catalog_learning_writes`);
- offsets: every partition of both topics at its end; no ``sr:*`` key outside these families;
- dead letters: every malformed record, each source offset exactly once (a re-delivered batch may
  produce a letter again: delivery is at least once, a duplicate carries the same source offset).

Applying a batch twice (or skipping one) changes the counts, the sums and the versions, so any of
these comparisons fails.
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
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from foundation.kafka_io import connection_options, make_producer
from foundation.redis_io import mget_any as _mget
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import Bundle, open_bundle
from models.dataset import KIND, load_log
from models.features.state import EventBatch, ItemStatic
from models.online_user import online_weights
from online_state import RedisFeatureStore
from online_state.experiments import decode_experiment_blob
from online_state.item_learning import state_fields
from online_state.keys import DEFAULT_KEYS
from online_state.memory_store import MemoryFeatureStore
from online_state.sessions import decode_session
from online_state.user_vectors import unpack_user_vector
from schemas.decoder import EventError, catalog_decoder, interaction_decoder
from schemas.events import CatalogEvent, ItemRemove, ItemUpsert, Rating
from streams import features, item_vectors, metrics, user_vectors
from streams.dedupe import dedupe
from streams.effects import EffectContext
from streams.experiments import ExperimentEffect, apply_experiment_events
from streams.item_learning import catalog_learning_writes
from streams.session import SessionEffect
from streams.trending import TrendingEffect, catalog_writes
from streams.worker import Worker, WorkerOptions
from tools.datasets.world import generate_world
from tools.replay import replay_log
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 8


@dataclasses.dataclass
class World:
    path: Path
    events: list  # decoded interaction events, log order
    malformed: list[bytes]
    static: ItemStatic
    catalog: list[CatalogEvent]  # log order
    artifacts: Path
    bundle: Bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from models.config import TwoStageConfig
    from models.train import train_bundle

    path = tmp_path_factory.mktemp("eo-world")
    generate_world(path, users=120, items=250, events=8000, seed=11, malformed_rate=0.01, days=7)
    lines = (path / "events.jsonl").read_bytes().splitlines()
    events, malformed = [], []
    for line in lines:
        try:
            events.append(interaction_decoder.decode(line))
        except EventError:
            malformed.append(line)
    assert malformed, "the world should hold malformed lines"
    catalog = [catalog_decoder.decode(line) for line in (path / "catalog.jsonl").read_bytes().splitlines()]
    # The bundle knows the first half of the log: titles first engaged later have no CF vector
    # (content-projected), so the online item learning has something to learn.
    train = tmp_path_factory.mktemp("eo-train")
    (train / "catalog.jsonl").write_bytes((path / "catalog.jsonl").read_bytes())
    (train / "events.jsonl").write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    artifacts = tmp_path_factory.mktemp("eo-artifacts")
    train_bundle(train, artifacts, TwoStageConfig(dim=16, rank_users=20, ranker_epochs=1, sequence_epochs=3))
    return World(path, events, malformed, ItemStatic.from_catalog(load_log(path).catalog), catalog, artifacts,
                 open_bundle(artifacts))


def _settings(stack: Settings, tag: str) -> Settings:
    suffix = f"{tag}-{uuid.uuid4().hex[:8]}"
    return stack.model_copy(update={
        "topic_interactions": f"interactions-{suffix}", "topic_catalog": f"catalog-{suffix}",
        "topic_item_vectors": f"item-vectors-{suffix}", "topic_item_state": f"item-state-{suffix}",
        "topic_dead_letters": f"dead-letters-{suffix}",
        "interactions_partitions": PARTITIONS,
    })


async def _fill(world: World, settings: Settings, *, catalog: bool = True, events: bool = True) -> dict[int, int]:
    """Replay the world (its catalog, its events) and the malformed lines; returns each interactions
    partition's end offset (the catalog's are read by :func:`_assert_offsets`)."""
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
    consumer = AIOKafkaConsumer(**connection_options(settings))
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
            "STREAMREC_TOPIC_ITEM_STATE": settings.topic_item_state,
            "STREAMREC_TOPIC_DEAD_LETTERS": settings.topic_dead_letters,
            "STREAMREC_INTERACTIONS_PARTITIONS": str(PARTITIONS), "STREAMREC_LOG_LEVEL": "WARNING",
            "STREAMREC_ARTIFACTS": "/nonexistent-bundle"}  # the bundle comes as --artifacts


WORKER_ARGS = ["--metrics-port", "0", "--max-records", "200", "--session-timeout-ms", "6000"]


def _spawn(env: dict[str, str], log_path: Path, world: World) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamrec.commands.worker", *WORKER_ARGS, "--artifacts", str(world.artifacts)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


async def _applied(client: aioredis.Redis, settings: Settings) -> int:
    """Records applied so far (sum over partitions of stored offset + 1)."""
    keys = [DEFAULT_KEYS.offset(settings.topic_interactions, p) for p in range(PARTITIONS)]
    return sum(int(v) + 1 for v in await _mget(client, keys) if v is not None)


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


async def _wait_catalog_applied(client: aioredis.Redis, settings: Settings, seconds: float,
                                procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Every catalog partition applied to its end. The tests' "all applied" waits count interactions;
    the catalogue's batches have no order with them (a round may take interactions records first),
    so a worker may still hold catalogue records when the last interaction is applied."""
    consumer = AIOKafkaConsumer(**connection_options(settings))
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_catalog, p) for p in range(settings.catalog_partitions)]
        ends = {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items() if end > 0}
    finally:
        await consumer.stop()
    deadline = time.monotonic() + seconds
    while True:
        stored = await _mget(client, [DEFAULT_KEYS.offset(settings.topic_catalog, p) for p in ends])
        if all(raw is not None and int(raw) >= end - 1 for raw, end in zip(stored, ends.values(), strict=True)):
            return
        for proc in procs:
            assert proc.poll() is None, f"worker exited with {proc.returncode}"
        tails = "\n".join(path.read_text()[-3000:] for path in logs)
        assert time.monotonic() < deadline, f"catalog offsets {stored} never reached {ends}:\n{tails}"
        await asyncio.sleep(0.05)


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


async def _assert_all_effects(client: aioredis.Redis, settings: Settings, world: World) -> None:
    """Every effect the worker writes, against its ground truth (see the module docstring)."""
    await _assert_features(client, world)
    await _assert_trending(client, world)
    await _assert_sessions(client, world)
    await _assert_user_vectors(client, world)
    await _assert_item_learning(client, world)
    await _assert_offsets(client, settings)
    await _assert_dead_letters(settings, world)
    await _assert_event_windows(client, world)
    await _assert_experiments(client, world)
    await _assert_slot_markers(client)
    families = ("sr:u:", "sr:i:", "sr:offset:", "sr:trend:", "sr:new_releases", "sr:s:", "sr:uv:", "sr:il:",
                "sr:ew:", "sr:x:", "sr:applied:")
    unchecked = [k for k in await _keys(client, DEFAULT_KEYS.everything) if not k.startswith(families)]
    assert not unchecked, f"keys no ground truth covers (add one here): {unchecked[:5]}"


async def _assert_event_windows(client: aioredis.Redis, world: World) -> None:
    """De-duplication's windows (streams.dedupe): every user's last event ids, as the whole log gives them once."""
    expected = dedupe(world.events, {}, Settings().worker_dedupe_window).windows
    keys = await _keys(client, DEFAULT_KEYS.event_window("*"))
    assert keys == sorted(DEFAULT_KEYS.event_window(u) for u in expected)
    stored = await _mget(client, keys) if keys else []
    assert dict(zip(keys, stored, strict=True)) == {DEFAULT_KEYS.event_window(u): w for u, w in expected.items()}


async def _assert_experiments(client: aioredis.Redis, world: World) -> None:
    """The experiments effect (streams.experiments): every user's blob as its pure function over the log once gives
    it (the world's impressions are in no experiment: the blobs hold the users' engagement totals)."""
    once = dedupe(world.events, {}, Settings().worker_dedupe_window).events
    users, positive = ExperimentEffect.relevant(once)
    want = apply_experiment_events(dict.fromkeys(users), once, positive).blobs
    keys = await _keys(client, DEFAULT_KEYS.experiment_user("*"))
    assert keys == sorted(DEFAULT_KEYS.experiment_user(u) for u in want)
    stored = dict(zip(keys, await _mget(client, keys) if keys else [], strict=True))
    assert {k: decode_experiment_blob(v) for k, v in stored.items()} == {
        DEFAULT_KEYS.experiment_user(u): blob for u, blob in want.items()}
    assert sum(blob.total for blob in want.values()) > 1000  # real state was compared


async def _keys(client: aioredis.Redis, pattern: str) -> list[str]:
    return sorted([key.decode() async for key in client.scan_iter(match=pattern, count=1000)])


class _Recorder:
    """Takes the place of a pipeline for a catalog hook's writes and applies them to dicts: the hooks'
    own functions, run once over the catalog log, give the expected keys."""

    def __init__(self) -> None:
        self.zsets: dict[str, dict[str, float]] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.zsets.setdefault(key, {}).update(mapping)

    def zrem(self, key: str, *members: str) -> None:
        for member in members:
            self.zsets.setdefault(key, {}).pop(member, None)

    def hset(self, key: str, field: str, value: bytes | str) -> None:
        self.hashes.setdefault(key, {})[field] = value if isinstance(value, bytes) else str(value).encode()

    def hdel(self, key: str, *fields: str) -> None:
        for field in fields:
            self.hashes.setdefault(key, {}).pop(field, None)


def _bundle_ctx(world: World) -> EffectContext:
    """What the effect factories read, without a producer or Redis (their pure parts only)."""
    return EffectContext(settings=Settings(), redis=None, bundle=world.bundle)


async def _assert_features(client: aioredis.Redis, world: World) -> None:
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


async def _assert_trending(client: aioredis.Redis, world: World) -> None:
    want = {key: members for (_, key), members in TrendingEffect().increments(world.events).items()}
    assert await _keys(client, DEFAULT_KEYS.trending("*", "*", "*")) == sorted(want)
    assert sum(len(m) for m in want.values()) > 1000
    for key, members in want.items():
        got = {m.decode(): score for m, score in await client.zrange(key, 0, -1, withscores=True)}
        assert got.keys() == members.keys(), key
        # Forward-decayed float sums, added in another order: equal up to double rounding.
        assert got == pytest.approx(members, rel=1e-9, abs=0), key
    releases = _Recorder()
    catalog_writes(releases, [e for e in world.catalog if isinstance(e, ItemUpsert | ItemRemove)])
    got_releases = {m.decode(): int(score) for m, score in await client.zrange(DEFAULT_KEYS.new_releases, 0, -1,
                                                                               withscores=True)}
    assert got_releases == releases.zsets[DEFAULT_KEYS.new_releases] and len(got_releases) > 200


async def _assert_sessions(client: aioredis.Redis, world: World) -> None:
    genres: dict[str, list[str]] = {}
    for event in world.catalog:  # the worker's live catalogue: each title's latest genres
        if isinstance(event, ItemUpsert):
            genres[event.item_id] = list(event.genres)
    effect = SessionEffect(item_genres=lambda item: genres.get(item, []))
    users = effect.users(world.events)
    want = effect.apply(world.events, [None] * len(users))
    assert await _keys(client, DEFAULT_KEYS.session("*")) == sorted(DEFAULT_KEYS.session(u) for u in want)
    raws = await _mget(client, [DEFAULT_KEYS.session(u) for u in want])
    for (user, blob), raw in zip(want.items(), raws, strict=True):
        assert decode_session(raw) == blob, user


def _user_signals(effect: user_vectors.UserVectorEffect, events: Sequence[Any]) -> dict[str, list[tuple[
        int, float, int]]]:
    """Each user's vector-moving events in log order: (item row, online weight, ts)."""
    rows, kinds, values, owners, ts = [], [], [], [], []
    for event in events:
        row = effect.item_index.get(getattr(event, "item_id", None))  # type: ignore[arg-type]
        code = KIND.get(str(type(event).__struct_config__.tag))
        if row is None or code is None:
            continue
        rows.append(row)
        kinds.append(code)
        values.append(event.value if isinstance(event, Rating) else 0.0)
        owners.append(event.user_id)
        ts.append(event.ts)
    weights = online_weights(np.array(kinds, np.int8), np.array(values, np.float32))
    out: dict[str, list[tuple[int, float, int]]] = {}
    for user, row, weight, t in zip(owners, rows, weights.tolist(), ts, strict=True):
        if weight != 0:
            out.setdefault(user, []).append((row, weight, t))
    return out


async def _assert_user_vectors(client: aioredis.Redis, world: World) -> None:
    effect = user_vectors.make_effect(_bundle_ctx(world))
    assert effect is not None and effect.initial is not None
    signals = _user_signals(effect, world.events)
    assert await _keys(client, DEFAULT_KEYS.user_vector("*")) == sorted(DEFAULT_KEYS.user_vector(u) for u in signals)
    raws = await _mget(client, [DEFAULT_KEYS.user_vector(u) for u in signals])
    for (user, events), raw in zip(signals.items(), raws, strict=True):
        got, version = unpack_user_vector(raw, space=effect.space, dim=effect.model.dim)
        assert got is not None and version == len(events), user
        want = effect.model.update(effect.initial(user), events)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=user)


async def _assert_item_learning(client: aioredis.Redis, world: World) -> None:
    effect = item_vectors.make_effect(_bundle_ctx(world))
    assert effect is not None
    dim = effect.learner.model.dim
    users = effect.engagements(world.events).users
    want = effect.sums(world.events, [None] * len(users))  # nothing stored: every user from the bundle
    assert len(want) >= 5 and sum(s.n for s in want.values()) >= 50  # cold titles did learn
    keys = [DEFAULT_KEYS.item_learning(effect.space, item) for item in want]
    replies = await asyncio.gather(*(client.hmget(key, state_fields(dim)) for key in keys))
    for (item, sums), raw in zip(want.items(), replies, strict=True):
        assert int(raw[0]) == sums.w and int(raw[1]) == sums.n, item
        got_s = [int(x) if x is not None else 0 for x in raw[2:2 + dim]]
        assert got_s == sums.s.tolist(), item
    learnt = [k for k in await _keys(client, DEFAULT_KEYS.item_learning_space(effect.space) + "*")
              if await client.hexists(k, "w")]
    assert learnt == sorted(DEFAULT_KEYS.item_learning(effect.space, item) for item in want)
    # The catalog hook's part: content vectors of content-projected titles, removals.
    catalog = _Recorder()
    publisher = item_vectors.ItemVectorPublisher.from_bundle(world.bundle, None, topic="unused")
    for event in world.catalog:
        if isinstance(event, ItemRemove):
            catalog_learning_writes(catalog, event.item_id, None, removed=True, space=effect.space)
        elif isinstance(event, ItemUpsert):
            vector, source = publisher.vector_for(event)
            if source == "content":
                catalog_learning_writes(catalog, event.item_id, vector, removed=False, space=effect.space)
    assert len(catalog.hashes) >= 10
    for key, fields in catalog.hashes.items():
        got_q0, got_gone = await client.hmget(key, ["q0", "gone"])
        assert (got_q0, got_gone) == (fields.get("q0"), fields.get("gone")), key


async def _assert_offsets(client: aioredis.Redis, settings: Settings) -> None:
    """Every partition of both topics applied to its end, and no offset key beyond them."""
    consumer = AIOKafkaConsumer(**connection_options(settings))
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_interactions, p) for p in range(PARTITIONS)]
        tps += [TopicPartition(settings.topic_catalog, p) for p in range(settings.catalog_partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    want = {DEFAULT_KEYS.offset(tp.topic, tp.partition): end - 1 for tp, end in ends.items() if end > 0}
    keys = await _keys(client, DEFAULT_KEYS.offset("*", "*"))
    assert keys == sorted(want)
    assert [int(v) for v in await _mget(client, keys)] == [want[k] for k in keys]


async def _assert_slot_markers(client: aioredis.Redis) -> None:
    """The per-slot protocol's markers (streams.slot_protocol): each slot's applied offset of a partition is at
    most the partition's checkpoint (its end, checked by _assert_offsets), and every stored field names a stage,
    a topic and a partition that has one."""
    markers = await _keys(client, DEFAULT_KEYS.applied_family + "*")
    offset_keys = await _keys(client, DEFAULT_KEYS.offset("*", "*"))
    checkpoints = {k: int(v) for k, v in zip(offset_keys, await _mget(client, offset_keys), strict=True)}
    assert markers, "no slot markers: the worker did not run the per-slot protocol"
    for key in markers:
        for field, value in (await client.hgetall(key)).items():
            stage, topic, partition = field.decode().split("|")
            assert stage in ("i", "u")
            assert int(value) <= checkpoints[DEFAULT_KEYS.offset(topic, partition)], (key, field)


async def _assert_dead_letters(settings: Settings, world: World) -> None:
    consumer = AIOKafkaConsumer(settings.topic_dead_letters, **connection_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    by_source: dict[tuple[bytes, bytes], set[bytes]] = {}
    try:
        deadline = time.monotonic() + 20
        while len(by_source) < len(world.malformed) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    headers = dict(r.headers)
                    by_source.setdefault((headers["x-source-partition"], headers["x-source-offset"]),
                                         set()).add(r.value)
    finally:
        await consumer.stop()
    # Each invalid record exactly once: one source offset per malformed line, holding that line (a
    # re-delivered batch may repeat a letter, but never under another source offset).
    assert len(by_source) == len(world.malformed)
    assert all(len(values) == 1 for values in by_source.values())
    assert sorted(v for values in by_source.values() for v in values) == sorted(world.malformed)


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
        proc = _spawn(env, tmp_path / "worker.log", world)
        try:
            await _wait_applied(redis_client, settings, int(share * total), 60, [proc])
            await asyncio.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    assert kills == 3
    assert await _applied(redis_client, settings) < total  # the last kill left work to do
    proc = _spawn(env, tmp_path / "worker.log", world)
    try:
        await _wait_applied(redis_client, settings, total, 60, [proc])
        await _wait_catalog_applied(redis_client, settings, 60, [proc], [tmp_path / "worker.log"])
    finally:
        _stop(proc)
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    await _assert_all_effects(redis_client, settings, world)


async def test_two_workers_one_killed_rebalance_exactly_once(
    stack: Settings, stack_env: dict[str, str], redis_client: aioredis.Redis, world: World, tmp_path: Path
) -> None:
    settings = _settings(stack, "pair")
    await _fill(world, settings, events=False)  # the catalogue first: workers read it at start-up
    env = {**_env(stack_env, settings), "STREAMREC_LOG_LEVEL": "INFO"}
    a, b = _spawn(env, tmp_path / "a.log", world), _spawn(env, tmp_path / "b.log", world)
    try:
        await _wait_split(tmp_path / "a.log", tmp_path / "b.log", settings)  # both own partitions
        ends = await _fill(world, settings, catalog=False)
        total = sum(ends.values())
        await _wait_applied(redis_client, settings, int(0.3 * total), 60, [a, b])
        a.send_signal(signal.SIGKILL)
        a.wait()
        await _wait_applied(redis_client, settings, total, 60, [b])  # b takes a's partitions over
        await _wait_catalog_applied(redis_client, settings, 60, [b], [tmp_path / "a.log", tmp_path / "b.log"])
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
    await _assert_all_effects(redis_client, settings, world)


def test_no_worker_left_running() -> None:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in out.splitlines() if "streamrec.commands.worker" in line and str(os.getpid()) not in line
            and "ps -eo" not in line]
    assert not [line for line in mine if " ".join(WORKER_ARGS) in line]


async def test_a_zombie_batch_is_fenced_by_watch(stack: Settings, redis_client: aioredis.Redis) -> None:
    """Two workers that both believe they own partition 0 handle the same batch at the same time (the
    zombie of a rebalance and the new owner): the WATCH on the offset key lets one EXEC through; the
    other is refused, re-reads the offset and skips, so the events count once."""
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
        effect = features.make_effect(EffectContext(settings=settings, redis=redis_client))
        worker = Worker(settings, WorkerOptions(), effects=[effect], catalog_effects=[])
        worker.redis = redis_client
        workers.append(worker)
    # Both batches must be under their WATCH before either commits (else the second simply finds the offset
    # stored and skips, which is right but tests nothing): each waits for the other once its WATCH is set.
    both_watching = asyncio.Barrier(2)
    for worker in workers:
        async def prepare(*args: Any, _prepare: Any = worker.intake.batch, **kw: Any) -> Any:
            await both_watching.wait()
            return await _prepare(*args, **kw)

        worker.intake.batch = prepare  # type: ignore[method-assign]
    fenced_before = metrics.FENCED.labels(settings.topic_interactions)._value.get()
    lasts = await asyncio.gather(*(worker.handle(tp, records) for worker in workers))
    assert lasts == [149, 149]
    assert int(await redis_client.hget("sr:i:i1", "play")) == 50
    assert int(await redis_client.get(DEFAULT_KEYS.offset(settings.topic_interactions, 0))) == 149
    assert metrics.FENCED.labels(settings.topic_interactions)._value.get() == fenced_before + 1
    assert sum(worker.processed for worker in workers) == 50
