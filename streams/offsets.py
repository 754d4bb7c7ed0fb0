"""Which records of a batch are still to apply, given the offset stored in Redis.

The partition's offset key (:meth:`online_state.keys.KeyLayout.offset`, parsed by
:func:`online_state.offsets.parse_stored`) holds the last offset whose effects committed. It is written in the
same ``MULTI`` as the effects, so records at or below it are already applied (a re-delivery after a crash or a
rebalance) and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from online_state.offsets import NOTHING_APPLIED

R = TypeVar("R")


def fresh_records(records: Sequence[R], stored: int) -> Sequence[R]:
    """The records after ``stored`` (records are in offset order, as Kafka returns a partition's)."""
    if not records or records[0].offset > stored:  # type: ignore[attr-defined]
        return records
    lo, hi = 0, len(records)
    while lo < hi:  # first record with offset > stored
        mid = (lo + hi) // 2
        if records[mid].offset <= stored:  # type: ignore[attr-defined]
            lo = mid + 1
        else:
            hi = mid
    return records[lo:]


def resume_position(stored: int) -> int | None:
    """Where a newly assigned partition's consumption resumes: after the stored offset, or ``None``
    (from the beginning) when nothing was applied: Redis, not Kafka's committed offset, is the
    source of truth, so a flushed Redis rebuilds from the log."""
    return None if stored == NOTHING_APPLIED else stored + 1


def gap(records: Sequence[Any], stored: int) -> int:
    """How many offsets lie between the stored one and the batch's first (0 normally; more when the
    log was truncated by retention, or Redis holds an older offset than the consumer's position)."""
    if not records or stored == NOTHING_APPLIED:
        return 0
    return max(0, records[0].offset - stored - 1)
