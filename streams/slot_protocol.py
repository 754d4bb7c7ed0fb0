"""Exactly once without cross-slot transactions: a partition batch as per-slot idempotent units (issue 12).

Design and proofs: ``docs/cluster-exactly-once.md``. The same code runs on one redis-server and on Redis Cluster.
For a batch of partition ``p``, offsets ``first..cut``::

    round trip 1  the users' event-id windows (interactions: de-duplication, streams.dedupe)
    round trip 2  every effect's reads (user state, vectors, sessions: one slot per user, keys tagged {u:<user>})
    round trip 3  item stage: per hash slot, one gated unit of the batch's item-level writes (counters,
                  trending, item learning, catalogue values), + WAIT on a cluster
    round trip 4  user stage: per slot, one gated unit of the user-level writes (state, vector, session,
                  window), + WAIT; on one server the checkpoint is set by the same call, on a cluster after it

Effects queue per-key commands on a recorder (their ``bulk`` off), exactly as inside today's ``MULTI``; this
module groups them by (stage, slot) into :class:`~online_state.slot_markers.CommandSection` s, sent as one
``streamrec_slot_apply`` per slot on a cluster and one per stage on one server. Each unit is gated by the
slot's marker of ``(stage, topic, p)``: ``SKIPPED`` when the slot already has every record up to ``cut``,
``APPLIED`` when it has none of ``first..cut``, and ``PARTIAL`` with the marker ``m`` (``first <= m < cut``)
when it holds a batch that ended at ``m``: a worker's cut that crashed, a zombie's. Then nothing is written to
that slot and the batch is **re-cut** at ``m`` and redone from round trip 1: the slots that hold ``m`` skip,
the others apply ``first..m``, and the next batch starts at ``m + 1``, so every slot sees the partition in the
same cuts, and every record lands once in every slot. The user stage is sent only when the item stage is
acknowledged (and replicated), which keeps the invariant the redo relies on: a user slot that applied a record
implies every item slot that record touches applied it.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec

from foundation.logs import get_logger
from online_state.keys import KeyLayout
from online_state.offsets import parse_stored
from online_state.slot_markers import (
    ITEM_STAGE,
    USER_STAGE,
    CommandSection,
    Gate,
    marker_field,
    parse_sections,
    queue_slot_apply,
)
from online_state.slots import slot_of
from streams.batch_protocol import Outcome
from streams.dedupe import EventWindows
from streams.effects import Batch, Effect, Reads, hand_replies, queue_effect_writes
from streams.node_pipelines import (
    RECORDER,
    NodePipelines,
    ReplicationShortfall,
    TopologyChanged,
    apply_callbacks,
    recorder,
)
from streams.offsets import fresh_records
from streams.redis_batch import Command, recorded

log = get_logger(__name__)

R = TypeVar("R")  # a Kafka record (anything with an ``offset``)
_encode = RECORDER.get_encoder().encode
MAX_RECUTS: Final = 64  # a re-cut moves the cut strictly down: more means a bug, not a replay
RETRIES: Final = 30  # redos of one batch through a failover (TopologyChanged / ReplicationShortfall)
RETRY_DELAY_S: Final = 0.2


class SlotProtocolError(RuntimeError):
    """A batch could not be applied (a write command the per-slot units cannot carry, or no progress)."""


@dataclass(slots=True)
class _Stage:
    """The sections of one stage: per slot, its commands (indices into the batch's recorded writes)."""

    slots: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))


@dataclass(slots=True)
class _Attempt:
    """What one attempt of a batch did: ``recut`` is the marker to cut at when a slot held a shorter batch."""

    recut: int | None = None
    applied: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    sections: dict[str, int] = field(default_factory=lambda: {"applied": 0, "skipped": 0, "partial": 0})


@dataclass(frozen=True, slots=True)
class SlotOutcome(Outcome):
    """:class:`~streams.batch_protocol.Outcome`, and where the partition now stands."""

    position: int = -1  # the last offset applied (the checkpoint this call set), -1: none
    recuts: int = 0
    retries: int = 0
    sections: tuple[tuple[str, int], ...] = ()  # per gate, the slot units of every attempt


def _lua_str(data: bytes) -> msgspec.Raw:
    """``data`` as a msgpack *str*: the ``cmsgpack`` of Redis 7.0 refuses the *bin* types msgspec gives bytes,
    and a Lua string holds any bytes anyway (same header sizes as bin 8/16/32)."""
    n = len(data)
    if n < 32:
        head = bytes((0xA0 | n,))
    elif n < 0x100:
        head = bytes((0xD9, n))
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + data)


def _arg(a: Any) -> Any:
    if isinstance(a, str):
        return a
    if isinstance(a, bytes):
        return _lua_str(a)
    if isinstance(a, int) and not isinstance(a, bool):
        return str(a)
    if isinstance(a, float):
        return repr(a)  # as redis-py sends a float
    return _encode(a).decode()  # anything else as redis-py would (or its refusal)


def _plain(command: Command) -> list[Any]:
    """A recorded write as the function receives it: ``[name, key, arg, ...]``, each a string (numbers as redis-py
    would send them, bytes as msgpack str)."""
    return [_arg(a) for a in command[0]]


def _group(commands: Sequence[Command], keys: KeyLayout) -> tuple[_Stage, _Stage]:
    """The batch's writes by (stage, slot): user-owned keys in the user stage, every other key in the item stage."""
    item, user = _Stage(), _Stage()
    placed: dict[Any, list[int]] = {}  # key -> its stage's list of the key's slot (a key has many commands)
    for i, (args, _) in enumerate(commands):
        key = args[1]
        target = placed.get(key)
        if target is None:
            if str(args[0]).upper() in _NOT_PER_KEY:
                raise SlotProtocolError(f"{args[0]}: the per-slot protocol needs one command per key "
                                        "(effects' bulk off)")
            text = key.decode() if isinstance(key, bytes) else str(key)
            target = placed[key] = (user if keys.is_user_key(text) else item).slots[slot_of(text)]
        target.append(i)
    return item, user


_NOT_PER_KEY: Final = frozenset({"FCALL", "FCALL_RO", "EVALSHA", "EVAL", "MULTI", "EXEC", "MSET", "DEL", "UNLINK"})


class SlotProtocol:
    """Applies partition batches through per-slot units on ``client`` (``Redis`` or ``RedisCluster``)."""

    def __init__(self, client: Any, keys: KeyLayout) -> None:
        self.pipes = NodePipelines(client)
        self.keys = keys

    @property
    def cluster(self) -> bool:
        return self.pipes.cluster

    async def stored(self, topic: str, partition: int) -> int:
        """The partition's checkpoint (-1: nothing applied)."""
        return parse_stored((await self.pipes.run([(("GET", self.keys.offset(topic, partition)), {})]))[0])

    async def apply(self, topic: str, partition: int, records: Sequence[R],
                    prepare: Callable[[Sequence[R]], Awaitable[Batch[Any]]], effects: Sequence[Effect[Any]],
                    windows: EventWindows | None = None, *, position: int | None = None) -> SlotOutcome:
        """Apply ``records`` (one partition's, in offset order) exactly once. ``position``: the partition's last
        applied offset as the caller knows it (its own previous call); ``None``: read the checkpoint."""
        if position is None:
            position = await self.stored(topic, partition)
        fresh = list(fresh_records(records, position))
        skipped = len(records) - len(fresh)
        if not fresh:
            return SlotOutcome(skipped=skipped, position=position)
        offsets = [r.offset for r in fresh]  # type: ignore[attr-defined]
        applied = duplicates = recuts = retries = 0
        seconds = 0.0
        totals: dict[str, int] = defaultdict(int)
        start = 0
        while start < len(fresh):
            end = len(fresh)
            for _ in range(MAX_RECUTS):
                try:
                    attempt = await self._attempt(topic, partition, fresh[start:end], prepare, effects, windows)
                except (TopologyChanged, ReplicationShortfall) as exc:
                    retries += 1
                    if retries > RETRIES:
                        raise
                    log.info("worker.slot_retry", topic=topic, partition=partition, reason=str(exc)[:200])
                    await asyncio.sleep(RETRY_DELAY_S)
                    continue
                for gate, n in attempt.sections.items():
                    totals[gate] += n
                seconds += attempt.seconds
                if attempt.recut is None:
                    applied += attempt.applied
                    duplicates += attempt.duplicates
                    break
                recuts += 1
                end = bisect.bisect_right(offsets, attempt.recut, start, end)
                log.info("worker.recut", topic=topic, partition=partition, at=attempt.recut)
            else:
                raise SlotProtocolError(f"{topic}:{partition}: no progress after {MAX_RECUTS} re-cuts")
            position = offsets[end - 1]
            start = end
        return SlotOutcome(skipped=skipped, applied=applied, duplicates=duplicates, commit_seconds=seconds,
                           position=position, recuts=recuts, retries=retries, sections=tuple(sorted(totals.items())))

    async def _attempt(self, topic: str, partition: int, records: Sequence[R],
                       prepare: Callable[[Sequence[R]], Awaitable[Batch[Any]]], effects: Sequence[Effect[Any]],
                       windows: EventWindows | None) -> _Attempt:
        first, cut = records[0].offset, records[-1].offset  # type: ignore[attr-defined]
        out = _Attempt()
        batch = await prepare(records)
        deduped = None
        if windows is not None and batch.events:
            users = windows.users(batch.events)
            stored = await self.pipes.run(windows.read_commands(users, per_key=self.cluster))
            deduped = windows.filter(batch.events, users, stored if self.cluster else stored[0])
            if deduped.duplicates:
                batch = Batch(batch.info, deduped.events)
        active = effects if batch.events else ()
        read_pipe = recorder()
        reads: list[Reads[Any]] = [effect.read(read_pipe, batch) for effect in active]
        hand_replies(reads, await self.pipes.run(recorded(read_pipe)))
        started = time.perf_counter()
        writes = recorder()
        spans = await queue_effect_writes(writes, active, batch, reads)
        if deduped is not None:
            windows.queue_writes(writes, deduped)  # type: ignore[union-attr]
        commands = recorded(writes)
        written: list[Any] = [None] * len(commands)  # per command its reply, None where its slot did not apply
        try:
            item, user = _group(commands, self.keys)
            partial = await self._stage(ITEM_STAGE, topic, partition, first, cut, item, commands, written, out)
            if not partial:
                partial = await self._stage(USER_STAGE, topic, partition, first, cut, user, commands, written, out,
                                            checkpoint=True)
        except BaseException:
            for effect, r in zip(active, reads, strict=True):
                effect.failed(batch, r)
            raise
        for effect, r, (begin, end) in zip(active, reads, spans, strict=True):
            effect.committed(batch, r, written[begin:end])
        out.seconds = time.perf_counter() - started
        if partial:
            out.recut = min(partial)
        else:
            out.applied = len(batch.events)
            out.duplicates = deduped.duplicates if deduped is not None else 0
        return out

    async def _stage(self, stage: str, topic: str, partition: int, first: int, cut: int, groups: _Stage,
                     commands: Sequence[Command], written: list[Any], out: _Attempt, *,
                     checkpoint: bool = False) -> list[int]:
        """Send one stage's sections (and, with ``checkpoint``, move the partition's checkpoint to ``cut`` once
        every section of the stage has it); the markers of the ``PARTIAL`` ones (empty: the stage is done)."""
        marker_field_ = marker_field(stage, topic, partition)
        slots = sorted(groups.slots)
        sections = [CommandSection(self.keys.applied(slot), [_plain(commands[i]) for i in groups.slots[slot]])
                    for slot in slots]
        offset_key = self.keys.offset(topic, partition)
        pipe = recorder()
        if self.cluster:  # a function's keys must be in one slot: one call per slot
            for section in sections:
                queue_slot_apply(pipe, marker_field_, first, cut, [section])
        elif sections or checkpoint:
            queue_slot_apply(pipe, marker_field_, first, cut, sections, offset_key if checkpoint else None)
        replies = await self.pipes.run(recorded(pipe), wait=True) if pipe.command_stack else []
        results = [r for reply in replies for r in parse_sections(reply)]
        partial: list[int] = []
        for slot, (gate, marker, raw) in zip(slots, results, strict=True):
            if gate is Gate.APPLIED and raw is not None:
                out.sections["applied"] += 1
                indices = groups.slots[slot]
                for i, reply in zip(indices, apply_callbacks([commands[i] for i in indices], raw), strict=True):
                    written[i] = reply
            elif gate is Gate.SKIPPED:
                out.sections["skipped"] += 1
            else:
                out.sections["partial"] += 1
                partial.append(marker)
        if checkpoint and self.cluster and not partial:
            # A hint (docs/cluster-exactly-once.md, Resume): set once both stages are acknowledged everywhere.
            await self.pipes.run([(("SET", offset_key, cut), {})])
        return partial
