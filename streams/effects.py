"""The effect protocol: how one kind of online state (features, trending, sessions, ...) follows a batch.

An effect sees one partition batch at a time, as a :class:`Batch`. ``read`` queues the Redis reads it
needs and returns a :class:`Reads` (what it queued and what it computed on the way); ``write`` queues its
writes from the events and those replies, inside the batch's ``MULTI``. :mod:`streams.batch_protocol` runs
every effect of the explicit list (:mod:`streams.effects_registry`) that way and commits all the writes with
the partition's offset, so a redelivered batch is skipped and no record is applied twice. An interaction batch
reaches the effects already de-duplicated by ``event_id`` (:mod:`streams.dedupe`): a retried event is not in
``Batch.events``, so effects need no idempotence of their own.

What an effect must keep (``tests/unit/test_effect_contract.py`` checks it on every effect of the list):
it writes only in ``write``, and those writes are a deterministic function of (the events, its replies);
per-user state only for the batch's users (the interactions topic is keyed by user id, so one worker owns
them); state shared across partitions (items, trending) changes through commutative increments only.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from foundation.settings import Settings
from online_state.keys import DEFAULT_KEYS, KeyLayout
from streams.catalogue import LiveCatalogue

E = TypeVar("E")  # the batch's event type: interaction or catalogue events
S = TypeVar("S")  # what an effect's read computes for its write


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """Where a batch came from: one partition of one topic, offsets first..last (inclusive)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int


@dataclass(frozen=True, slots=True)
class Batch(Generic[E]):
    """One partition batch as every effect sees it: created per batch, handed to ``read`` and ``write``."""

    info: BatchInfo
    events: Sequence[E]  # the valid events, in offset order (invalid records became dead letters)


@dataclass(slots=True)
class Reads(Generic[S]):
    """What one effect's ``read`` leaves for its ``write`` in one batch.

    ``queued``: the commands it queued on the read pipeline; the protocol puts their replies, in order, in
    ``replies`` before calling ``write``. ``state``: whatever ``read`` computed that ``write`` needs again.
    """

    queued: int = 0
    state: S | None = None
    replies: list[Any] = field(default_factory=list)


class Effect(Generic[E]):
    """Base of every effect (see the module docstring); subclasses set ``name`` and implement ``write``."""

    name: str

    def read(self, pipe: Any, batch: Batch[E]) -> Reads[Any]:
        """Queue the reads this effect needs on ``pipe`` (a redis-py pipeline used as a recorder)."""
        return Reads()

    def write(self, pipe: Any, batch: Batch[E], reads: Reads[Any]) -> Awaitable[None] | None:
        """Queue this effect's writes on ``pipe`` (inside the batch's ``MULTI``). May return an awaitable
        (e.g. a send to Kafka), awaited before the ``EXEC``."""
        raise NotImplementedError

    def committed(self, batch: Batch[E], reads: Reads[Any], replies: list[Any]) -> None:
        """After the ``EXEC``, with the transaction's replies to this effect's writes."""

    def failed(self, batch: Batch[E], reads: Reads[Any]) -> None:
        """The transaction did not commit (fenced or failed): nothing this effect queued was written."""

    async def idle(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for what this effect sends after its commits (before the worker stops)."""


@dataclass
class EffectContext:
    """What effect factories may use to build their effect."""

    settings: Settings
    redis: Any
    bundle: Any | None = None
    keys: KeyLayout = DEFAULT_KEYS  # every Redis key the effect touches
    catalog: LiveCatalogue | None = None  # the worker's live catalogue (grows as titles arrive: read, never replace)
    producer: Any = None  # the worker's started idempotent producer (for topics other than Redis)
    # The Redis Functions of online_state.redis_functions are loaded: effects may queue their writes as one
    # FCALL per batch instead of one command per key (what the worker's throughput needs).
    bulk: bool = False


def hand_replies(reads: Sequence[Reads[Any]], replies: Sequence[Any]) -> None:
    """Give each effect's :class:`Reads` its share of the read round trip's ``replies`` (queued in order)."""
    pos = 0
    for r in reads:
        r.replies = list(replies[pos:pos + r.queued])
        pos += r.queued


async def queue_effect_writes(pipe: Any, effects: Sequence[Effect[Any]], batch: Batch[Any],
                              reads: Sequence[Reads[Any]]) -> list[tuple[int, int]]:
    """Every effect's writes on ``pipe`` (a recorder), in order, awaiting what a ``write`` returns; per effect, the
    span of ``pipe.command_stack`` it queued (where its replies will be)."""
    spans: list[tuple[int, int]] = []
    for effect, r in zip(effects, reads, strict=True):
        first = len(pipe.command_stack)
        result = effect.write(pipe, batch, r)
        if inspect.isawaitable(result):
            await result
        spans.append((first, len(pipe.command_stack)))
    return spans


# Builds an effect from the worker's context; ``None`` when it does not apply there (e.g. no bundle).
EffectFactory = Callable[[EffectContext], "Effect[Any] | None"]
