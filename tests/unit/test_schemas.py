"""The event contracts: decoding, precise errors, per-topic routing, and the generated JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import decode_event, encode, partition_key
from schemas.decoder import EventError, catalog_decoder, interaction_decoder
from schemas.events import EVENT_TYPES, Impression, ItemUpsert, Play, Rating
from schemas.json_schema import GENERATED_DIR, expected_files

BASE = {"event_id": "e-1", "ts": 1_767_225_600_000, "schema_version": 1}
CTX = {"device": "tv", "country": "NL", "local_hour": 21, "session_id": "s-9"}

VALID: dict[str, dict[str, Any]] = {
    "play": {"user_id": "u1", "item_id": "i1", "context": CTX},
    "progress": {"user_id": "u1", "item_id": "i1", "watched_seconds": 600.0, "duration_seconds": 5400.0},
    "complete": {"user_id": "u1", "item_id": "i1", "watched_seconds": 5300.0},
    "rating": {"user_id": "u1", "item_id": "i1", "value": 4.5},
    "click": {"user_id": "u1", "item_id": "i1", "request_id": "r-1", "position": 3},
    "skip": {"user_id": "u1", "item_id": "i1", "watched_seconds": 12.0},
    "add_to_list": {"user_id": "u1", "item_id": "i1"},
    "impression": {"user_id": "u1", "item_ids": ["i1", "i2", "i3"], "request_id": "r-1", "context": CTX},
    "user_upsert": {"user_id": "u1", "country": "NL", "maturity_limit": "PG-13", "age": 34},
    "item_upsert": {
        "item_id": "i1", "title": "Heat (1995)", "genres": ["Action", "Crime"], "tags": ["heist"],
        "cast": ["Al Pacino"], "release_ts": 817_776_000_000, "year": 1995, "maturity_rating": "R",
        "is_original": True, "available": False,
    },
    "item_remove": {"item_id": "i1"},
}


def doc(kind: str, **changes: Any) -> dict[str, Any]:
    body = {"type": kind, **BASE, **VALID[kind], **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def test_every_event_type_has_a_valid_example() -> None:
    assert set(VALID) == set(EVENT_TYPES)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_events_decode_to_their_type_and_round_trip(kind: str) -> None:
    raw = orjson.dumps(doc(kind))
    event = decode_event(raw)
    assert type(event) is EVENT_TYPES[kind]
    assert event.event_id == "e-1" and event.ts == BASE["ts"]
    assert decode_event(encode(event)) == event
    # The canonical encoding keeps every field the producer sent.
    assert orjson.loads(encode(event)) == doc(kind)


@pytest.mark.parametrize(
    ("raw", "field", "reason_part"),
    [
        (b"not json", "$", "malformed"),
        (b"[1, 2]", "$", "Expected `object`"),
        (orjson.dumps({**BASE, "user_id": "u"}), "$.type", "missing required field"),
        (orjson.dumps(doc("play", type="teleport")), "$.type", "Invalid value 'teleport'"),
        (orjson.dumps(doc("play", user_id=_DROP)), "$.user_id", "missing required field"),
        (orjson.dumps(doc("play", ts="yesterday")), "$.ts", "Expected `int`, got `str`"),
        (orjson.dumps(doc("play", ts=-1)), "$.ts", ">= 0"),
        (orjson.dumps(doc("play", ts=1_767_225_600_000_000)), "$.ts", "<= 4102444800000"),
        (orjson.dumps(doc("play", schema_version=2)), "$.schema_version", "Invalid enum value 2"),
        (orjson.dumps(doc("play", user_id="")), "$.user_id", "length >= 1"),
        (orjson.dumps(doc("play", user_id="u" * 129)), "$.user_id", "length <= 128"),
        (orjson.dumps(doc("play", color="red")), "$.color", "unknown field"),
        (orjson.dumps(doc("play", context={**CTX, "local_hour": 24})), "$.context.local_hour", "<= 23"),
        (orjson.dumps(doc("play", context={**CTX, "device": "fridge"})), "$.context.device", "Invalid enum"),
        (orjson.dumps(doc("play", context={**CTX, "country": "nl"})), "$.context.country", "matching regex"),
        (orjson.dumps(doc("rating", value=7)), "$.value", "<= 5.0"),
        (orjson.dumps(doc("progress", watched_seconds=-3)), "$.watched_seconds", ">= 0.0"),
        (orjson.dumps(doc("impression", item_ids=[])), "$.item_ids", "length >= 1"),
        (orjson.dumps(doc("impression", item_ids=["a", 5])), "$.item_ids[1]", "Expected `str`"),
        (orjson.dumps(doc("impression", request_id=_DROP)), "$.request_id", "missing required field"),
        (orjson.dumps(doc("item_upsert", maturity_rating="X")), "$.maturity_rating", "Invalid enum"),
        (orjson.dumps(doc("item_upsert", genres="Drama")), "$.genres", "Expected `array`"),
        (orjson.dumps(doc("item_upsert", title=_DROP)), "$.title", "missing required field"),
    ],
)
def test_invalid_events_name_the_field_and_the_reason(raw: bytes, field: str, reason_part: str) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert caught.value.field == field
    assert reason_part in caught.value.reason
    assert caught.value.as_dict() == {"field": field, "reason": caught.value.reason}


def test_topic_decoders_refuse_events_of_the_other_topic() -> None:
    item = orjson.dumps(doc("item_upsert"))
    play = orjson.dumps(doc("play"))
    assert isinstance(catalog_decoder.decode(item), ItemUpsert)
    assert isinstance(interaction_decoder.decode(play), Play)
    with pytest.raises(EventError) as caught:
        interaction_decoder.decode(item)
    assert caught.value.field == "$.type"
    with pytest.raises(EventError):
        catalog_decoder.decode(play)


def test_decode_many_keeps_valid_events_and_indexes_errors() -> None:
    raws = [orjson.dumps(doc("play")), b"{", orjson.dumps(doc("rating", value=0)), orjson.dumps(doc("skip"))]
    events, errors = interaction_decoder.decode_many(raws)
    assert [type(e).__name__ for e in events] == ["Play", "Skip"]
    assert [(i, e.field) for i, e in errors] == [(1, "$"), (2, "$.value")]


def test_partition_keys_follow_the_topic_contract() -> None:
    assert partition_key(decode_event(orjson.dumps(doc("rating")))) == "u1"
    assert partition_key(decode_event(orjson.dumps(doc("impression")))) == "u1"
    assert partition_key(decode_event(orjson.dumps(doc("item_remove")))) == "i1"


# --- JSON Schema ------------------------------------------------------------------------------


def test_committed_json_schema_matches_the_structs() -> None:
    for name, text in expected_files().items():
        path = GENERATED_DIR / name
        assert path.exists(), f"{path} missing: run `python -m schemas.json_schema`"
        assert path.read_text() == text, f"{path} drifted from schemas/events.py: run `python -m schemas.json_schema`"


@pytest.fixture(scope="module")
def event_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((GENERATED_DIR / "event.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "device": st.sampled_from(["tv", "mobile", "tablet", "web", "console", "other"]),
        "country": st.from_regex(r"\A[A-Z]{2}\Z"),
        "local_hour": st.integers(0, 23),
        "session_id": ids,
    },
)
plays = st.fixed_dictionaries(
    {"type": st.just("play"), "event_id": ids, "ts": st.integers(0, 4_102_444_800_000),
     "schema_version": st.just(1), "user_id": ids, "item_id": ids},
    optional={"context": contexts},
)
ratings = st.fixed_dictionaries(
    {"type": st.just("rating"), "event_id": ids, "ts": st.integers(0, 4_102_444_800_000),
     "schema_version": st.just(1), "user_id": ids, "item_id": ids,
     "value": st.floats(0.5, 5.0, allow_nan=False)},
)
impressions = st.fixed_dictionaries(
    {"type": st.just("impression"), "event_id": ids, "ts": st.integers(0, 4_102_444_800_000),
     "schema_version": st.just(1), "user_id": ids, "request_id": ids,
     "item_ids": st.lists(ids, min_size=1, max_size=5)},
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(plays, ratings, impressions))
def test_schema_and_decoder_accept_the_same_valid_events(
    event_validator: jsonschema.protocols.Validator, body: dict[str, Any]
) -> None:
    event_validator.validate(body)
    event = decode_event(orjson.dumps(body))
    assert isinstance(event, Play | Rating | Impression)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(VALID)),
    field=st.sampled_from(["event_id", "ts", "schema_version", "user_id", "item_id", "title", "value"]),
    bad=st.one_of(st.just(""), st.just(-5), st.just([]), st.just({"x": 1}), st.just(True)),
)
def test_schema_and_decoder_refuse_the_same_broken_events(
    event_validator: jsonschema.protocols.Validator, kind: str, field: str, bad: Any
) -> None:
    body = doc(kind)
    if field not in body:
        return
    body[field] = bad
    schema_ok = event_validator.is_valid(body)
    try:
        decode_event(orjson.dumps(body))
        decoder_ok = True
    except EventError:
        decoder_ok = False
    assert schema_ok == decoder_ok, (kind, field, bad)
