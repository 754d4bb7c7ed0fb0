"""The one-command demo: stack up, make an event log, replay it into Kafka, show what landed.

Later stages of the product (training, workers, the server) extend this same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition

from streamrec.kafka_io import make_consumer
from streamrec.settings import Settings


@dataclass
class TopicLanding:
    topic: str
    partitions: int
    before: int
    after: int
    sample: dict[str, Any] | None = None

    @property
    def landed(self) -> int:
        return self.after - self.before


@dataclass
class DemoReport:
    data_dir: str
    replay: dict[str, Any]
    topics: list[TopicLanding] = field(default_factory=list)


async def topic_end_offsets(settings: Settings, topics: list[str]) -> dict[str, tuple[int, int]]:
    """Per topic: (partition count, sum of end offsets) — what the broker holds right now."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        result = {}
        for topic in topics:
            partitions = sorted(consumer.partitions_for_topic(topic) or await _fetch_partitions(consumer, topic))
            tps = [TopicPartition(topic, p) for p in partitions]
            ends = await consumer.end_offsets(tps) if tps else {}
            result[topic] = (len(tps), sum(ends.values()))
        return result
    finally:
        await consumer.stop()


async def _fetch_partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # a topic created moments ago is not cached yet
    return consumer.partitions_for_topic(topic) or set()


async def last_record(settings: Settings, topic: str) -> dict[str, Any] | None:
    """The newest record of the busiest partition, decoded, to show a real payload."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or await _fetch_partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return None
        ends = await consumer.end_offsets(tps)
        tp, end = max(ends.items(), key=lambda kv: kv[1])
        if end == 0:
            return None
        consumer.assign([tp])
        consumer.seek(tp, end - 1)
        batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        for records in batch.values():
            for record in records:
                return {"partition": record.partition, "offset": record.offset,
                        "key": record.key.decode() if record.key else None, "value": orjson.loads(record.value)}
        return None
    finally:
        await consumer.stop()


def prepare_data(out: Path, movielens: Path | None, users: int, items: int, events: int, seed: int,
                 progress: Any) -> dict[str, Any]:
    """Generate a world (or import MovieLens) into ``out`` unless an identical one is already there."""
    import dataclasses

    marker = out / ".demo-source.json"
    source = {"movielens": str(movielens) if movielens else None, "users": users, "items": items,
              "events": events, "seed": seed}
    if marker.exists() and orjson.loads(marker.read_bytes()) == source and (out / "events.jsonl").exists():
        return {"reused": str(out)}
    if movielens is not None:
        from streamrec.datasets.movielens import import_movielens

        summary: Any = import_movielens(movielens, out, progress=progress)
    else:
        from streamrec.datasets.world import generate_world

        summary = generate_world(out, users=users, items=items, events=events, seed=seed, progress=progress)
    marker.write_bytes(orjson.dumps(source))
    return dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else {"summary": str(summary)}
