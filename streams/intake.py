"""The records of one partition batch into the effects' :class:`~streams.effects.Batch`: each is decoded with
its topic's decoder, and the invalid ones go to the dead-letter topic, acknowledged before the batch commits
(so every record ends applied or dead-lettered, at least once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from foundation.dead_letters import decode_records, send_dead_letters
from schemas.decoder import EventDecoder
from streams import metrics
from streams.effects import Batch, BatchInfo

E = TypeVar("E")


class Intake:
    """Decodes partition batches and sends their dead letters through the worker's producer."""

    def __init__(self, producer: Any, dead_letter_topic: str) -> None:
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.rejected = 0  # records dead-lettered by this intake

    async def batch(self, tp: Any, decoder: EventDecoder[E], records: Sequence[Any]) -> Batch[E]:
        """The valid events of ``records`` (one partition's, in offset order) as a batch."""
        decoded = decode_records(records, decoder)
        if decoded.letters:
            await send_dead_letters(self.producer, self.dead_letter_topic, decoded.letters)
            metrics.DEAD_LETTERS.labels(tp.topic).inc(len(decoded.letters))
            metrics.EVENTS.labels(tp.topic, "rejected").inc(len(decoded.letters))
            self.rejected += len(decoded.letters)
        return Batch(BatchInfo(tp.topic, tp.partition, records[0].offset, records[-1].offset), decoded.events)
