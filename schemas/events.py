"""Versioned event contracts: what producers publish to Kafka and POST to ``/v1/events``.

Every event is one JSON object with a ``type`` tag, an ``event_id``, an event time ``ts`` in
milliseconds since the Unix epoch (UTC) and a ``schema_version``. Interaction and profile events
carry a ``user_id`` (the Kafka key of the ``interactions`` topic); catalog events carry an
``item_id`` (the key of the compacted ``catalog`` topic).

The structs are msgspec ``Struct``s: the decoder in :mod:`schemas.decoder` validates while it
parses (types, ranges, patterns, unknown fields); ``benchmarks/bench_decode.py`` compares it with
the alternatives. JSON Schema files for producers in other languages are generated from these
classes (``python -m schemas.json_schema``).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION: Final = 1

# Ids are opaque strings; numeric ids (MovieLens) are sent as strings. Character set: any Unicode character
# except control characters (U+0000-U+001F, U+007F-U+009F: NUL, tab, newlines, ...) and the line and paragraph
# separators U+2028/U+2029. The pattern is published in the JSON Schema, but msgspec does not run it: a regex per id
# made decoding 4.6x slower (benchmarks/bench_decode.py). JSON can only carry such characters escaped (``\u0000``,
# ``\n``) or as non-ASCII bytes, so :mod:`schemas.decoder` checks the ids of exactly those records (ID_FORBIDDEN).
ID_MAX_LENGTH: Final = 128
ID_FORBIDDEN: Final = r"\x00-\x1f\x7f-\x9f\u2028\u2029"  # a regex character-class body
Id = Annotated[str, Meta(
    min_length=1, max_length=ID_MAX_LENGTH,
    description="Opaque id, 1 to 128 characters; no control characters (NUL, tab, newlines) or line separators.",
    extra_json_schema={"pattern": f"^[^{ID_FORBIDDEN}]*$"},
)]
# Integers are JSON integer literals: `3`, never `3.0` or `3e0` (the decoder refuses those although JSON Schema's
# "integer" admits them); the descriptions say so.
_INT_NOTE = " A JSON integer literal (no fraction or exponent)."
# Milliseconds since the Unix epoch, UTC; bounded so that a seconds/microseconds mix-up fails loudly.
TimestampMs = Annotated[
    int,
    Meta(ge=0, le=4_102_444_800_000, description="Milliseconds since the Unix epoch (UTC), before 2100." + _INT_NOTE),
]
# Release dates reach back before 1970 (a 1920s film has a negative release_ts).
ReleaseTs = Annotated[
    int,
    Meta(ge=-5_364_662_400_000, le=4_102_444_800_000,
         description="Release time, epoch ms, years 1800 to 2100." + _INT_NOTE),
]
Seconds = Annotated[float, Meta(ge=0.0, le=86_400.0 * 7, description="A duration in seconds.")]
Country = Annotated[str, Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 country code.")]
LocalHour = Annotated[int, Meta(ge=0, le=23, description="Hour of day in the user's time zone." + _INT_NOTE)]
Label = Annotated[str, Meta(min_length=1, max_length=200)]
Device = Literal["tv", "mobile", "tablet", "web", "console", "other"]
# Content maturity, least to most restricted; "NR" (not rated) sorts last so that a
# profile limit below "NR" hides unrated titles.
MaturityRating = Literal["G", "PG", "PG-13", "R", "NC-17", "NR"]
MATURITY_ORDER: Final[tuple[str, ...]] = ("G", "PG", "PG-13", "R", "NC-17", "NR")

IMPRESSION_MAX: Final = 1000  # items in one impression
DEVICES: Final[tuple[str, ...]] = ("tv", "mobile", "tablet", "web", "console", "other")


class Context(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Where and when an interaction happened; every field is optional."""

    device: Device | None = None
    country: Country | None = None
    local_hour: LocalHour | None = None
    session_id: Id | None = None


class _Base(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="type"):
    event_id: Id
    ts: TimestampMs
    schema_version: Literal[1]


class _Interaction(_Base, kw_only=True):
    user_id: Id
    item_id: Id
    context: Context | None = None
    # The recommendation answer this interaction follows (its ``request_id``), when the client knows it: outcomes
    # are attributed to the experiments of that exposure (streams/experiments.py); without it, by user, title
    # and time window.
    request_id: Id | None = None


class Play(_Interaction, tag="play"):
    """The user started playing a title."""


class Progress(_Interaction, tag="progress"):
    """A heartbeat during playback with the seconds watched so far."""

    watched_seconds: Seconds
    duration_seconds: Seconds | None = None


class Complete(_Interaction, tag="complete"):
    """The user finished a title (or watched past the credits)."""

    watched_seconds: Seconds
    duration_seconds: Seconds | None = None


class Rating(_Interaction, tag="rating"):
    """An explicit rating on the 0.5 to 5 star scale."""

    value: Annotated[float, Meta(ge=0.5, le=5.0)]


class Click(_Interaction, tag="click"):
    """A click on a title, optionally attributed to a recommendation request and slot."""

    # The slot in the impression it came from: impressions hold at most IMPRESSION_MAX items.
    position: Annotated[int, Meta(ge=0, le=IMPRESSION_MAX - 1,
                                  description="0-based slot in the list shown." + _INT_NOTE)] | None = None


class Skip(_Interaction, tag="skip"):
    """The user abandoned a title early (a negative signal)."""

    watched_seconds: Seconds | None = None


class AddToList(_Interaction, tag="add_to_list"):
    """The user saved a title to their list."""


EXPERIMENTS_MAX: Final = 32  # experiments one answer can be in (one per layer)


class ExposureTag(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One experiment an answer was part of, and the variant the user is in."""

    name: Id
    variant: Id
    # Interleaving: per position of ``item_ids``, the variant whose ranking contributed the title (team draft).
    teams: Annotated[list[Id], Meta(max_length=IMPRESSION_MAX)] | None = None


class Impression(_Base, kw_only=True, tag="impression"):
    """A list of titles shown to the user for one recommendation request.

    The server publishes one per answer of a user in an experiment (an *exposure*): ``experiments`` says which
    experiments and variants, ``server_ms`` and ``degraded`` feed the per-variant guardrails.
    """

    user_id: Id
    item_ids: Annotated[list[Id], Meta(min_length=1, max_length=IMPRESSION_MAX)]
    request_id: Id
    context: Context | None = None
    experiments: Annotated[list[ExposureTag], Meta(max_length=EXPERIMENTS_MAX)] | None = None
    server_ms: Annotated[float, Meta(ge=0.0, le=3_600_000.0,
                                     description="The server's time to answer, ms.")] | None = None
    degraded: bool = False


class UserUpsert(_Base, kw_only=True, tag="user_upsert"):
    """Profile facts about a user (demographics, maturity limit). Published on ``interactions``."""

    user_id: Id
    country: Country | None = None
    maturity_limit: MaturityRating | None = None
    age: Annotated[int, Meta(ge=0, le=130, description="Years." + _INT_NOTE)] | None = None
    gender: Label | None = None
    occupation: Label | None = None
    zip_code: Label | None = None


class ItemUpsert(_Base, kw_only=True, tag="item_upsert"):
    """A title was added to the catalogue or its metadata changed."""

    item_id: Id
    title: Annotated[str, Meta(min_length=1, max_length=500)]
    genres: Annotated[list[Label], Meta(max_length=50)]
    tags: Annotated[list[Label], Meta(max_length=500)] = []
    cast: Annotated[list[Label], Meta(max_length=200)] = []
    release_ts: ReleaseTs
    year: Annotated[int, Meta(ge=1800, le=2100, description="Release year." + _INT_NOTE)] | None = None
    maturity_rating: MaturityRating = "NR"
    is_original: bool = False
    available: bool = True
    duration_seconds: Seconds | None = None


class ItemRemove(_Base, kw_only=True, tag="item_remove"):
    """A title left the catalogue."""

    item_id: Id


InteractionEvent = Play | Progress | Complete | Rating | Click | Skip | AddToList | Impression | UserUpsert
CatalogEvent = ItemUpsert | ItemRemove
Event = InteractionEvent | CatalogEvent

INTERACTION_TYPES: Final[tuple[type[Struct], ...]] = (
    Play, Progress, Complete, Rating, Click, Skip, AddToList, Impression, UserUpsert,
)
CATALOG_TYPES: Final[tuple[type[Struct], ...]] = (ItemUpsert, ItemRemove)
EVENT_TYPES: Final[dict[str, type[Struct]]] = {
    cls.__struct_config__.tag: cls for cls in (*INTERACTION_TYPES, *CATALOG_TYPES)  # type: ignore[misc]
}


def is_catalog(event: Event) -> bool:
    return isinstance(event, ItemUpsert | ItemRemove)


def partition_key(event: Event) -> str:
    """The Kafka key: user id for interaction and profile events, item id for catalog events."""
    return event.item_id if isinstance(event, ItemUpsert | ItemRemove) else event.user_id


_encoder = msgspec.json.Encoder()


def encode(event: Event) -> bytes:
    """Canonical JSON bytes of an event (defaults omitted, ``type`` first)."""
    return _encoder.encode(event)
