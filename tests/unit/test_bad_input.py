"""Bad input gets a clear 4xx naming the field, never a 5xx, and the OpenAPI document says what the code does
(issue 11, "Hardening": the probe's nesting, integer, empty-parameter, 405 and id findings)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from serving_fakes import FakePublisher, FakeService, no_experiments

from foundation.dead_letters import decode_records
from foundation.settings import Settings
from schemas.decoder import MAX_DEPTH, TOO_DEEP, EventError, decode_event, interaction_decoder, too_deep
from schemas.json_schema import GENERATED_DIR
from serving.app import create_app
from serving.openapi import openapi_document, response_schema

PLAY = {"type": "play", "event_id": "e1", "ts": 1_700_000_000_000, "schema_version": 1, "user_id": "u1",
        "item_id": "i1"}
CLICK = {**PLAY, "type": "click", "request_id": "r1", "position": 3}
ITEM = {"type": "item_upsert", "event_id": "c1", "ts": 1_700_000_000_000, "schema_version": 1, "item_id": "i9",
        "title": "Nine", "genres": ["Drama"], "release_ts": 0}


OPERATOR_KEY = "unit-operator-key"  # the server's static key (every scope), sent by the test client


async def _no_keys() -> dict[str, Any]:  # the shared key table, empty (no Redis in unit tests)
    return {}


def _nested(depth: int) -> bytes:
    """A play event whose unknown field nests `depth` levels in all (the event object is level 1)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return orjson.dumps(PLAY)[:-1] + b',"x":' + inner + b"}"


# --- nesting depth ---------------------------------------------------------------------------------


def test_depth_scan_is_exact_and_ignores_brackets_in_strings() -> None:
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert too_deep(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1))
    assert not too_deep(b'["' + b"[{" * 500 + b'"]')
    assert not too_deep(b'["\\"' + b"[" * 500 + b'"]')  # an escaped quote does not end the string
    assert not too_deep(b"[]" * 10_000 + b"{}" * 10_000)
    assert too_deep(b"[" * 100_000)  # never closed: still too deep to parse
    assert not too_deep(_nested(MAX_DEPTH)) and too_deep(_nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 975, 5_000, 100_000])
def test_too_deep_documents_are_an_event_error_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(_nested(depth))
    assert caught.value.as_dict() == {"field": "$", "reason": TOO_DEEP}
    with pytest.raises(EventError):
        decode_event(b"[" * depth)


def test_a_too_deep_kafka_record_is_a_dead_letter_and_the_rest_is_applied() -> None:
    records = [SimpleNamespace(topic="interactions", partition=0, offset=n, key=b"u1", value=value, headers=[])
               for n, value in enumerate([orjson.dumps(PLAY), _nested(975), b"[" * 2000, orjson.dumps(PLAY)])]
    decoded = decode_records(records, interaction_decoder)
    assert len(decoded.events) == 2
    assert [letter.value for letter in decoded.letters] == [records[1].value, records[2].value]
    for letter in decoded.letters:
        headers = dict(letter.headers)
        assert headers["x-error-field"] == b"$" and headers["x-error-reason"] == TOO_DEEP.encode()


# --- integers and ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "field"),
    [({**CLICK, "position": int("9" * 400)}, "$.position"), ({**CLICK, "position": 1000}, "$.position"),
     ({**CLICK, "position": -1}, "$.position"), ({**PLAY, "ts": int("9" * 400)}, "$.ts")],
)
def test_integers_are_bounded(event: dict[str, Any], field: str) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(json.dumps(event).encode())  # json: orjson cannot write a 400-digit integer
    assert caught.value.field == field


def test_position_up_to_the_impression_size_is_valid() -> None:
    assert decode_event(orjson.dumps({**CLICK, "position": 999})).position == 999  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "a\rb", "\tx", "x\x7f", "x\x85", "x\u2028", "x\u2029"])
@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "request_id", "session_id", "item_ids"])
def test_ids_with_control_characters_are_refused_naming_the_id(bad: str, field: str) -> None:
    if field == "session_id":
        event, path = {**PLAY, "context": {"session_id": bad}}, "$.context.session_id"
    elif field == "item_ids":
        event = {**PLAY, "type": "impression", "request_id": "r1", "item_ids": ["i1", bad]}
        event.pop("item_id")
        path = "$.item_ids[1]"
    else:
        event, path = {**CLICK, field: bad}, f"$.{field}"
    for raw in (json.dumps(event).encode(), json.dumps(event, ensure_ascii=False).encode()):
        with pytest.raises(EventError) as caught:
            decode_event(raw)
        assert caught.value.field == path and "control characters" in caught.value.reason


@pytest.mark.parametrize("good", ["u123", "i45", "1", "193609", "title-00000001", "cold-3", "ml-u-17",
                                  "fresh-0f3a", "ü-ñ", "a b", 'q"uote', "back\\slash", "x" * 128])
def test_existing_kinds_of_ids_stay_valid(good: str) -> None:
    for raw in (json.dumps({**CLICK, "user_id": good}).encode(),
                json.dumps({**CLICK, "user_id": good}, ensure_ascii=False).encode()):
        assert decode_event(raw).user_id == good  # type: ignore[union-attr]


def test_the_empty_session_id_is_refused_naming_it() -> None:
    with pytest.raises(EventError) as caught:
        decode_event(orjson.dumps({**PLAY, "context": {"session_id": ""}}))
    assert caught.value.field == "$.context.session_id"


def test_json_schema_refuses_control_characters_in_ids_like_the_decoder() -> None:
    schema = json.loads((GENERATED_DIR / "event.schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert validator.is_valid({**PLAY, "user_id": "title-00000001"})
    assert not validator.is_valid({**PLAY, "user_id": "u\n1"})
    assert not validator.is_valid({**PLAY, "event_id": "e\x00"})


# --- the OpenAPI document says integer where the decoder wants one ------------------------------------


@pytest.mark.parametrize(
    ("component", "prop"),
    [("Play", "ts"), ("Context", "local_hour"), ("Click", "position"), ("ItemUpsert", "release_ts")],
)
def test_openapi_integers_are_integer_literals_as_the_decoder_demands(component: str, prop: str) -> None:
    schema = openapi_document()["components"]["schemas"][component]["properties"][prop]
    options = schema.get("anyOf", [schema])
    integer = next(option for option in options if option.get("type") == "integer")
    assert not any(option.get("type") == "number" for option in options)
    assert "maximum" in integer and "minimum" in integer
    assert "integer literal" in integer["description"]
    event = {"Play": PLAY, "Context": {**PLAY, "context": {"local_hour": 3}}, "Click": CLICK, "ItemUpsert": ITEM}
    body = event[component]
    target = body["context"] if component == "Context" else body
    bad = {**body, "context": {**target, prop: 3.0}} if component == "Context" else {**body, prop: 3.0}
    with pytest.raises(EventError) as caught:
        decode_event(orjson.dumps(bad))
    assert caught.value.field.endswith(prop) and "got `float`" in caught.value.reason


# --- over HTTP ---------------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async def service_factory(settings: Settings, artifacts: Path | None) -> FakeService:
        return FakeService()

    publisher = FakePublisher()
    app = create_app(Settings(_env_file=None, api_key=OPERATOR_KEY), service_factory=service_factory,
                     publisher_factory=lambda settings: publisher, key_source=_no_keys,
                     experiments_factory=no_experiments)
    test_client = TestClient(TestServer(app), headers={"X-API-Key": OPERATOR_KEY})  # writes need a key
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def _json_4xx(response: Any, template: str, method: str) -> dict[str, Any]:
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    schema = response_schema(template, method, response.status)
    assert schema is not None
    jsonschema.Draft202012Validator(schema).validate(body)
    return body


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 975, 100_000])
async def test_a_deeply_nested_body_is_a_400_naming_the_limit(client: TestClient, depth: int) -> None:
    for body in (_nested(depth), b"[" + _nested(depth) + b"]", b"[" * depth + b"]" * depth, b"[" * depth):
        response = await client.post("/v1/events", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 400
        answer = await _json_4xx(response, "/v1/events", "POST")
        assert answer["error"]["field"] == "body"
        if depth == MAX_DEPTH + 1 and body.startswith(b"["):  # the batch array is one level: refused by index
            assert answer["refused"][0]["index"] == 0 and answer["refused"][0]["field"] == "$"
            if body.startswith(b"[{"):
                assert answer["refused"][0]["reason"] == TOO_DEEP
        else:
            assert answer["error"]["message"] == TOO_DEEP and answer["refused"][0]["reason"] == TOO_DEEP


async def test_a_batch_of_events_at_the_depth_limit_is_accepted(client: TestClient) -> None:
    response = await client.post("/v1/events", data=b"[" + _nested(MAX_DEPTH) + b"]")
    assert response.status == 400  # the unknown field "x" is refused, but by the decoder, not the depth limit
    assert (await response.json())["refused"][0]["field"] == "$.x"
    response = await client.post("/v1/events", data=orjson.dumps([PLAY, {**PLAY, "context": {"device": "tv"}}]))
    assert response.status == 202


@pytest.mark.parametrize(
    ("url", "template", "field"),
    [("/v1/recommendations/u1?k=", "/v1/recommendations/{user_id}", "k"),
     ("/v1/recommendations/u1?hour=", "/v1/recommendations/{user_id}", "hour"),
     ("/v1/recommendations/u1?now=", "/v1/recommendations/{user_id}", "now"),
     ("/v1/recommendations/u1?device=", "/v1/recommendations/{user_id}", "device"),
     ("/v1/recommendations/u1?country=", "/v1/recommendations/{user_id}", "country"),
     ("/v1/recommendations/u1?k=" + "9" * 400, "/v1/recommendations/{user_id}", "k"),
     ("/v1/items/i1/similar?k=", "/v1/items/{item_id}/similar", "k"),
     ("/v1/recommendations/u%001", "/v1/recommendations/{user_id}", "user_id"),
     ("/v1/recommendations/u%0A1", "/v1/recommendations/{user_id}", "user_id"),
     ("/v1/items/i%0D1/similar", "/v1/items/{item_id}/similar", "item_id")],
)
async def test_empty_parameters_and_control_characters_are_400_naming_the_field(
    client: TestClient, url: str, template: str, field: str
) -> None:
    response = await client.get(url)
    assert response.status == 400
    assert (await _json_4xx(response, template, "GET"))["error"]["field"] == field


async def test_parameters_that_are_left_out_still_get_their_defaults(client: TestClient) -> None:
    assert (await client.get("/v1/recommendations/u1")).status == 200
    assert (await client.get("/v1/recommendations/title-00000001?k=5&device=tv&country=nl&hour=3")).status == 200


async def test_a_405_lists_the_allowed_methods(client: TestClient) -> None:
    response = await client.delete("/v1/events")
    assert response.status == 405
    assert "POST" in response.headers["Allow"]
    assert (await response.json())["error"]["field"] == "method"
    response = await client.post("/v1/recommendations/u1", data=b"{}")
    assert response.status == 405 and "GET" in response.headers["Allow"]


def test_the_openapi_ids_carry_the_contract_pattern() -> None:
    parameters = openapi_document()["paths"]["/v1/recommendations/{user_id}"]["get"]["parameters"]
    user_id = next(p for p in parameters if p["name"] == "user_id")
    assert jsonschema.Draft202012Validator(user_id["schema"]).is_valid("cold-3")
    assert not jsonschema.Draft202012Validator(user_id["schema"]).is_valid("u\n1")
