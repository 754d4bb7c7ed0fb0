"""Bulk writes as Redis Functions: one ``FCALL`` applies a whole batch's writes of one kind.

Why: redis-py spends client CPU on every queued command (packing, and in a ``MULTI`` reading a
``QUEUED`` and a result reply), so a batch queued as its natural commands (an ``HINCRBY`` per item
and field, a ``ZINCRBY`` per trend key and item, a ``SET ... EX`` per user and value) spent most of
the worker's time in the client (figures: ``benchmarks/bench_worker.py``). Here the same commands run inside Redis,
from a payload packed by msgspec in C (``cmsgpack`` unpacks it on the server). Inside a ``MULTI``
the calls commit with everything else: functions are atomic like any command, and the transaction
with the stored offset stays the unit of exactly-once.

Library ``streamrec`` (``FUNCTION LOAD REPLACE``: :func:`load_functions`, idempotent; the worker
loads it at start and again if a restarted Redis lost it). Every function declares the keys it
touches in ``KEYS`` (``ARGV[1]`` is the packed payload, aligned with ``KEYS``):

``streamrec_set``      ``ARGV[1]`` TTL in seconds (``0``: none), ``ARGV[2..]`` values: ``SET key value [EX]``.
``streamrec_hincr``    per key ``[[field, amount, ...], [prefix, epoch, amount, ...]]``: ``HINCRBY``
                       of the counts, then of the ``{prefix}:{epoch}`` decayed sums; when an epoch field
                       is created by this call (the reply equals the amount) the fields of epochs
                       ``epoch-2 .. epoch-6`` are deleted (they are never read again).
``streamrec_hincr_rows`` the same, then per key ``[HINCRBY key v 1, HGETALL key]`` (the hash's new version and
                       the hash), packed by ``cmsgpack`` (:mod:`online_state.item_state` publishes them).
``streamrec_zincr``    per key ``[ttl, member, amount, ...]``: ``ZINCRBY`` each, then ``EXPIRE key ttl``.

Amounts travel as decimal strings (``repr`` of a float: Redis parses it back to the same double),
never as Lua numbers, whose ``%.14g`` formatting would round large integers.

Redis Cluster: a function may only touch keys of one hash slot, and these span users and items
(as does the ``MULTI`` they run in, see :mod:`online_state.redis_store`); on a cluster,
use the per-command path (``bulk=False``) or hash-tag the keys of a partition into one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

LIBRARY_NAME: Final = "streamrec"
# Bump the version (in the name of nothing, just the text) when a function changes: LOAD REPLACE is cheap.
LIBRARY: Final = """#!lua name=streamrec
-- v2: streamrec_set, streamrec_hincr, streamrec_hincr_rows, streamrec_zincr (see online_state/redis_functions.py)

local function set_many(keys, args)
  local ttl = tonumber(args[1])
  for i = 1, #keys do
    if ttl > 0 then
      redis.call('SET', keys[i], args[i + 1], 'EX', ttl)
    else
      redis.call('SET', keys[i], args[i + 1])
    end
  end
  return #keys
end

local function hincr_keys(keys, args, rows)
  local payload = cmsgpack.unpack(args[1])
  local n = 0
  for i = 1, #keys do
    local key, entry = keys[i], payload[i]
    local counts, pops = entry[1], entry[2]
    for j = 1, #counts, 2 do
      redis.call('HINCRBY', key, counts[j], counts[j + 1])
      n = n + 1
    end
    for j = 1, #pops, 3 do
      local prefix, epoch, amount = pops[j], tonumber(pops[j + 1]), pops[j + 2]
      local value = redis.call('HINCRBY', key, prefix .. ':' .. epoch, amount)
      n = n + 1
      if value == tonumber(amount) then
        -- a new epoch for this item: the fields of epochs 2..6 before it are never read again
        redis.call('HDEL', key, prefix .. ':' .. (epoch - 2), prefix .. ':' .. (epoch - 3),
                   prefix .. ':' .. (epoch - 4), prefix .. ':' .. (epoch - 5), prefix .. ':' .. (epoch - 6))
      end
    end
    if rows then
      rows[i] = {redis.call('HINCRBY', key, 'v', 1), redis.call('HGETALL', key)}
    end
  end
  return n
end

local function hincr_many(keys, args)
  return hincr_keys(keys, args, nil)
end

local function hincr_rows(keys, args)
  local rows = {}
  hincr_keys(keys, args, rows)
  return cmsgpack.pack(rows)
end

local function zincr_many(keys, args)
  local payload = cmsgpack.unpack(args[1])
  local n = 0
  for i = 1, #keys do
    local key, entry = keys[i], payload[i]
    for j = 2, #entry, 2 do
      redis.call('ZINCRBY', key, entry[j + 1], entry[j])
      n = n + 1
    end
    redis.call('EXPIRE', key, entry[1])
  end
  return n
end

redis.register_function('streamrec_set', set_many)
redis.register_function('streamrec_hincr', hincr_many)
redis.register_function('streamrec_hincr_rows', hincr_rows)
redis.register_function('streamrec_zincr', zincr_many)
"""

_pack = msgspec.msgpack.Encoder().encode


async def load_functions(client: Any) -> None:
    """Load (or replace) the library; safe to call from every worker at any time."""
    await client.function_load(LIBRARY, replace=True)


async def functions_available(client: Any) -> bool:
    """Whether the server runs functions (Redis >= 7 with Lua; fakeredis without lupa does not)."""
    try:
        await load_functions(client)
    except Exception:  # unknown command, no Lua: the caller falls back to plain commands
        return False
    return True


def is_missing_function(exc: BaseException) -> bool:
    """A ``FCALL`` refused because the library is not loaded (e.g. Redis restarted without persistence)."""
    return "function not found" in str(exc).lower() or "no such function" in str(exc).lower()


def set_many(pipe: Any, keys: Sequence[str], values: Sequence[bytes], ttl_s: int | None) -> int:
    """Queue ``SET key value [EX ttl]`` for every pair as one command; returns the commands queued (0 or 1)."""
    if not keys:
        return 0
    pipe.execute_command("FCALL", "streamrec_set", len(keys), *keys, ttl_s or 0, *values)
    return 1


def hincr_many(pipe: Any, keys: Sequence[str], entries: Sequence[tuple[list[str], list[str]]], *,
               rows: bool = False) -> int:
    """Queue the item increments (``entries[i]`` = (``[field, amount, ...]``, ``[prefix, epoch, amount, ...]``)
    for ``keys[i]``) as one command; returns the commands queued (0 or 1). ``rows``: also bump each hash's
    version and reply with every hash as it is after the call (``streamrec_hincr_rows``: :func:`decode_rows`)."""
    if not keys:
        return 0
    pipe.execute_command("FCALL", "streamrec_hincr_rows" if rows else "streamrec_hincr", len(keys), *keys,
                         _pack(entries))
    return 1


_decode_rows = msgspec.msgpack.Decoder(list[tuple[int, list[str]]]).decode


def decode_rows(reply: bytes) -> list[tuple[int, list[str]]]:
    """The reply of ``streamrec_hincr_rows``: per key (its new version, its ``HGETALL`` flat names and values)."""
    return _decode_rows(reply)


def zincr_many(pipe: Any, keys: Sequence[str], entries: Sequence[list[Any]]) -> int:
    """Queue the sorted-set increments (``entries[i]`` = ``[ttl, member, amount, ...]`` for ``keys[i]``)
    as one command; returns the commands queued (0 or 1)."""
    if not keys:
        return 0
    pipe.execute_command("FCALL", "streamrec_zincr", len(keys), *keys, _pack(entries))
    return 1
