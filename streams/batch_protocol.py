"""The exactly-once protocol of one partition batch: its effects' writes commit with the partition's offset.

Per batch, on one connection held for it (:class:`streams.redis_batch.BatchConnection`), three round trips::

    WATCH offset_key; GET offset_key           which records are fresh (those at or below it were applied)
    MGET <the batch's users' event windows>    which events were applied before (interactions: de-duplication)
    <every effect's reads>                     (skipped when no effect reads)
    MULTI; <every effect's writes>; SET <windows>; SET offset_key <last offset>; EXEC

The writes and the offset commit together, so a batch redelivered after a crash or a rebalance is
recognised by its offsets and skipped: nothing lost, nothing applied twice. The ``WATCH`` fences zombies: a
worker that lost the partition and still commits finds the key changed by the new owner, its ``EXEC`` is
refused (:class:`Fenced`) and the caller redoes the batch from the newly stored offset.

The offsets make a record count once; :mod:`streams.dedupe` makes an *event* count once: a record whose
``event_id`` its user applied recently (a client's retry after a 503) is dropped before the effects see the batch,
and the users' windows of applied ids are written in the same ``MULTI``, so they change exactly with the state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import WatchError

from foundation.logs import get_logger
from online_state.offsets import parse_stored
from streams.dedupe import EventWindows
from streams.effects import Batch, Effect, Reads, hand_replies, queue_effect_writes
from streams.offsets import fresh_records, gap
from streams.redis_batch import BatchConnection, recorded

log = get_logger(__name__)

R = TypeVar("R")  # a Kafka record (anything with an ``offset``)


class Fenced(Exception):
    """Another worker advanced the partition's offset while this batch was prepared: nothing was written."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one :func:`apply_batch` did."""

    skipped: int = 0  # records at or below the stored offset (applied before: a redelivery)
    applied: int = 0  # events committed by this batch
    duplicates: int = 0  # fresh records whose event_id their user had applied (dropped, see streams.dedupe)
    commit_seconds: float | None = None  # queuing the writes and the MULTI/EXEC; None: nothing was fresh


async def apply_batch(
    redis: Any,
    offset_key: str,
    records: Sequence[R],
    prepare: Callable[[Sequence[R]], Awaitable[Batch[Any]]],
    effects: Sequence[Effect[Any]],
    windows: EventWindows | None = None,
) -> Outcome:
    """Apply the fresh ``records`` of one partition through ``effects``, exactly once.

    ``prepare(fresh)`` turns the fresh records into the effects' :class:`Batch` (and deals with the invalid
    ones); it runs under the ``WATCH``, before the effects' reads. Raises :class:`Fenced` when another
    worker committed the partition meanwhile (the caller redoes the batch). ``windows``: de-duplicate the
    batch's events by their users' recent event ids (interaction batches; None: every event is applied).
    """
    async with BatchConnection(redis) as conn:
        stored = parse_stored(await conn.watch(offset_key))
        fresh = fresh_records(records, stored)
        skipped = len(records) - len(fresh)
        if not fresh:
            return Outcome(skipped=skipped)
        if gap(fresh, stored):
            log.warning("worker.offset_gap", key=offset_key, stored=stored, first=fresh[0].offset)  # type: ignore[attr-defined]
        batch = await prepare(fresh)
        deduped = None
        if windows is not None and batch.events:
            users = windows.users(batch.events)
            deduped = windows.filter(batch.events, users, (await conn.read([windows.read_command(users)]))[0])
            if deduped.duplicates:
                batch = Batch(batch.info, deduped.events)
        active = effects if batch.events else ()  # no valid event: only the offset moves
        read_pipe = redis.pipeline(transaction=False)  # a recorder: the connection sends it
        reads: list[Reads[Any]] = [effect.read(read_pipe, batch) for effect in active]
        hand_replies(reads, await conn.read(recorded(read_pipe)))
        started = time.perf_counter()
        writes = redis.pipeline(transaction=True)  # a recorder too
        spans = await queue_effect_writes(writes, active, batch, reads)
        if deduped is not None:
            windows.queue_writes(writes, deduped)  # type: ignore[union-attr]
        writes.set(offset_key, batch.info.last_offset)
        try:
            written = await conn.commit(recorded(writes))
        except BaseException as exc:
            for effect, r in zip(active, reads, strict=True):
                effect.failed(batch, r)
            if isinstance(exc, WatchError):
                raise Fenced() from exc
            raise
        for effect, r, (first, end) in zip(active, reads, spans, strict=True):
            effect.committed(batch, r, written[first:end])
        return Outcome(skipped=skipped, applied=len(batch.events), duplicates=deduped.duplicates if deduped else 0,
                       commit_seconds=time.perf_counter() - started)
