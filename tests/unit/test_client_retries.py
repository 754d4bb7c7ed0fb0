"""The Python client's pure logic over a scripted transport: retries keep each event's id, honour Retry-After,
stop at the limit; API errors name the field; bad events never leave the process."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from schemas.decoder import EventError
from streamrec.client import ApiError, AsyncClient, Client

PLAY = {"type": "play", "ts": 1_780_000_000_000, "schema_version": 1, "user_id": "u1", "item_id": "i1"}


def scripted(answers: list[tuple[int, dict[str, str], Any]], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, headers, body = answers[min(len(seen), len(answers)) - 1]
        if isinstance(body, Exception):
            raise body
        return httpx.Response(status, headers=headers, content=orjson.dumps(body))
    return httpx.MockTransport(handle)


def test_a_retried_batch_resends_the_same_event_ids() -> None:
    seen: list[httpx.Request] = []
    unknown = {"error": {"field": "kafka", "message": "may or may not"}, "request_id": "r1"}
    answers = [(503, {"Retry-After": "0"}, unknown), (503, {}, unknown),
               (202, {}, {"accepted": 2, "refused": [], "request_id": "r3"})]
    with Client("http://api", api_key="k", backoff_s=0.0, transport=scripted(answers, seen)) as api:
        result = api.send_events([PLAY, {**PLAY, "event_id": "mine"}])
    assert result.accepted == 2 and len(seen) == 3
    bodies = [orjson.loads(r.content) for r in seen]
    assert all(b == bodies[0] for b in bodies), "every try sends the same events, ids included"
    assert [e["event_id"] for e in bodies[0]] == result.event_ids and result.event_ids[1] == "mine"
    assert all(r.headers["X-API-Key"] == "k" for r in seen)


def test_retries_stop_at_the_limit_and_errors_name_the_field() -> None:
    seen: list[httpx.Request] = []
    busy = (429, {"Retry-After": "0"}, {"error": {"field": "rate", "message": "slow down"}, "request_id": "r"})
    with Client("http://api", retries=2, backoff_s=0.0, transport=scripted([busy], seen)) as api, \
            pytest.raises(ApiError) as caught:
        api.recommendations("u1")
    assert len(seen) == 3 and caught.value.status == 429 and caught.value.field == "rate"
    bad = (400, {}, {"error": {"field": "k", "message": "k must be 1..200"}, "request_id": "r9"})
    seen.clear()
    with Client("http://api", backoff_s=0.0, transport=scripted([bad], seen)) as api, \
            pytest.raises(ApiError) as caught:
        api.recommendations("u1", k=500)
    assert len(seen) == 1, "a 400 is final" and caught.value.field == "k" and caught.value.request_id == "r9"


async def test_async_client_retries_a_dropped_connection_then_reads_typed_results() -> None:
    seen: list[httpx.Request] = []
    answer = {"user_id": "u1", "request_id": "r", "model_version": "v", "degraded": False, "timings_ms": {"total": 1},
              "items": [{"item_id": "i2", "score": 0.5, "sources": ["collaborative"], "reason": "Because"}]}
    answers = [(0, {}, httpx.ConnectError("dropped")), (200, {}, answer)]
    async with AsyncClient("http://api", backoff_s=0.0, transport=scripted(answers, seen)) as api:
        got = await api.recommendations("u1", k=5, country="DE")
    assert len(seen) == 2 and seen[-1].url.params["k"] == "5" and seen[-1].url.params["country"] == "DE"
    assert got.items[0].item_id == "i2" and got.items[0].sources == ["collaborative"] and got.model_version == "v"


def test_an_invalid_event_is_refused_before_any_request() -> None:
    seen: list[httpx.Request] = []
    with Client("http://api", transport=scripted([(202, {}, {})], seen)) as api, pytest.raises(EventError) as caught:
        api.send_events([{**PLAY, "ts": "yesterday"}])
    assert not seen and "ts" in str(caught.value)
