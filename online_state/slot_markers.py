"""Per-slot idempotent writes: one function call applies a batch's writes to the keys of one hash slot, once.

The unit of exactly-once on Redis Cluster (design: ``docs/cluster-exactly-once.md``). Each hash slot ``s`` has a
marker hash, :meth:`online_state.keys.KeyLayout.applied` (in slot ``s`` through its tag), whose field
``<stage>|<topic>|<partition>`` is the last offset of that partition whose writes to the slot's keys were
applied. A call carries the batch's offsets ``first..last`` and, atomically inside Redis:

- marker ``>= last``: ``SKIPPED`` (the slot has the whole batch: a redelivery, a client retry);
- ``first <= marker < last``: ``PARTIAL`` with the marker, nothing written: the caller recomputes the slot's
  writes from the records after it (a redelivery cut at other offsets) and calls again;
- marker ``< first``: the writes are applied and the marker set to ``last``: ``APPLIED``.

So a slot's state and its marker change together, also on a replica (Redis replicates a function's writes as
one transaction), and a replay of any records in any batching applies each record once per slot. The same calls
run on one redis-server, where every slot lives on the one node.

Library ``streamrec_slots`` (``FUNCTION LOAD REPLACE``, :func:`load_slot_functions`; on a cluster redis-py
sends it to every primary). ``streamrec_slot_hincr``: ``ARGV`` = field, last, payload; the payload (msgpack) is a
list of *sections*, one per slot, ``[first, [entry, ...]]``, and ``KEYS`` holds per section its marker then its
item hashes (one per entry). An entry is ``[[field, amount, ...], [prefix, epoch, amount, ...]]`` as in
:mod:`online_state.redis_functions`' ``streamrec_hincr`` (counts, then popularity epochs; a new epoch field
deletes the item's fields of epochs ``e-2 .. e-6``). The reply: per section, its gate and marker. Each section is
gated and applied on its own, so a call of several sections is just several slot units sent as one command: on
Redis Cluster a call may only hold one slot's section (``CROSSSLOT``); on one redis-server one call carries the
whole batch (one command instead of one per slot: the single node keeps its throughput). The function checks the
shape of its input before its first write (Redis does not roll back a function that fails half-way).
Offsets travel as decimal strings and are compared as Lua numbers (exact below 2**53).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import msgspec

LIBRARY: Final = """#!lua name=streamrec_slots
-- v2: streamrec_slot_hincr over sections (see online_state/slot_markers.py)

local function marker_gate(marker, field, first, last)
  local stored = redis.call('HGET', marker, field)
  local m = -1
  if stored then m = tonumber(stored) end
  if m >= tonumber(last) then return 0, m end
  if m >= tonumber(first) then return 2, m end
  return nil, m
end

local function hincr_item(key, entry)
  local counts, pops = entry[1], entry[2]
  for j = 1, #counts, 2 do
    redis.call('HINCRBY', key, counts[j], counts[j + 1])
  end
  for j = 1, #pops, 3 do
    local prefix, epoch, amount = pops[j], tonumber(pops[j + 1]), pops[j + 2]
    local value = redis.call('HINCRBY', key, prefix .. ':' .. epoch, amount)
    if value == tonumber(amount) then
      redis.call('HDEL', key, prefix .. ':' .. (epoch - 2), prefix .. ':' .. (epoch - 3),
                 prefix .. ':' .. (epoch - 4), prefix .. ':' .. (epoch - 5), prefix .. ':' .. (epoch - 6))
    end
  end
end

local function slot_hincr(keys, args)
  local field, last = args[1], args[2]
  local sections = cmsgpack.unpack(args[3])
  local expected = 0
  for s = 1, #sections do
    expected = expected + 1 + #sections[s][2]
  end
  if expected ~= #keys then
    return redis.error_reply('streamrec_slot_hincr: ' .. #keys .. ' keys for ' .. expected .. ' in the payload')
  end
  local out = {}
  local k = 1
  for s = 1, #sections do
    local first, entries = sections[s][1], sections[s][2]
    local marker = keys[k]
    local gate, m = marker_gate(marker, field, first, last)
    if gate then
      out[#out + 1] = gate
      out[#out + 1] = m
    else
      for i = 1, #entries do
        hincr_item(keys[k + i], entries[i])
      end
      redis.call('HSET', marker, field, last)
      out[#out + 1] = 1
      out[#out + 1] = tonumber(last)
    end
    k = k + 1 + #entries
  end
  return out
end

redis.register_function('streamrec_slot_hincr', slot_hincr)
"""

ITEM_STAGE: Final = "i"  # item-level writes (counters, trending, item learning): sent first
USER_STAGE: Final = "u"  # user-level writes (state, vectors, sessions, windows): sent once the item stage landed


class Gate(IntEnum):
    """What one slot call did."""

    SKIPPED = 0  # the slot had the whole batch
    APPLIED = 1
    PARTIAL = 2  # the slot had the records up to the marker: nothing written, recompute from marker + 1


_pack = msgspec.msgpack.Encoder().encode


async def load_slot_functions(client: Any) -> None:
    """Load (or replace) the library; safe from every worker at any time (every primary on a cluster)."""
    await client.function_load(LIBRARY, replace=True)


def marker_field(stage: str, topic: str, partition: int) -> str:
    """The marker field of one stage of one source partition."""
    return f"{stage}|{topic}|{partition}"


@dataclass(frozen=True, slots=True)
class Section:
    """One slot's share of a call: its marker, the first offset it carries, its item hashes and increments."""

    marker: str
    first: int
    keys: Sequence[str]
    entries: Sequence[tuple[list[str], list[str]]]


def queue_slot_hincr(pipe: Any, field: str, last: int, sections: Sequence[Section]) -> int:
    """Queue one call of ``sections`` (on a cluster: of one slot; on one server: any) for the offsets up to ``last``
    of the marker field's partition; its reply goes to :func:`parse_gates`. Returns the sections queued."""
    keys = [key for section in sections for key in (section.marker, *section.keys)]
    payload = _pack([(str(section.first), section.entries) for section in sections])
    pipe.execute_command("FCALL", "streamrec_slot_hincr", len(keys), *keys, field, str(last), payload)
    return len(sections)


def parse_gates(reply: Sequence[Any]) -> list[tuple[Gate, int]]:
    """A call's reply: per section, what it did and the slot's marker (after the call when applied)."""
    return [(Gate(int(reply[i])), int(reply[i + 1])) for i in range(0, len(reply), 2)]
