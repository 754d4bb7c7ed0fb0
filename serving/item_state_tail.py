"""Keeps this process's copy of every title's feature state (:class:`~online_state.item_state.ItemStateTable`)
current: a snapshot of Redis, then the ``item-state`` topic, and a new snapshot every few minutes.

Start: the consumer is positioned at the topic's end offsets *before* the snapshot is read, so a record of a
commit that the snapshot missed is still read after it; records and snapshot rows carry the hash's version and
the table keeps the newer, so the overlap is harmless. Until the first snapshot is in, the table does not cover
any read and requests read Redis (:class:`~online_state.feature_reads.FeatureReader`). A lost connection to
Kafka starts over the same way (end offsets, then a snapshot). The periodic snapshot repairs rows whose record
was never sent (a worker killed between its ``EXEC`` and the send).

Staleness (``streamrec_serving_item_state_staleness_seconds``): the record's commit time to its application here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from foundation.kafka_io import start_groupless, stop_quietly
from foundation.logs import get_logger
from foundation.settings import Settings
from foundation.topics import ensure_topics
from online_state.item_state import ItemStateTable, decode_record, load_item_states
from online_state.keys import KeyLayout
from serving import metrics

log = get_logger(__name__)


class ItemStateTail:
    """The background task that feeds ``table`` (see the module docstring); ``kafka=False``: snapshots only."""

    def __init__(self, settings: Settings, table: ItemStateTable, redis: Any, keys: KeyLayout, *,
                 kafka: bool = True, resync_s: float = 300.0, fetch_timeout_ms: int = 100) -> None:
        self.settings = settings
        self.table = table
        self.redis = redis
        self.keys = keys
        self.kafka = kafka
        self.resync_s = resync_s
        self.fetch_timeout_ms = fetch_timeout_ms
        self.consumer: Any = None
        self.error: str | None = None
        self.lag = -1
        self._loaded_at = -float("inf")
        self.loaded = asyncio.Event()  # set once the first snapshot is in
        self.staleness_s: list[float] | None = None  # a list: every applied record's staleness goes in (benchmarks)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="serving-item-state")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        if self.consumer is not None:
            await stop_quietly(self.consumer)
            self.consumer = None

    async def load(self) -> int:
        """One snapshot of Redis into the table (also the whole feed when ``kafka`` is off)."""
        started = time.perf_counter()
        try:
            n = await load_item_states(self.redis, self.keys, self.table)
        except Exception:
            metrics.ITEM_STATE_LOADS.labels("failed").inc()
            raise
        self._loaded_at = time.monotonic()
        self.loaded.set()
        metrics.ITEM_STATE_LOADS.labels("ok").inc()
        self._gauges()
        log.info("serving.item_state_loaded", items=n, held=len(self.table),
                 seconds=round(time.perf_counter() - started, 3))
        return n

    def _gauges(self) -> None:
        metrics.ITEM_STATE_ITEMS.set(len(self.table))
        metrics.ITEM_STATE_BYTES.set(self.table.nbytes)

    async def _open(self) -> None:
        with contextlib.suppress(Exception):  # topics usually exist; creating them is the workers' job too
            await ensure_topics(self.settings, timeout_s=5.0)
        consumer, ends = await start_groupless(self.settings, self.settings.topic_item_state,
                                               auto_offset_reset="latest")
        self.consumer = consumer
        for tp, end in ends.items():
            consumer.seek(tp, end)

    async def _run(self) -> None:
        while True:
            try:
                if self.kafka and self.consumer is None:
                    await self._open()
                    await self.load()  # after the positions: see the module docstring
                elif time.monotonic() - self._loaded_at >= self.resync_s:
                    await self.load()
                if self.kafka:
                    await self._round()
                else:
                    await asyncio.sleep(min(self.resync_s, 1.0))
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or Redis away: keep serving the rows held, start over
                self.error = repr(exc)
                log.warning("serving.item_state_error", error=self.error)
                await self._drop_consumer()
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        fetched = await self.consumer.getmany(timeout_ms=self.fetch_timeout_ms)
        if not fetched:
            return
        now_ms = time.time() * 1000
        applied = stale = 0
        observe = metrics.ITEM_STATE_STALENESS.observe
        for records in fetched.values():
            for record in records:
                if record.key is None or record.value is None:
                    continue
                try:
                    value = decode_record(record.value)
                except Exception as exc:  # one bad record must not stop the feed
                    log.warning("serving.bad_item_state", key=record.key, error=repr(exc))
                    continue
                if self.table.apply(record.key.decode(), value):
                    applied += 1
                    staleness = max(now_ms - value.t, 0.0) / 1000
                    observe(staleness)
                    if self.staleness_s is not None:
                        self.staleness_s.append(staleness)
                else:
                    stale += 1
        metrics.ITEM_STATE_RECORDS.labels("applied").inc(applied)
        metrics.ITEM_STATE_RECORDS.labels("stale").inc(stale)
        self._gauges()
