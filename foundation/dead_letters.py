"""Dead letters: a refused record, unchanged, with why and where from in its headers.

Contract (:mod:`schemas.topics`): the value is the original bytes, the key the source record's key,
the headers ``x-error-field``, ``x-error-reason``, ``x-source-topic``, ``x-source-partition``,
``x-source-offset``.

Delivery is **at least once**: the worker produces a batch's dead letters with the idempotent
producer and waits for their acknowledgements *before* the Redis ``EXEC`` that advances the
partition's offset. A crash between the two re-processes the batch after the restart and produces
its dead letters again (duplicates, identified by their source topic/partition/offset headers);
no refused record is ever lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from schemas.decoder import EventDecoder, EventError
from schemas.topics import dead_letter_headers

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record for the dead-letters topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(record: Any, error: EventError) -> DeadLetter:
    """The dead letter of a consumed record (anything with topic/partition/offset/key/value)."""
    return DeadLetter(
        key=record.key,
        value=record.value,
        headers=dead_letter_headers(error.field, error.reason, record.topic, record.partition, record.offset),
    )


@dataclass(slots=True)
class Decoded(Generic[T]):
    """A batch split into valid events (in record order) and dead letters."""

    events: list[T]
    letters: list[DeadLetter]


def decode_records(records: Sequence[Any], decoder: EventDecoder[T]) -> Decoded[T]:
    """Decode every record's value; an empty value (a tombstone) is invalid too."""
    values: list[bytes] = []
    positions: list[int] = []
    bad: list[tuple[int, DeadLetter]] = []
    for pos, record in enumerate(records):
        if record.value is None:
            bad.append((pos, dead_letter(record, EventError("$", "empty record value (tombstone)"))))
        else:
            values.append(record.value)
            positions.append(pos)
    events, errors = decoder.decode_many(values)
    bad.extend((positions[index], dead_letter(records[positions[index]], error)) for index, error in errors)
    bad.sort(key=lambda pair: pair[0])  # in record order
    return Decoded(events, [letter for _, letter in bad])


async def send_dead_letters(producer: Any, topic: str, letters: Iterable[DeadLetter]) -> int:
    """Produce the letters and wait until the broker acknowledged all of them; returns how many."""
    futures = [
        await producer.send(topic, value=letter.value, key=letter.key, headers=letter.headers) for letter in letters
    ]
    if futures:
        await asyncio.gather(*futures)
    return len(futures)
