"""Redis Cluster hash slots on the client: which slot a key is in, and a hash tag that lands on a given slot.

Redis Cluster runs a script, a function or a transaction only when all its keys are in one of the 16 384 hash
slots; the per-slot writes of :mod:`online_state.slot_markers` group a batch's keys by slot with
:func:`slot_of` (the cluster's own CRC16, from redis-py) and keep each slot's applied offsets in a key placed in
that slot by :func:`slot_tag`. On one redis-server the same grouping runs unchanged (every slot is on the node).
"""

from __future__ import annotations

from functools import cache
from typing import Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

SLOTS: Final = REDIS_CLUSTER_HASH_SLOTS


def slot_of(key: str) -> int:
    """The hash slot of ``key`` (its ``{tag}`` if it has a non-empty one, else the whole key)."""
    return key_slot(key.encode())


@cache
def _tags() -> tuple[str, ...]:
    """For every slot, the shortest-first string whose CRC16 is that slot (base-36 counting finds all 16 384
    within ~170 000 candidates: a fraction of a second, once per process)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    found: list[str | None] = [None] * SLOTS
    missing = SLOTS
    n = 0
    while missing:
        text, k = "", n
        while True:
            text = digits[k % 36] + text
            k //= 36
            if not k:
                break
        slot = key_slot(text.encode())
        if found[slot] is None:
            found[slot] = text
            missing -= 1
        n += 1
    return tuple(t for t in found if t is not None)


def slot_tag(slot: int) -> str:
    """A hash-tag text for ``slot``: a key containing ``{slot_tag(s)}`` is in slot ``s``."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"no hash slot {slot} (0..{SLOTS - 1})")
    return _tags()[slot]
