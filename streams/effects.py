"""How the worker applies one batch of one partition to Redis, exactly once.

The worker (``streams/app.py``) takes a batch of records of ONE Kafka partition, decodes them
(invalid ones become dead letters), and then, for the valid events:

1. calls every effect's ``read`` (each may queue reads on one shared pipeline; the worker runs
   that pipeline in ONE round trip) and hands each effect its own slice of the replies;
2. applies the ranking features with ``RedisFeatureStore.apply(batch, on_commit=...)`` (its own
   read of the batch's users, then one ``MULTI``), and inside that same ``MULTI`` (the
   ``on_commit`` hook) lets every other effect queue its writes with ``write`` and adds
   ``SET sr:offset:{topic}:{partition} <last offset>``; ``EXEC`` commits all of it at once.

Because the writes and the offset marker commit together, a batch re-delivered after a crash is
recognised (its offsets are <= the stored one) and skipped: nothing lost, nothing applied twice.
Effects therefore must not write to Redis outside ``write`` and must be deterministic functions of
(the events, what ``read`` returned). Per-user state is owned by the partition's worker (the
interactions topic is keyed by user id); state shared across partitions (items, trending) must be
updated with commutative increments (``HINCRBY``, ``ZINCRBY``, ``HINCRBYFLOAT`` on forward-decayed
scores) so that workers of different partitions never overwrite each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.events import InteractionEvent


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """Where a batch came from: one partition of one topic, offsets first..last (inclusive)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int


class Effect(Protocol):
    """One kind of online state maintained from interaction events (features, trending, sessions, ...)."""

    name: str

    def read(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo) -> int:
        """Queue the reads this effect needs on ``pipe`` (a non-transactional redis.asyncio pipeline);
        return how many commands were queued (their replies come back, in order, to ``write``)."""
        ...

    def write(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo, replies: list[Any]) -> None:
        """Queue this effect's writes on ``pipe`` (inside MULTI) from the events and its read replies."""
        ...


def offset_key(prefix: str, topic: str, partition: int) -> str:
    """Redis key of the last applied offset of a partition (a plain string holding an integer)."""
    return f"{prefix}:offset:{topic}:{partition}"
