"""The item stage of a partition batch as per-slot idempotent calls: the features' item counters, exactly once
without a cross-slot transaction (design: ``docs/cluster-exactly-once.md``; the Redis side:
:mod:`online_state.slot_markers`).

A batch's item deltas (:func:`models.features.state.item_deltas`: counts and popularity epochs of every title it
touches) are grouped by the hash slot of each title's key, one section per slot, and sent as one
``streamrec_slot_hincr`` per slot on a cluster (one pipeline: redis-py's cluster pipeline sends each node its calls
in parallel, one round trip) or one for the whole batch on a single redis-server (same sections, same gates).
A slot that already holds part of the batch answers ``PARTIAL`` with its marker; its deltas are recomputed from
the records after the marker and sent again (one more round trip, only on replays). So the batch can be
delivered again, in any other cut, after a crash between two slots' calls, and every slot ends with each record
applied once.

Prototype scope: the item counters of ``sr:i:*`` (not yet the read-back for the item-state topic, trending, item
learning or the user stage). The deltas are a function of the records alone, which is what lets a slot recompute
its part on its own; de-duplication by event id must run before (in the user stage's order, see the design).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from redis.asyncio.cluster import RedisCluster

from models.features import spec
from models.features.state import ITEM_COUNT_NAMES, EventBatch, ItemStatic, item_deltas
from online_state.keys import KeyLayout
from online_state.slot_markers import ITEM_STAGE, Gate, Section, marker_field, parse_gates, queue_slot_hincr
from online_state.slots import slot_of

Entry = tuple[list[str], list[str]]  # ([field, amount, ...], [prefix, epoch, amount, ...]) of one item hash


class _Record(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def event(self) -> Any: ...


@dataclass(slots=True)
class SlotCall:
    """One slot's share of a batch: the records from ``first`` on, as increments of the slot's item hashes."""

    slot: int
    first: int
    keys: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


@dataclass(slots=True)
class SlotOutcome:
    """What :func:`apply_item_counts` did: calls per gate, and the pipelines (round trips) it sent."""

    applied: int = 0
    skipped: int = 0
    partial: int = 0
    round_trips: int = 0

    @property
    def calls(self) -> int:
        return self.applied + self.skipped + self.partial


def item_entries(batch: EventBatch) -> dict[str, Entry]:
    """Item id -> its increments for ``batch`` (the fields and amounts of the features' item hashes)."""
    deltas = item_deltas(batch)
    entries: dict[str, Entry] = {}
    item_keys: Sequence[str] = batch.item_keys
    positions = deltas.item.tolist()
    rows, cols = np.nonzero(deltas.counts)
    for row, col, value in zip(rows.tolist(), cols.tolist(), deltas.counts[rows, cols].tolist(), strict=True):
        entries.setdefault(item_keys[positions[row]], ([], []))[0].extend((ITEM_COUNT_NAMES[col], str(value)))
    for (prefix, _), pop in zip(spec.POP_HALF_LIVES, deltas.pop, strict=True):
        for pos, epoch, amount in zip(pop.item.tolist(), pop.epoch.tolist(), pop.amount.tolist(), strict=True):
            entries.setdefault(item_keys[pos], ([], []))[1].extend((prefix, str(epoch), str(amount)))
    return entries


def plan_item_calls(keys: KeyLayout, records: Sequence[_Record], static: ItemStatic,
                    firsts: Mapping[int, int] | None = None) -> list[SlotCall]:
    """The batch's calls, one per slot. ``firsts`` (slot -> first offset to carry): only those slots, each from
    its own offset (after a ``PARTIAL``); ``None``: every slot the batch touches, from the batch's first offset."""
    starts = sorted(set(firsts.values())) if firsts is not None else [records[0].offset]
    calls: dict[int, SlotCall] = {}
    for start in starts:
        events = [r.event for r in records if r.offset >= start]
        for item, entry in item_entries(EventBatch.from_events(events, static)).items():
            key = keys.item_state(item)
            slot = slot_of(key)
            if firsts is not None and firsts.get(slot) != start:
                continue
            call = calls.get(slot)
            if call is None:
                call = calls[slot] = SlotCall(slot, start)
            call.keys.append(key)
            call.entries.append(entry)
    return list(calls.values())


async def send_item_calls(redis: Any, keys: KeyLayout, topic: str, partition: int, last: int,
                          calls: Sequence[SlotCall]) -> list[tuple[Gate, int]]:
    """Send ``calls`` in one pipeline (one round trip; on a cluster one per node, in parallel); each slot's gate
    and marker, in order. On a cluster each slot is its own command; on one server the batch is one command."""
    pipe = redis.pipeline(transaction=False)
    field = marker_field(ITEM_STAGE, topic, partition)
    sections = [Section(keys.applied(c.slot), c.first, c.keys, c.entries) for c in calls]
    for group in ([[s] for s in sections] if isinstance(redis, RedisCluster) else [sections] if sections else []):
        queue_slot_hincr(pipe, field, last, group)
    return [gate for reply in await pipe.execute() for gate in parse_gates(reply)]


async def apply_item_counts(redis: Any, keys: KeyLayout, topic: str, partition: int,
                            records: Sequence[_Record], static: ItemStatic) -> SlotOutcome:
    """Apply the item counters of one partition batch (``records`` in offset order), each record once per slot
    whatever the slots already hold."""
    out = SlotOutcome()
    if not records:
        return out
    last = records[-1].offset
    calls = plan_item_calls(keys, records, static)
    while calls:
        gates = await send_item_calls(redis, keys, topic, partition, last, calls)
        out.round_trips += 1
        redo: dict[int, int] = {}
        for call, (gate, marker) in zip(calls, gates, strict=True):
            if gate is Gate.APPLIED:
                out.applied += 1
            elif gate is Gate.SKIPPED:
                out.skipped += 1
            else:
                out.partial += 1
                redo[call.slot] = marker + 1  # > call.first: the loop ends
        calls = plan_item_calls(keys, records, static, redo) if redo else []
    return out
