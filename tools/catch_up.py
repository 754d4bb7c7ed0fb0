"""Waiting for the stream workers: where the input topics end, and when Redis has applied up to there.

The worker stores the last applied offset of each partition in Redis in the same transaction as its
effects (:meth:`online_state.keys.KeyLayout.offset`), so "applied" is exact: every record below the end
offsets has its effects visible.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import TopicPartition

from foundation.kafka_io import make_consumer
from foundation.redis_io import mget_any
from foundation.settings import Settings
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.offsets import parse_stored


async def end_offsets(settings: Settings, topics: Sequence[str] | None = None) -> dict[tuple[str, int], int]:
    """End offset of every partition of ``topics`` (default: the workers' inputs, interactions and catalog)."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tps = []
        for topic in topics if topics is not None else (settings.topic_interactions, settings.topic_catalog):
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()  # a topic created moments ago
                partitions = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def wait_applied(redis: Any, ends: dict[tuple[str, int], int], timeout_s: float,
                       worker: subprocess.Popen[bytes] | None = None, keys: KeyLayout = DEFAULT_KEYS,
                       progress: Callable[[int, int], None] | None = None) -> float:
    """Wait until the worker's offsets in Redis cover every record below ``ends``; returns the wait.

    ``progress(applied, total)`` is called on every poll (records counted from offset 0).
    """
    pending = [(tp, end) for tp, end in ends.items() if end > 0]
    names = [keys.offset(topic, partition) for (topic, partition), _ in pending]
    started = time.perf_counter()
    while True:
        stored = await mget_any(redis, names) if names else []  # offsets span slots on a cluster
        if progress is not None:
            progress(sum(min(parse_stored(raw) + 1, end) for raw, (_, end) in zip(stored, pending, strict=True)),
                     sum(end for _, end in pending))
        if all(parse_stored(raw) >= end - 1 for raw, (_, end) in zip(stored, pending, strict=True)):
            return time.perf_counter() - started
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker exited with status {worker.returncode}")
        if time.perf_counter() - started > timeout_s:
            behind = {f"{t}:{p}": end - 1 - parse_stored(raw)
                      for raw, ((t, p), end) in zip(stored, pending, strict=True) if parse_stored(raw) < end - 1}
            raise TimeoutError(f"the worker did not apply the produced records within {timeout_s:.0f} s: {behind}")
        await asyncio.sleep(0.02 if progress is None else 0.25)
