"""The validating decoder: bytes in, a typed event or a precise (field, reason) error out.

msgspec validates while it parses, in C, and names the failing field as a JSON path
(``$.context.local_hour``); we keep its message as the reason. Per-topic decoders refuse events
that belong on another topic, so a catalog event published to ``interactions`` is a dead letter
with ``field="$.type"`` rather than a silently misrouted record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from schemas.events import CatalogEvent, Event, InteractionEvent

T = TypeVar("T")

# "Expected `int`, got `str` - at `$.ts`" / "Object missing required field `user_id` - at `$.context`"
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


@dataclass(frozen=True, slots=True)
class EventError(Exception):
    """Why one record is invalid: the JSON path of the offending field and a human reason."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


def _error_from(exc: msgspec.MsgspecError) -> EventError:
    message = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        # Not JSON at all: the whole document is at fault.
        return EventError("$", message)
    match = _AT.match(message)
    reason = match["reason"] if match else message
    path = (match["path"] if match else None) or "$"
    named = _NAMED.search(reason)
    if named:
        # Point at the missing or unknown field itself, not at the object around it.
        path = f"{path}.{named['name']}"
    return EventError(path, reason)


class EventDecoder(Generic[T]):
    """Decodes JSON bytes into one of the event types of a union, raising :class:`EventError`."""

    __slots__ = ("_decoder",)

    def __init__(self, union: Any) -> None:
        self._decoder = msgspec.json.Decoder(union)

    def decode(self, raw: bytes | str) -> T:
        try:
            return self._decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise _error_from(exc) from None

    def decode_many(self, raws: Iterable[bytes]) -> tuple[list[T], list[tuple[int, EventError]]]:
        """Decode a batch; returns the valid events and (index, error) for the rest."""
        events: list[T] = []
        errors: list[tuple[int, EventError]] = []
        decode = self._decoder.decode
        for index, raw in enumerate(raws):
            try:
                events.append(decode(raw))
            except msgspec.MsgspecError as exc:
                errors.append((index, _error_from(exc)))
        return events, errors


event_decoder: EventDecoder[Event] = EventDecoder(Event)
interaction_decoder: EventDecoder[InteractionEvent] = EventDecoder(InteractionEvent)
catalog_decoder: EventDecoder[CatalogEvent] = EventDecoder(CatalogEvent)


def decode_event(raw: bytes | str) -> Event:
    """Decode any event type; raises :class:`EventError` with the field and the reason."""
    return event_decoder.decode(raw)
