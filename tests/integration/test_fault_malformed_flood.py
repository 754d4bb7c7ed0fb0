"""Fault suite: a flood of malformed records, at the probe's scale (issue 11).

Kills: nothing; floods a real worker (real broker, real redis-server) with 1,000 raw records on the interactions
topic, 100 of them malformed in ten ways (broken JSON, 975 levels of nesting, a float time, a NUL in an id, a
400-digit position, an id past 128 characters, a missing field, an unknown type, a catalogue event on the wrong
topic, bytes that are not UTF-8), shuffled among 900 valid plays.
Compares: the dead letters with the 100 malformed records (original bytes, each exactly once, with its source
partition and offset), the 900 valid plays with the play counters in Redis (each applied exactly once), and the
stored offsets with the 1,000 records (every record accounted for).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from test_worker_dead_letters import T0, _play, _upsert, _wait_for, per_test_settings, running_worker

from foundation.kafka_io import connection_options, make_producer
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.keys import DEFAULT_KEYS

USERS = 30
ITEMS = 10
VALID = 900


def _malformed(n: int) -> bytes:
    """The ``n``-th malformed record: one of ten kinds, each made unique by ``n``."""
    base = {"type": "play", "event_id": f"bad-{n}", "ts": T0 + n, "schema_version": 1, "user_id": f"u{n % USERS}",
            "item_id": "i0"}
    kind = n % 10
    if kind == 0:
        return b'{"type": "play", "event_id": "bad-%d", ' % n  # cut short
    if kind == 1:
        return b"[" * 975 + str(n).encode() + b"]" * 975
    if kind == 2:
        return orjson.dumps({**base, "ts": T0 + n + 0.5})
    if kind == 3:
        return orjson.dumps({**base, "user_id": f"u\x00{n}"})
    if kind == 4:
        return _click_with_huge_position(n)
    if kind == 5:
        return orjson.dumps({**base, "item_id": "i" * 129 + str(n)})
    if kind == 6:
        return orjson.dumps({k: v for k, v in base.items() if k != "item_id"})
    if kind == 7:
        return orjson.dumps({**base, "type": "teleport"})
    if kind == 8:
        return _upsert(f"wrong-topic-{n}", T0 + n)
    return b"\xff\xfe" + str(n).encode() + b"\x80"


def _click_with_huge_position(n: int) -> bytes:
    # orjson refuses integers past 64 bits: write the 400-digit literal by hand.
    body = orjson.dumps({"type": "click", "event_id": f"bad-{n}", "ts": T0 + n, "schema_version": 1,
                         "user_id": f"u{n % USERS}", "item_id": "i0", "position": 0})
    return body.replace(b'"position":0', b'"position":' + b"9" * 400)


async def test_a_flood_of_malformed_records_dead_letters_exactly_them(
    stack: Settings, redis_client: aioredis.Redis
) -> None:
    settings = per_test_settings(stack, "flood")
    await ensure_topics_retrying(settings)
    rng = random.Random(11)
    malformed = [_malformed(n) for n in range(100)]
    valid = [(f"u{n % USERS}", _play(f"u{n % USERS}", f"i{n % ITEMS}", T0 + 10_000 + n)) for n in range(VALID)]
    records: list[tuple[bytes, bytes, bool]] = [(k.encode(), v, True) for k, v in valid]
    records += [(f"u{n % USERS}".encode(), raw, False) for n, raw in enumerate(malformed)]
    # Shuffled, yet each user's valid plays stay in their order (the log's per-key order).
    rng.shuffle(records)

    producer = make_producer(settings)
    await producer.start()
    try:
        for item in range(ITEMS):
            await producer.send(settings.topic_catalog, _upsert(f"i{item}", T0), key=f"i{item}".encode())
        sent = [await producer.send(settings.topic_interactions, value, key=key) for key, value, _ in records]
        await producer.flush()
        metas = [await fut for fut in sent]
    finally:
        await producer.stop()
    where_bad = Counter((m.partition, m.offset) for m, (_, _, ok) in zip(metas, records, strict=True) if not ok)
    assert len(where_bad) == 100

    async with running_worker(settings) as worker:
        async def all_seen() -> bool:
            return worker.rejected >= 100 and worker.processed >= VALID

        await _wait_for(all_seen, 90)
        assert not worker.stopping.is_set()  # it survived the flood
        assert (worker.rejected, worker.processed) == (100, VALID)

    # The valid plays, each applied once: every item's play counter equals the plays sent to it.
    plays = [int(await redis_client.hget(DEFAULT_KEYS.item_state(f"i{i}"), "play") or 0) for i in range(ITEMS)]
    assert plays == [VALID // ITEMS] * ITEMS
    # Every record accounted for by the stored offsets.
    parts = settings.interactions_partitions
    stored = [await redis_client.get(DEFAULT_KEYS.offset(settings.topic_interactions, p)) for p in range(parts)]
    assert sum(int(v) + 1 for v in stored if v is not None) == len(records)

    consumer = AIOKafkaConsumer(settings.topic_dead_letters, **connection_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    letters = []
    try:
        while len(letters) < 100:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 20)
            for got in batch.values():
                letters.extend(got)
        extra = await consumer.getmany(timeout_ms=1000)  # and nothing after them
        letters.extend(r for got in extra.values() for r in got)
    finally:
        await consumer.stop()
    assert Counter(letter.value for letter in letters) == Counter(malformed)  # exactly them, bytes kept, once each
    sources = Counter((int(dict(letter.headers)["x-source-partition"]), int(dict(letter.headers)["x-source-offset"]))
                      for letter in letters)
    assert sources == where_bad
