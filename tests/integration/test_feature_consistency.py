"""Online features equal offline features: the key guarantee of the feature definition.

A generated world's events are decoded from ``events.jsonl`` as a worker decodes Kafka records,
applied in batches through :class:`RedisFeatureStore` into the real redis-server of the test stack,
and the rows the server would build for (user, candidates, now) are compared, bit for bit, with the
rows the offline builder replays from the same log for the same (user, candidates, time).
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from models.dataset import EventLog, load_log
from models.features import ItemStatic, Request, RequestContext, build_rows, spec
from models.features.state import log_country_codes
from online_state import RedisFeatureStore
from schemas.decoder import interaction_decoder
from schemas.events import InteractionEvent
from tools.datasets.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("feature-world")
    generate_world(out, users=60, items=400, events=4000, seed=23)
    return out


@pytest.fixture(scope="module")
def log(world: Path) -> EventLog:
    loaded = load_log(world)
    assert loaded.rejected == 0
    return loaded


@pytest.fixture(scope="module")
def static(log: EventLog) -> ItemStatic:
    return ItemStatic.from_catalog(log.catalog)


@pytest.fixture(scope="module")
def events(world: Path) -> list[InteractionEvent]:
    """The interaction events as a worker gets them: decoded from the JSON lines, in log order."""
    return [interaction_decoder.decode(line) for line in (world / "events.jsonl").read_bytes().splitlines()]


def _requests(log: EventLog, static: ItemStatic, now: int, seed: int) -> list[Request]:
    """Every user with history before ``now`` (and one without), 80 random candidates plus the items
    they interacted with; contexts known, partly known and unknown."""
    rng = np.random.default_rng(seed)
    country = log_country_codes(log)
    active = np.unique(log.user[(log.ts < now) & (log.item >= 0)])
    idle = np.setdiff1d(np.arange(log.n_users), active)[:1]
    out = []
    for k, u in enumerate(np.concatenate([active, idle]).tolist()):
        touched = np.unique(log.item[(log.user == u) & (log.item >= 0) & (log.ts < now)])
        candidates = np.unique(np.concatenate([rng.choice(static.n_items, 80, replace=False), touched[:40]]))
        row = int(rng.integers(0, log.n_events))
        context = (RequestContext(int(log.device[row]), int(country[row]), int(log.hour[row])), RequestContext(),
                   RequestContext(hour=int(rng.integers(0, 24))))[k % 3]
        out.append(Request(int(u), now, candidates.astype(np.int64), context))
    return out


async def _assert_online_equals_offline(
    store: RedisFeatureStore, log: EventLog, static: ItemStatic, now: int, seed: int
) -> int:
    requests = _requests(log, static, now, seed)
    offline, index = build_rows(log, requests, static)
    seen = 0
    for k, request in enumerate(requests):
        item_ids = [static.item_ids[i] for i in request.candidates.tolist()]
        online = await store.features(log.user_ids[request.user], item_ids, now, request.context)
        expected = offline.take(np.flatnonzero(index == k))
        np.testing.assert_array_equal(online.dense, expected.dense, err_msg=f"dense, request {k}")
        np.testing.assert_array_equal(online.wide, expected.wide, err_msg=f"wide, request {k}")
        np.testing.assert_array_equal(online.cats, expected.cats, err_msg=f"cats, request {k}")
        seen += int(online.dense[:, spec.DENSE_NAMES.index("ui_seen_recent")].sum())
    # The comparison covered real state, not just empty defaults.
    assert seen > 0
    assert (offline.dense[:, spec.DENSE_NAMES.index("i_log_pop_1d")] > 0).mean() > 0.2
    assert (offline.dense[:, spec.DENSE_NAMES.index("ui_genre_affinity")] != 0).mean() > 0.3
    return len(offline)


def _batches(events: Sequence[InteractionEvent], sizes: np.ndarray) -> list[Sequence[InteractionEvent]]:
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [events[a:b] for a, b in itertools.pairwise(bounds.tolist()) if a < len(events)]


@pytest.mark.parametrize("cut_share", [0.35, 0.8])
async def test_online_rows_from_redis_equal_offline_rows(
    redis_client: aioredis.Redis, log: EventLog, static: ItemStatic, events: list[InteractionEvent],
    cut_share: float,
) -> None:
    now = int(log.ts[int(cut_share * log.n_events)])
    prefix = [e for e in events if e.ts < now]
    store = RedisFeatureStore(redis_client, static)
    sizes = np.random.default_rng(1).integers(1, 400, len(prefix))  # batch sizes from 1 to 399 events
    for batch in _batches(prefix, sizes):
        await store.apply_events(batch)
    rows = await _assert_online_equals_offline(store, log, static, now, seed=2)
    assert rows > 3000


async def test_concurrent_workers_of_different_partitions_give_the_same_rows(
    redis_client: aioredis.Redis, log: EventLog, static: ItemStatic, events: list[InteractionEvent],
) -> None:
    """Four workers, one per partition of users (crc32 of the id, like a keyed topic), apply their
    batches concurrently into the same item keys; the item sums commute, so rows still match."""
    now = int(log.ts[int(0.9 * log.n_events)])
    partitions: list[list[InteractionEvent]] = [[] for _ in range(4)]
    for event in events:
        if event.ts < now:
            partitions[zlib.crc32(event.user_id.encode()) % 4].append(event)
    rng = np.random.default_rng(3)

    async def worker(p: int) -> None:
        store = RedisFeatureStore(redis_client, static)
        for batch in _batches(partitions[p], rng.integers(50, 300, len(partitions[p]))):
            await store.apply_events(batch)
            await asyncio.sleep(0)  # let the other workers interleave

    await asyncio.gather(*(worker(p) for p in range(4)))
    await _assert_online_equals_offline(RedisFeatureStore(redis_client, static), log, static, now, seed=4)


async def test_a_batch_is_one_read_and_one_transaction(
    redis_client: aioredis.Redis, log: EventLog, static: ItemStatic, events: list[InteractionEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round trips counted on the client (every pipeline execution writes its commands to the socket
    with one ``send_packed_command`` and then reads all replies) and commands on the server
    (``INFO commandstats`` deltas)."""
    sends: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sends.append(1)
        await original(self, command, check_health)

    store = RedisFeatureStore(redis_client, static)
    await store.apply_events(events[:500])
    await redis_client.config_resetstat()
    batch = events[500:1500]
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    stats = await store.apply_events(batch)
    assert len(sends) == stats.round_trips == 2
    monkeypatch.undo()
    calls = {name.removeprefix("cmdstat_"): value["calls"]
             for name, value in (await redis_client.info("commandstats")).items()}
    assert calls["multi"] == 1 and calls["exec"] == 1
    assert calls["get"] == calls["set"] == stats.users_written > 0
    assert calls["hincrby"] + calls.get("hdel", 0) + calls["set"] == stats.commands

    # A ranking read: the user and 1,000 candidates in one round trip.
    sends.clear()
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    candidates = static.item_ids[:400] * 3  # duplicates are fine: 1,200 keys read
    snapshot = await store.read(batch[-1].user_id, candidates, batch[-1].ts + 1)
    assert len(sends) == 1
    assert len(snapshot.items.counts) == len(candidates)


async def test_memory_per_user_and_item(
    redis_client: aioredis.Redis, static: ItemStatic, events: list[InteractionEvent],
) -> None:
    """The sizes promised in online_state.redis_store's docstring."""
    store = RedisFeatureStore(redis_client, static)
    for batch in _batches(events, np.full(len(events), 500)):
        await store.apply_events(batch)
    users = [key async for key in redis_client.scan_iter(match="sr:u:*", count=1000)]
    items = [key async for key in redis_client.scan_iter(match="sr:i:*", count=1000)]
    user_bytes = [await redis_client.memory_usage(k, samples=0) for k in users]
    item_bytes = [await redis_client.memory_usage(k, samples=0) for k in items]
    assert len(users) > 40 and len(items) > 300
    assert max(user_bytes) < 1100 and np.mean(user_bytes) < 700
    assert max(item_bytes) < 300 and np.mean(item_bytes) < 200
    assert {await redis_client.object("encoding", k) for k in items} == {b"listpack"}
    assert min([await redis_client.ttl(k) for k in users]) > 365 * 86_400
    assert {await redis_client.ttl(k) for k in items} == {-1}
