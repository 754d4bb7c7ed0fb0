"""Experiments in the server: the document every replica follows, and the exposures it sends to Kafka.

:class:`ExperimentsRegistry` keeps this process's copy of the experiments document (``online_state.experiment_config``):
read at start (after storing ``STREAMREC_EXPERIMENTS_FILE`` when it is newer), then every ``experiments_refresh_s``,
so ``PUT /v1/experiments`` on any replica reaches all of them without a restart; while Redis cannot be read the last
document is kept.

:class:`ExposureLog` takes one exposure (an ``impression`` event with the answer's experiments) per answer of a user in
an experiment, and sends them to the ``interactions`` topic (keyed by user: the worker that counts the user's
outcomes gets the exposure in order with them) through the events' idempotent producer, in one batch every
``exposure_flush_ms``, off the request path. The buffer is bounded: when Kafka is slower than the answers, new
exposures are dropped and counted, never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from typing import Any

from prometheus_client import Counter, Gauge

from foundation.logs import get_logger
from foundation.settings import Settings
from models.experiments.assignment import Assignment, assign
from models.experiments.config import ConfigError, ExperimentsConfig, load_config
from online_state.experiment_config import read_config, store_if_newer
from online_state.keys import KeyLayout
from schemas.events import ExposureTag, Impression, encode
from serving.http_events import EventPublisher, ValidEvent

log = get_logger(__name__)

EXPOSURES = Counter("streamrec_exposures_total", "Exposures (answers in an experiment) by outcome: queued, sent, "
                    "dropped (buffer full or Kafka failed).", ("outcome",))
EXPOSURE_BUFFER = Gauge("streamrec_exposure_buffer", "Exposures waiting to be sent to Kafka.",
                        multiprocess_mode="liveall")
CONFIG_VERSION = Gauge("streamrec_experiments_config_version", "Version of the experiments document followed.",
                       multiprocess_mode="liveall")


class ExperimentsRegistry:
    """``redis`` None: a fixed document (``config``), never re-read and never stored (tests, a server without
    Redis); PUT then answers 503."""

    def __init__(self, settings: Settings, redis: Any | None, keys: KeyLayout,
                 config: ExperimentsConfig | None = None) -> None:
        self.settings, self.redis, self.keys = settings, redis, keys
        self.config = config or ExperimentsConfig()
        self._raw: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Store the operator's file when it is newer, read the shared document, refresh it in the background."""
        path = self.settings.experiments_file
        if self.redis is None:
            return
        if path is not None:
            try:
                config = load_config(path)
                written, stored = await store_if_newer(self.redis, self.keys, config)
                log.info("experiments.file", path=str(path), version=config.version, stored=written,
                         stored_version=stored)
                self.config = config  # until the first read (it may be newer still)
            except ConfigError as exc:  # a broken file must not stop serving; the stored document still runs
                log.error("experiments.file_invalid", path=str(path), field=exc.field, error=exc.message)
            except Exception as exc:
                log.warning("experiments.file_not_stored", path=str(path), error=repr(exc))
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="experiments-refresh")

    async def refresh(self) -> bool:
        if self.redis is None:
            return True
        try:
            async with asyncio.timeout(max(1.0, self.settings.experiments_refresh_s)):
                raw, config = await read_config(self.redis, self.keys)
        except Exception as exc:  # Redis away or a bad document: keep the last one (logged once per outage)
            if not self._failing:
                log.warning("experiments.refresh_failed", error=repr(exc)[:200], version=self.config.version)
            self._failing = True
            return False
        self._failing = False
        if raw is not None and config is not None and raw != self._raw:
            self._raw, self.config = raw, config
            CONFIG_VERSION.set(config.version)
            log.info("experiments.followed", version=config.version,
                     experiments=[e.name for e in config.experiments])
        return True

    async def put(self, config: ExperimentsConfig) -> tuple[bool, int]:
        """Store ``config`` if its version is newer than the stored one: (whether it was, the stored version)."""
        if self.redis is None:
            raise RuntimeError("this server has no store for the experiments document")
        written, stored = await store_if_newer(self.redis, self.keys, config)
        if written:
            await self.refresh()
        return written, stored

    def assign(self, user_id: str, now_ms: int) -> list[Assignment]:
        return assign(self.config, user_id, now_ms)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.experiments_refresh_s)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def exposure_event(user_id: str, request_id: str, now_ms: int, item_ids: list[str], tags: list[ExposureTag],
                   server_ms: float, degraded: bool, context: Any = None) -> ValidEvent:
    """The exposure of one answer as the event the worker reads (and its bytes, as published)."""
    event = Impression(event_id=f"exp-{uuid.uuid4().hex}", ts=now_ms, schema_version=1, user_id=user_id,
                       item_ids=item_ids, request_id=request_id, context=context, experiments=tags,
                       server_ms=round(min(server_ms, 3_600_000.0), 3), degraded=degraded)
    return ValidEvent(event, encode(event))


class ExposureLog:
    """A bounded buffer of exposures, sent to Kafka in batches by one background task."""

    def __init__(self, publisher: EventPublisher, capacity: int, flush_ms: int) -> None:
        self.publisher = publisher
        self.capacity = capacity
        self.flush_s = flush_ms / 1000
        self._buffer: deque[ValidEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0

    def offer(self, exposure: ValidEvent) -> bool:
        """Queue one exposure (no I/O); ``False`` when the buffer is full and it was dropped."""
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            EXPOSURES.labels("dropped").inc()
            return False
        self._buffer.append(exposure)
        EXPOSURES.labels("queued").inc()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="exposure-log")

    async def flush(self) -> None:
        """Send what is buffered now (one publish of at most ``capacity``); on failure keep it for the next try."""
        if not self._buffer:
            return
        batch = list(self._buffer)
        try:
            await self.publisher.publish(batch)
        except Exception as exc:
            # Kafka away: keep them (the buffer's bound still holds: offer() drops beyond it) and retry next tick.
            log.warning("exposures.publish_failed", error=str(exc)[:200], waiting=len(batch))
            return
        for _ in range(len(batch)):
            self._buffer.popleft()
        self.sent += len(batch)
        EXPOSURES.labels("sent").inc(len(batch))
        EXPOSURE_BUFFER.set(len(self._buffer))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.flush()  # what is left, before the producer closes
