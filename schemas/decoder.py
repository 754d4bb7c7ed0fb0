"""The validating decoder: bytes in, a typed event or a precise (field, reason) error out.

msgspec validates while it parses, in C, and names the failing field as a JSON path
(``$.context.local_hour``); we keep its message as the reason. Per-topic decoders refuse events
that belong on another topic, so a catalog event published to ``interactions`` is a dead letter
with ``field="$.type"`` rather than a silently misrouted record.

Two checks msgspec does not make cheaply run here, on the raw bytes, before or after decoding:

* nesting depth: a document nested deeper than :data:`MAX_DEPTH` levels is refused before it is parsed (msgspec
  recurses, and ~1,000 levels raise ``RecursionError``); a byte scan that skips strings, and costs two ``count``
  calls for the usual record that holds fewer brackets than the limit;
* ids (``schemas.events.ID_FORBIDDEN``): control characters can only reach a JSON string escaped (a backslash), as
  DEL or as non-ASCII bytes, so only records with one of those have their ids checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import msgspec

from schemas.events import ID_FORBIDDEN, CatalogEvent, Event, InteractionEvent

T = TypeVar("T")

MAX_DEPTH: Final = 32  # nesting levels of arrays and objects in one document (a batch array counts as one)
TOO_DEEP: Final = f"nested deeper than {MAX_DEPTH} levels"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BAD_ID = re.compile(f"[{ID_FORBIDDEN}]")
_ID_FIELDS = ("event_id", "user_id", "item_id", "request_id")
_BAD_ID_REASON: Final = "ids must not contain control characters (NUL, tab, newlines) or line separators"

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


def too_deep(raw: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays/objects deeper than ``limit`` levels (brackets inside strings do not
    count). Exact for valid JSON; for broken JSON it may answer either way, and the decoder then refuses it."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b'"' in data:
        data = _STRING.sub(b"", data)
    brackets = data.translate(_BRACKETS, _NOT_BRACKETS)
    # Each pass removes the innermost pairs; after `limit` passes a pair is left only if it was deeper. Brackets
    # that are never closed (a truncated document) count too: `limit` + 1 of them in a row are too deep to parse.
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    return b"[]" in brackets or b"[" * (limit + 1) in brackets


def _check_ids(event: Any) -> None:
    """Refuse ids with control characters (see ``schemas.events.Id``); raises :class:`EventError` naming the id."""
    for name in _ID_FIELDS:
        value = getattr(event, name, None)
        if value is not None and _BAD_ID.search(value):
            raise EventError(f"$.{name}", _BAD_ID_REASON)
    for index, value in enumerate(getattr(event, "item_ids", None) or ()):
        if _BAD_ID.search(value):
            raise EventError(f"$.item_ids[{index}]", _BAD_ID_REASON)
    context = getattr(event, "context", None)
    if context is not None and context.session_id is not None and _BAD_ID.search(context.session_id):
        raise EventError("$.context.session_id", _BAD_ID_REASON)
    for index, tag in enumerate(getattr(event, "experiments", None) or ()):  # an exposure's experiment tags
        for name in ("name", "variant"):
            if _BAD_ID.search(getattr(tag, name)):
                raise EventError(f"$.experiments[{index}].{name}", _BAD_ID_REASON)
        for position, team in enumerate(tag.teams or ()):
            if _BAD_ID.search(team):
                raise EventError(f"$.experiments[{index}].teams[{position}]", _BAD_ID_REASON)


def _may_hide_control_characters(raw: bytes | str) -> bool:
    """False when no id can hold one: JSON refuses raw C0 characters, so they come escaped; DEL and the rest raw."""
    if isinstance(raw, str):
        return not raw.isascii() or "\\" in raw or "\x7f" in raw
    return not raw.isascii() or b"\\" in raw or b"\x7f" in raw


class EventDecoder(Generic[T]):
    """Decodes JSON bytes into one of the event types of a union, raising :class:`EventError`."""

    __slots__ = ("_decoder",)

    def __init__(self, union: Any) -> None:
        self._decoder = msgspec.json.Decoder(union)

    def decode(self, raw: bytes | str) -> T:
        if too_deep(raw):
            raise EventError("$", TOO_DEEP)
        try:
            event = self._decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise _error_from(exc) from None
        except RecursionError:  # too_deep() should have caught it; never let it escape as a crash
            raise EventError("$", TOO_DEEP) from None
        if _may_hide_control_characters(raw):
            _check_ids(event)
        return event

    def decode_many(self, raws: Iterable[bytes]) -> tuple[list[T], list[tuple[int, EventError]]]:
        """Decode a batch; returns the valid events and (index, error) for the rest (a too deep record too)."""
        events: list[T] = []
        errors: list[tuple[int, EventError]] = []
        decode = self._decoder.decode
        for index, raw in enumerate(raws):
            # The checks of decode(), inlined: this loop is the worker's hot path.
            try:
                if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(raw):
                    raise EventError("$", TOO_DEEP)
                try:
                    event = decode(raw)
                except RecursionError:
                    raise EventError("$", TOO_DEEP) from None
                if not raw.isascii() or b"\\" in raw or b"\x7f" in raw:
                    _check_ids(event)
                events.append(event)
            except msgspec.MsgspecError as exc:
                errors.append((index, _error_from(exc)))
            except EventError as exc:
                errors.append((index, exc))
        return events, errors


event_decoder: EventDecoder[Event] = EventDecoder(Event)
interaction_decoder: EventDecoder[InteractionEvent] = EventDecoder(InteractionEvent)
catalog_decoder: EventDecoder[CatalogEvent] = EventDecoder(CatalogEvent)


def decode_event(raw: bytes | str) -> Event:
    """Decode any event type; raises :class:`EventError` with the field and the reason."""
    return event_decoder.decode(raw)
