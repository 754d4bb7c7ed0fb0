"""Per-slot idempotent writes: one function call applies a batch's writes to the keys of one hash slot, once.

The unit of exactly-once on Redis Cluster (design: ``docs/cluster-exactly-once.md``; the client side:
:mod:`streams.slot_protocol`). Each hash slot ``s`` has a marker hash, :meth:`online_state.keys.KeyLayout.applied`
(in slot ``s`` through its tag), whose field ``<stage>|<topic>|<partition>`` is the last offset of that partition
whose writes to the slot's keys were applied. A call carries the batch's offsets ``first..last`` and, atomically
inside Redis, per section (one slot's writes):

- marker ``>= last``: ``SKIPPED`` (the slot has the whole batch: a redelivery, a client retry, a zombie);
- ``first <= marker < last``: ``PARTIAL`` with the marker, nothing written: the slot holds a batch that ended at
  the marker (a crashed worker's or a zombie's cut); the caller re-cuts its batch there;
- marker ``< first``: the section's commands run and the marker is set to ``last``: ``APPLIED``, with their replies.

So a slot's state and its marker change together, also on a replica (Redis replicates a function's writes as
one transaction), and a replay of any records in any batching applies each record once per slot. The same calls
run on one redis-server, where every slot lives on the one node and one call carries every section of a stage.

Library ``streamrec_slots`` (``FUNCTION LOAD REPLACE``, :func:`load_slot_functions`; on a cluster redis-py sends
it to every primary). ``streamrec_slot_apply``: ``ARGV`` = field, last, payload, checkpoint; the payload (msgpack)
is a list of sections ``[first, marker's index in KEYS, [[command, key, arg, ...], ...]]``, and ``KEYS`` holds
every marker and key (declared, as Redis Cluster requires). ``checkpoint`` (an index in ``KEYS``, 0: none): set
that key to ``last`` too when no section was ``PARTIAL`` (one server only, where the key may be in another slot).
The function checks the shape of its input before its first write (Redis does not roll back a function that fails
half-way). Offsets travel as decimal strings and are compared as Lua numbers (exact below 2**53).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import msgspec

LIBRARY: Final = """#!lua name=streamrec_slots
-- v3: streamrec_slot_apply, the worker's per-slot writes (see online_state/slot_markers.py)

local function marker_gate(marker, field, first, last)
  local stored = redis.call('HGET', marker, field)
  local m = -1
  if stored then m = tonumber(stored) end
  if m >= tonumber(last) then return 0, m end
  if m >= tonumber(first) then return 2, m end
  return nil, m
end

-- ARGV: field, last, payload, checkpoint (index in KEYS of the partition's checkpoint key, 0: none).
-- payload: sections {first, marker index in KEYS, {{command, key, arg...}, ...}}.
local function slot_apply(keys, args)
  local field, last = args[1], args[2]
  local sections = cmsgpack.unpack(args[3])
  local checkpoint = tonumber(args[4]) or 0
  if type(sections) ~= 'table' or (checkpoint ~= 0 and type(keys[checkpoint]) ~= 'string') then
    return redis.error_reply('streamrec_slot_apply: bad payload or checkpoint index')
  end
  for s = 1, #sections do  -- the shape of everything before the first write: a function is not rolled back
    local sec = sections[s]
    if type(sec) ~= 'table' or tonumber(sec[1]) == nil or type(keys[sec[2]]) ~= 'string'
        or type(sec[3]) ~= 'table' then
      return redis.error_reply('streamrec_slot_apply: bad section ' .. s)
    end
    for i = 1, #sec[3] do
      local command = sec[3][i]
      if type(command) ~= 'table' or type(command[1]) ~= 'string' or type(command[2]) ~= 'string' then
        return redis.error_reply('streamrec_slot_apply: bad command ' .. i .. ' of section ' .. s)
      end
    end
  end
  local out = {}
  local partial = false
  for s = 1, #sections do
    local sec = sections[s]
    local marker = keys[sec[2]]
    local gate, m = marker_gate(marker, field, sec[1], last)
    if gate then
      out[s] = {gate, m}
      if gate == 2 then partial = true end
      -- SKIPPED rewrites the marker as it is: a write, so that a WAIT on this connection also covers the earlier
      -- writes it skips over (a redo after a WAIT shortfall may run on another connection than the first try).
      if gate == 0 then redis.call('HSET', marker, field, m) end
    else
      local commands, replies = sec[3], {}
      for i = 1, #commands do
        replies[i] = redis.call(unpack(commands[i]))
      end
      redis.call('HSET', marker, field, last)
      out[s] = {1, tonumber(last), replies}
    end
  end
  if checkpoint ~= 0 and not partial then
    redis.call('SET', keys[checkpoint], last)
  end
  return out
end

redis.register_function('streamrec_slot_apply', slot_apply)
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
class CommandSection:
    """One slot's share of a stage, for ``streamrec_slot_apply``: its marker and its recorded write commands
    (``(name, key, arg, ...)``, every key in the marker's slot; values already bytes or text)."""

    marker: str
    commands: Sequence[Sequence[Any]]


def queue_slot_apply(pipe: Any, field: str, first: int, last: int, sections: Sequence[CommandSection],
                     checkpoint: str | None = None) -> None:
    """Queue one ``streamrec_slot_apply`` of ``sections`` (on a cluster: of one slot; on one server: any) for the
    offsets ``first..last`` of the marker field's partition. ``checkpoint``: also set this key to ``last`` when
    no section was ``PARTIAL`` (one server only: the key is in its own slot). Reply: :func:`parse_sections`."""
    keys: list[str] = []
    payload = []
    for section in sections:
        keys.append(section.marker)
        payload.append((first, len(keys), section.commands))
        keys.extend(dict.fromkeys(str(command[1]) for command in section.commands))
    if checkpoint is not None:
        keys.append(checkpoint)
    pipe.execute_command("FCALL", "streamrec_slot_apply", len(keys), *keys, field, str(last), _pack(payload),
                         len(keys) if checkpoint is not None else 0)


def parse_sections(reply: Sequence[Any]) -> list[tuple[Gate, int, list[Any] | None]]:
    """A ``streamrec_slot_apply`` reply: per section, its gate, the slot's marker (after the call when applied)
    and, when applied, the replies of its commands (raw: no redis-py callbacks)."""
    return [(Gate(int(r[0])), int(r[1]), list(r[2]) if len(r) > 2 else None) for r in reply]
