"""The Python client's pure logic over a scripted transport: retries keep each event's id, honour Retry-After,
stop at the limit; API errors name the field; bad events never leave the process."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from schemas.decoder import EventError
from streamrec.client import ApiError, AsyncClient, Client, _Tries

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


def run_tries(tries: _Tries, outcomes: list[httpx.Response | httpx.TransportError]) -> list[float | None]:
    """Drive the shared retry loop as both clients do, with ``outcomes`` as the tries' results; the waits."""
    waits: list[float | None] = []
    for wait in tries:
        waits.append(wait)
        tries.outcome = outcomes[len(waits) - 1]
    return waits


def test_the_shared_retry_policy_backs_off_honours_retry_after_and_stops() -> None:
    busy = httpx.Response(503)
    # Exponential backoff; a numeric Retry-After wins over it, an HTTP date does not; at most `retries` retries.
    dated = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
    outcomes = [busy, httpx.Response(429, headers={"Retry-After": "1.5"}), dated, busy, busy]
    tries = _Tries(retries=3, backoff_s=0.25)
    assert run_tries(tries, outcomes) == [None, 0.25, 1.5, 1.0]
    assert tries.final() is outcomes[3], "the last answer is handed over once retries are spent"
    # A status that is not retried is final at once, an error status included (the caller raises ApiError).
    for status in (200, 400, 500):
        tries = _Tries(retries=3, backoff_s=0.25)
        answer = httpx.Response(status)
        assert run_tries(tries, [answer]) == [None] and tries.final() is answer
    # Transport errors are retried with the backoff, and the last one is raised when retries run out.
    dropped = [httpx.ConnectError("dropped"), httpx.ReadTimeout("slow")]
    tries = _Tries(retries=1, backoff_s=0.1)
    assert run_tries(tries, list(dropped)) == [None, 0.1]
    with pytest.raises(httpx.ReadTimeout):
        tries.final()
    tries = _Tries(retries=0, backoff_s=0.1)
    assert run_tries(tries, [busy]) == [None] and tries.final() is busy


def test_the_sync_client_gives_up_on_a_dead_connection_after_its_retries() -> None:
    seen: list[httpx.Request] = []
    dead = [(0, {}, httpx.ConnectError("refused"))]
    with Client("http://api", retries=2, backoff_s=0.0, transport=scripted(dead, seen)) as api, \
            pytest.raises(httpx.ConnectError):
        api.similar("i1")
    assert len(seen) == 3


async def test_async_client_stops_at_the_limit_like_the_sync_one() -> None:
    seen: list[httpx.Request] = []
    busy = (503, {"Retry-After": "0"}, {"error": {"field": "kafka", "message": "down"}, "request_id": "r"})
    async with AsyncClient("http://api", retries=2, backoff_s=0.0, transport=scripted([busy], seen)) as api:
        with pytest.raises(ApiError) as caught:
            await api.send_events([PLAY])
    assert len(seen) == 3 and caught.value.status == 503 and caught.value.field == "kafka"
    seen.clear()
    dead = [(0, {}, httpx.ConnectError("refused"))]
    async with AsyncClient("http://api", retries=1, backoff_s=0.0, transport=scripted(dead, seen)) as api:
        with pytest.raises(httpx.ConnectError):
            await api.similar("i1")
    assert len(seen) == 2
