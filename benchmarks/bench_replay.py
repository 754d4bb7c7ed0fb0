"""Replay throughput into the local broker, beside the raw aiokafka floor measured in the same run.

    streamrec stack up
    python benchmarks/bench_replay.py [--events 500000] [--repeats 3] [--log DIR]

- ``replay``: ``tools.replay.replay_log`` end to end: read the file, validate every line,
  key, batch, publish with the idempotent producer and wait for every acknowledgement.
- floor: the same (key, value) pairs, already in memory and already partitioned, appended to
  aiokafka batches and published by the same idempotent producer: no file, no validation.
Each repetition writes to a fresh 8-partition topic. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka.admin import NewTopic

from foundation.kafka_io import KeyedBatchSender, make_admin, make_producer
from foundation.logs import configure_logging
from foundation.settings import Settings, get_settings
from tools.datasets.world import generate_world
from tools.replay import ReplayOptions, replay_log


async def _fresh_topic(settings: Settings, partitions: int = 8) -> str:
    name = f"bench-replay-{uuid.uuid4().hex[:8]}"
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def _drop_topics(settings: Settings, names: list[str]) -> None:
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def _replay_once(settings: Settings, log: Path, events: int) -> float:
    topic = await _fresh_topic(settings)
    scoped = settings.model_copy(update={"topic_interactions": topic, "topic_catalog": topic})
    report = await replay_log(log, scoped, ReplayOptions(limit=events))
    await _drop_topics(settings, [topic])
    return report.published / report.seconds


async def _floor_once(settings: Settings, pairs: list[tuple[bytes, bytes]]) -> float:
    topic = await _fresh_topic(settings)
    producer = make_producer(settings, enable_idempotence=True, linger_ms=20)
    await producer.start()
    sender = KeyedBatchSender(producer)
    start = time.perf_counter()
    for key, value in pairs:
        await sender.add(topic, key, value)
    await sender.flush()
    seconds = time.perf_counter() - start
    await producer.stop()
    await _drop_topics(settings, [topic])
    return len(pairs) / seconds


def _load_pairs(log: Path, events: int) -> list[tuple[bytes, bytes]]:
    pairs = []
    with log.open("rb") as fh:
        for line in fh:
            doc = orjson.loads(line)
            if isinstance(doc, dict) and "user_id" in doc:
                pairs.append((str(doc["user_id"]).encode(), line.rstrip(b"\n")))
            if len(pairs) >= events:
                break
    return pairs


async def main_async(args: argparse.Namespace) -> dict:
    settings = get_settings()
    if args.log is None:
        folder = Path(tempfile.mkdtemp(prefix="bench-replay-"))
        generate_world(folder, users=max(500, args.events // 200), items=10_000, events=args.events, seed=11)
        log = folder / "events.jsonl"
    else:
        log = args.log / "events.jsonl" if args.log.is_dir() else args.log
    pairs = _load_pairs(log, args.events)
    replay_rates, floor_rates = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits both alike
        replay_rates.append(await _replay_once(settings, log, len(pairs)))
        floor_rates.append(await _floor_once(settings, pairs))
    replay = statistics.median(replay_rates)
    floor = statistics.median(floor_rates)
    return {"benchmark": "replay", "events": len(pairs), "repeats": args.repeats,
            "replay_events_per_s": replay, "floor_events_per_s": floor, "ratio_to_floor": replay / floor,
            "replay_runs": replay_rates, "floor_runs": floor_rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log", type=Path, default=None, help="events.jsonl or a folder (default: generated)")
    configure_logging("WARNING")
    result = asyncio.run(main_async(parser.parse_args()))
    print(f"{result['events']:,} events, median of {result['repeats']} runs")
    print(f"replay (read + validate + publish): {result['replay_events_per_s']:12,.0f} events/s")
    print(f"floor (raw aiokafka batches)      : {result['floor_events_per_s']:12,.0f} events/s")
    print(f"replay / floor                    : {result['ratio_to_floor']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
