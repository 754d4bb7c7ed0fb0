"""`replay` against the real broker: keys, per-user order, byte-exact values, rejects, resume."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from foundation.kafka_io import connection_options
from foundation.settings import Settings
from tools.replay import Pace, ReplayOptions, replay_log

T0 = 1_767_225_600_000


def _write_log(folder: Path, n_users: int = 25, n_events: int = 1500, seed: int = 3) -> dict[str, list[bytes]]:
    """A small log folder with interleaved users, mid-log catalog events and some invalid lines."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    catalog = []
    for i in range(40):
        ts = T0 if i < 30 else T0 + 1000 * rng.randint(1, n_events)  # ten titles released mid-log
        catalog.append({"type": "item_upsert", "event_id": f"c{i}", "ts": ts, "schema_version": 1,
                        "item_id": f"i{i}", "title": f"Title {i}", "genres": ["Drama"], "release_ts": ts})
    catalog.sort(key=lambda d: d["ts"])
    events, invalid = [], []
    for n in range(n_events):
        user = f"u{rng.randrange(n_users)}"
        kind = rng.choice(["play", "rating", "skip", "click"])
        body = {"type": kind, "event_id": f"e{n}", "ts": T0 + 1000 * n, "schema_version": 1,
                "user_id": user, "item_id": f"i{rng.randrange(30)}"}
        if kind == "rating":
            body["value"] = rng.choice([1.0, 3.5, 5.0])
        events.append(orjson.dumps(body))
        if n % 100 == 50:
            invalid.append(b'{"type": "play", "event_id": "bad-%d", "ts": "soon"}' % n)
            events.append(invalid[-1])
    (folder / "catalog.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in catalog))
    (folder / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in events))
    valid_events = [line for line in events if line not in invalid]
    return {"catalog": [orjson.dumps(d) for d in catalog], "events": valid_events, "invalid": invalid}


@pytest.fixture
async def fresh_topics(stack: Settings) -> Settings:
    """Per-test topics, so the assertions see only this test's records."""
    suffix = uuid.uuid4().hex[:8]
    settings = stack.model_copy(update={"topic_interactions": f"interactions-{suffix}",
                                        "topic_catalog": f"catalog-{suffix}"})
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(settings.topic_interactions, num_partitions=8, replication_factor=1),
            NewTopic(settings.topic_catalog, num_partitions=4, replication_factor=1,
                     topic_configs={"cleanup.policy": "compact"}),
        ])
    finally:
        await admin.close()
    return settings


async def _consume_all(settings: Settings, topic: str, expected: int) -> list:
    consumer = AIOKafkaConsumer(topic, **connection_options(settings), group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records = []
    try:
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for part_records in batch.values():
                records.extend(part_records)
            if len(records) >= expected:
                break
    finally:
        await consumer.stop()
    return records


async def test_replay_publishes_every_valid_line_keyed_and_in_user_order(fresh_topics: Settings, tmp_path: Path):
    settings = fresh_topics
    log = _write_log(tmp_path / "log")
    report = await replay_log(tmp_path / "log", settings)

    assert report.published == len(log["events"]) + len(log["catalog"])
    assert report.rejected == len(log["invalid"]) > 0
    assert report.per_topic == {settings.topic_catalog: len(log["catalog"]),
                                settings.topic_interactions: len(log["events"])}

    records = await _consume_all(settings, settings.topic_interactions, len(log["events"]))
    assert len(records) == len(log["events"])
    # Byte-exact: consumers see exactly what was recorded.
    assert sorted(r.value for r in records) == sorted(log["events"])
    # Keyed by user id, so each user lives in one partition, in recorded order.
    by_user: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for r in records:
        body = orjson.loads(r.value)
        assert r.key.decode() == body["user_id"]
        by_user[body["user_id"]].append((r.partition, r.offset, body["ts"]))
    assert len(by_user) > 10
    for rows in by_user.values():
        assert len({partition for partition, _, _ in rows}) == 1
        rows.sort()
        timestamps = [ts for _, _, ts in rows]
        assert timestamps == sorted(timestamps)
    partitions = {r.partition for r in records}
    assert len(partitions) > 1, "keys should spread users over the partitions"

    catalog = await _consume_all(settings, settings.topic_catalog, len(log["catalog"]))
    assert sorted(r.value for r in catalog) == sorted(log["catalog"])
    assert all(r.key.decode() == orjson.loads(r.value)["item_id"] for r in catalog)

    rejects = [orjson.loads(line) for line in Path(report.rejects_path).read_bytes().splitlines()]
    assert [r["field"] for r in rejects] == ["$.ts"] * len(log["invalid"])
    assert all(r["file"] == "events.jsonl" and r["line"] > 0 and "Expected `int`" in r["reason"] for r in rejects)
    assert [r["raw"].encode() for r in rejects] == log["invalid"]


async def test_replay_resumes_with_skip_without_duplicates(fresh_topics: Settings, tmp_path: Path):
    settings = fresh_topics
    log = _write_log(tmp_path / "log", n_events=400)
    events_file = tmp_path / "log" / "events.jsonl"
    first = await replay_log(events_file, settings, ReplayOptions(limit=150))
    assert first.published == 150
    second = await replay_log(events_file, settings, ReplayOptions(skip=first.resume_skip))
    assert second.skipped == 150
    assert first.published + second.published == len(log["events"])
    records = await _consume_all(settings, settings.topic_interactions, len(log["events"]))
    assert sorted(r.value for r in records) == sorted(log["events"])  # each once, none lost


async def test_replay_rate_is_honoured(fresh_topics: Settings, tmp_path: Path):
    _write_log(tmp_path / "log", n_events=300)
    options = ReplayOptions(limit=200, pace=Pace(rate=400.0))
    report = await replay_log(tmp_path / "log" / "events.jsonl", fresh_topics, options)
    assert report.published == 200
    # 200 events at 400/s take at least ~0.5 s; --max would take a few milliseconds.
    assert report.seconds >= 0.45
    unpaced = await replay_log(tmp_path / "log" / "events.jsonl", fresh_topics, replace(options, pace=Pace()))
    assert unpaced.seconds < report.seconds
