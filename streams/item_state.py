"""Publishes every item hash a batch changed to the compacted ``item-state`` topic, after the batch committed.

The servers hold every title's feature state in memory (:mod:`online_state.item_state`) and tail this topic to
keep it current. The feature effect's transaction reads each changed hash back with its version, inside the same
atomic call as the increments (``streamrec_hincr_rows``), so a record is exactly the hash as that commit left
it; records go out after the ``EXEC``, off the batch's path: a worker never waits for them, and a later record of
the same item replaces an unsent one (pending is bounded by the catalogue).

A worker that dies between its ``EXEC`` and the send loses those records; the servers' periodic snapshot of
Redis repairs the rows (and any later write of the item publishes it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from foundation.kafka_io import KeyedBatchSender
from foundation.logs import get_logger
from online_state.item_state import ItemStateRecord, encode_record, record_of
from streams import metrics

log = get_logger(__name__)


class ItemStatePublisher:
    """Sends item-state records in the background (see the module docstring)."""

    def __init__(self, producer: Any, topic: str, linger_s: float = 0.005) -> None:
        self.sender = KeyedBatchSender(producer)
        self.linger_s = linger_s
        self.topic = topic
        self._pending: dict[str, ItemStateRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def note(self, rows: dict[str, tuple[int, Any]], committed_ms: int | None = None) -> None:
        """The hashes of a committed batch (item id -> (version, ``HGETALL``)): send them soon."""
        if not rows:
            return
        stamp = committed_ms if committed_ms is not None else int(time.time() * 1000)
        pending = self._pending
        for item_id, (version, flat) in rows.items():
            record = record_of(flat, stamp, version)
            held = pending.get(item_id)
            if held is None or record.v > held.v:
                pending[item_id] = record
        metrics.ITEM_STATE_PENDING.set(len(pending))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="item-state-publish")

    async def _drain(self) -> None:
        delay = 0.5
        while self._pending:
            # A short linger: the batches committed meanwhile join this pass, and a title written by several
            # of them goes out once (its newest version), for a few ms of staleness.
            await asyncio.sleep(self.linger_s)
            batch, self._pending = self._pending, {}
            try:
                for item_id, record in batch.items():
                    await self.sender.add(self.topic, item_id.encode(), encode_record(record))
                await self.sender.flush()
            except Exception as exc:  # Kafka away: keep what no newer record replaced, retry
                log.warning("worker.item_state_publish_failed", error=repr(exc), records=len(batch))
                for item_id, record in batch.items():
                    held = self._pending.get(item_id)
                    if held is None or held.v < record.v:
                        self._pending[item_id] = record
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.published += len(batch)
            metrics.ITEM_STATE_PUBLISHED.inc(len(batch))
            metrics.ITEM_STATE_PENDING.set(len(self._pending))
            delay = 0.5

    async def idle(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) until everything noted is sent: orderly shutdowns and tests."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)

    async def close(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
