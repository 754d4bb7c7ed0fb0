"""Tail the compacted ``catalog`` and ``item-vectors`` topics into the serving model.

Two group-less consumers read every partition from the beginning (both topics are compacted: the
beginning is the last value per item). Each ``getmany`` round is decoded and handed to ``apply``
(the service applies it to the current :class:`~serving.model_state.ServingModel` on the event
loop: hnswlib inserts of a handful of vectors take microseconds). The latest record per item is
also kept here, with a sequence number, so a hot reload can replay the live state onto a freshly
loaded model and then apply whatever arrived while it was being built.

Readiness: the end offsets are read once at start; the tail is *caught up* once both consumers
have reached them. ``lag`` afterwards is the highwater minus the position, summed over partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from foundation.dead_letters import decode_records
from foundation.kafka_io import start_groupless, stop_quietly
from foundation.logs import get_logger
from foundation.settings import Settings
from foundation.topics import ensure_topics
from models.item_vector_codec import ItemVector, decode_item_vector
from schemas.decoder import catalog_decoder
from schemas.events import ItemRemove, ItemUpsert
from serving import metrics

log = get_logger(__name__)

CatalogEvents = Sequence[ItemUpsert | ItemRemove]
VectorRecords = Sequence[tuple[str, ItemVector | None]]
Apply = Callable[[CatalogEvents, VectorRecords], None]


@dataclass
class LiveState:
    """The newest catalog event and item-vectors record per item, each with the sequence it arrived at."""

    seq: int = 0
    catalog: dict[str, tuple[int, ItemUpsert | ItemRemove]] | None = None
    vectors: dict[str, tuple[int, ItemVector | None]] | None = None

    def __post_init__(self) -> None:
        self.catalog = {} if self.catalog is None else self.catalog
        self.vectors = {} if self.vectors is None else self.vectors

    def record(self, events: CatalogEvents, vectors: VectorRecords) -> None:
        assert self.catalog is not None and self.vectors is not None
        self.seq += 1
        for event in events:
            self.catalog[event.item_id] = (self.seq, event)
        for item_id, vector in vectors:
            self.vectors[item_id] = (self.seq, vector)

    def since(self, seq: int) -> tuple[list[ItemUpsert | ItemRemove], list[tuple[str, ItemVector | None]]]:
        """What arrived after ``seq`` (0: everything), in arrival order."""
        assert self.catalog is not None and self.vectors is not None
        cat = sorted(((s, e) for s, e in self.catalog.values() if s > seq), key=lambda p: p[0])
        vec = sorted(((s, i, v) for i, (s, v) in self.vectors.items() if s > seq), key=lambda p: p[0])
        return [e for _, e in cat], [(i, v) for _, i, v in vec]


class LiveTail:
    """Consumes both topics and calls ``apply(catalog_events, vector_records)`` per round."""

    def __init__(self, settings: Settings, apply: Apply, *, fetch_timeout_ms: int = 200) -> None:
        self.settings = settings
        self.apply = apply
        self.fetch_timeout_ms = fetch_timeout_ms
        self.state = LiveState()
        self.caught_up = False
        self.lag = -1  # unknown until started
        self.error: str | None = None
        self._consumers: dict[str, Any] = {}
        self._targets: dict[Any, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="serving-live-tail")

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for consumer in self._consumers.values():
            await stop_quietly(consumer)
        self._consumers.clear()

    async def _open(self) -> None:
        with contextlib.suppress(Exception):  # topics usually exist; creating them is the workers' job too
            await ensure_topics(self.settings, timeout_s=5.0)
        s = self.settings
        for topic in (s.topic_catalog, s.topic_item_vectors):
            # From the beginning: both topics are compacted, the beginning is the last value per item.
            consumer, ends = await start_groupless(s, topic, auto_offset_reset="earliest")
            self._consumers[topic] = consumer
            self._targets.update(ends)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._consumers:
                    await self._open()
                await self._round()
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away: keep serving what is indexed, retry
                self.error = repr(exc)
                log.warning("serving.tail_error", error=self.error)
                for consumer in self._consumers.values():
                    await stop_quietly(consumer)
                self._consumers.clear()
                self._targets.clear()
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        s = self.settings
        catalog_consumer = self._consumers[s.topic_catalog]
        vector_consumer = self._consumers[s.topic_item_vectors]
        # Catalog first, briefly, so a new title's metadata tends to land with or before its vector.
        fetched_catalog = await catalog_consumer.getmany(timeout_ms=0)
        fetched_vectors = await vector_consumer.getmany(timeout_ms=self.fetch_timeout_ms)
        events: list[ItemUpsert | ItemRemove] = []
        for records in fetched_catalog.values():
            events.extend(decode_records(records, catalog_decoder).events)
        vectors: list[tuple[str, ItemVector | None]] = []
        for records in fetched_vectors.values():
            for record in records:
                if record.key is None:
                    continue
                try:
                    vectors.append((record.key.decode(), decode_item_vector(record.key, record.value)))
                except ValueError as exc:
                    log.warning("serving.bad_item_vector", key=record.key, error=str(exc))
        if events or vectors:
            self.state.record(events, vectors)
            self.apply(events, vectors)
        await self._update_lag()

    async def _update_lag(self) -> None:
        lag = 0
        behind = False
        for consumer in self._consumers.values():
            for tp in consumer.assignment():
                position = await consumer.position(tp)
                target = self._targets.get(tp, 0)
                if position < target:
                    behind = True
                high = consumer.highwater(tp)
                lag += max(0, (high if high is not None else target) - position)
        self.lag = lag
        metrics.INDEX_LAG.set(lag)
        if not behind:
            self.caught_up = True
