"""API keys with scopes, on by default (issue 11, item 1) and the per-key write rate limit (item 4): the key format and
hashing, scope checks, 401/403/429 on the aiohttp app, the token bucket's arithmetic on a fake clock, and keys never
in a repr or a log line."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from serving_fakes import FakePublisher, FakeService, capture_logs, no_experiments

from foundation.settings import Settings
from online_state.api_keys import (
    CATALOG_WRITE,
    EVENTS_WRITE,
    RECOMMENDATIONS_READ,
    KeyRecord,
    KeyTableError,
    check_name,
    key_digest,
    new_key,
    parse_scopes,
)
from serving.app import RATE_LIMITER, create_app
from serving.auth import OPERATOR, KeyRefresher, KeyTable, Refusal, authorize
from serving.openapi import response_schema
from serving.rate_limit import RateLimiter, TokenBucket, retry_after_header

PLAY = {"type": "play", "event_id": "e1", "ts": 1_700_000_000_000, "schema_version": 1, "user_id": "u1",
        "item_id": "i1"}
ITEM = {"type": "item_upsert", "event_id": "c1", "ts": 1_700_000_000_000, "schema_version": 1, "item_id": "i9",
        "title": "Nine", "genres": ["Drama"], "release_ts": 0}
EVENTS = "/v1/events"
REC = "/v1/recommendations/{user_id}"
SIM = "/v1/items/{item_id}/similar"

# One key per scope set, made the way `streamrec keys create` makes them.
KEYS = {name: new_key() for name in ("writer", "catalog", "both", "reader", "admin", "other-writer")}
SCOPES = {"writer": {EVENTS_WRITE}, "catalog": {CATALOG_WRITE}, "both": {EVENTS_WRITE, CATALOG_WRITE},
          "reader": {RECOMMENDATIONS_READ}, "admin": {"admin"}, "other-writer": {EVENTS_WRITE}}


def _records(names: list[str] | None = None) -> dict[str, KeyRecord]:
    return {key_digest(KEYS[n]): KeyRecord(n, frozenset(SCOPES[n]), 1) for n in names or list(KEYS)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- keys and the table --------------------------------------------------------------------------


def test_a_key_is_srk_and_32_random_bytes_and_only_its_sha256_is_kept() -> None:
    key = new_key()
    assert key.startswith("srk_") and len(key) == 4 + 43 and key != new_key()
    digest = key_digest(key)
    assert len(digest) == 64 and key not in digest and digest == key_digest(key)


def test_scopes_and_names_are_checked() -> None:
    assert parse_scopes(["events:write", " catalog:write ", ""]) == {EVENTS_WRITE, CATALOG_WRITE}
    with pytest.raises(KeyTableError, match="unknown scope events:wrte"):
        parse_scopes(["events:wrte"])
    with pytest.raises(KeyTableError, match="at least one"):
        parse_scopes([])
    assert check_name("ingest-1.prod_a") == "ingest-1.prod_a"
    for bad in ("", "a b", "x" * 65, "name\n"):
        with pytest.raises(KeyTableError):
            check_name(bad)


def test_admin_implies_every_scope_and_others_only_their_own() -> None:
    table = KeyTable("static-operator-key", _records())
    for scope in (EVENTS_WRITE, CATALOG_WRITE, RECOMMENDATIONS_READ):
        admin = authorize(table, KEYS["admin"], (scope,))
        assert isinstance(admin, KeyRecord) and admin.name == "admin"
    operator = authorize(table, "static-operator-key", (EVENTS_WRITE, CATALOG_WRITE, RECOMMENDATIONS_READ))
    assert isinstance(operator, KeyRecord) and operator.name == OPERATOR
    refused = authorize(table, KEYS["writer"], (EVENTS_WRITE, CATALOG_WRITE))
    assert refused == Refusal(403, "scope", "the key 'writer' lacks the scope catalog:write")
    assert authorize(table, None, ()) == Refusal(401, "missing", refused_message := authorize(table, "", ()).message)
    assert "X-API-Key" in refused_message
    unknown = authorize(table, KEYS["writer"] + "x", ())
    assert isinstance(unknown, Refusal) and (unknown.status, unknown.reason) == (401, "unknown")
    assert authorize(KeyTable(""), "", ()) == authorize(KeyTable(""), None, ())  # no static key: "" is no key


def test_the_table_repr_holds_no_key_and_no_digest() -> None:
    table = KeyTable("static-operator-key", _records())
    text = repr(table) + str(table)
    assert "static-operator-key" not in text
    assert not any(key in text or key_digest(key) in text for key in KEYS.values())
    assert "keys=6" in text


async def test_the_refresher_replaces_the_table_and_keeps_the_last_one_when_redis_fails() -> None:
    table = KeyTable("")
    current: dict[str, KeyRecord] = _records(["writer"])
    failing = False

    async def load() -> dict[str, KeyRecord]:
        if failing:
            raise ConnectionError("Redis is away")
        return dict(current)

    seen: list[set[str]] = []
    refresher = KeyRefresher(table, load, 2.0, on_replace=seen.append)
    assert await refresher.refresh() and table.identify(KEYS["writer"]) is not None
    current = _records(["reader"])  # "writer" revoked, "reader" created
    assert await refresher.refresh()
    assert table.identify(KEYS["writer"]) is None and table.identify(KEYS["reader"]) is not None
    failing = True
    assert not await refresher.refresh()
    assert table.identify(KEYS["reader"]) is not None, "a Redis outage keeps the last table"
    assert seen == [{"writer"}, {"reader"}]


# --- the token bucket -----------------------------------------------------------------------------


def test_the_bucket_counts_events_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=100.0, burst=50, tokens=50.0, updated=0.0)
    assert bucket.take(30, now=0.0) == 0.0 and bucket.tokens == 20.0
    assert bucket.take(30, now=0.0) == pytest.approx(0.1)  # 10 short, at 100/s
    assert bucket.tokens == 20.0, "a refused request takes nothing"
    assert bucket.take(30, now=0.1) == 0.0 and bucket.tokens == pytest.approx(0.0)
    assert bucket.take(1, now=100.0) == 0.0 and bucket.tokens == 49.0, "never more than the burst"


def test_a_batch_larger_than_the_burst_passes_from_a_full_bucket_and_is_paid_back() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, tokens=5.0, updated=0.0)
    assert bucket.take(20, now=0.0) == 0.0 and bucket.tokens == -15.0
    assert bucket.take(1, now=0.0) == pytest.approx(1.6)  # 16 tokens to earn back at 10/s
    assert bucket.take(1, now=1.6) == 0.0


def test_the_limiter_keeps_one_bucket_per_key_and_a_rate_of_zero_is_off() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=10, clock=clock)
    assert limiter.take("a", 10) == 0.0
    assert limiter.take("a", 1) == pytest.approx(0.1)
    assert limiter.take("b", 10) == 0.0, "another key has its own bucket"
    clock.now += 0.5
    assert limiter.take("a", 5) == 0.0 and limiter.take("a", 1) > 0
    limiter.forget({"b"})
    assert limiter.take("a", 10) == 0.0, "a forgotten key starts again from a full bucket"
    off = RateLimiter(rate=0.0, burst=1, clock=clock)
    assert not off.enabled and all(off.take("a", 1000) == 0.0 for _ in range(100))
    assert [retry_after_header(s) for s in (0.0, 0.01, 1.0, 1.2)] == ["1", "1", "1", "2"]


# --- the app ----------------------------------------------------------------------------------------


class App:
    def __init__(self, client: TestClient, publisher: FakePublisher, source: dict[str, KeyRecord]) -> None:
        self.client, self.publisher, self.source = client, publisher, source

    async def call(self, method: str, url: str, template: str, expect: int, key: str | None = None,
                   body: Any = None) -> dict[str, Any]:
        headers = {"X-API-Key": key} if key is not None else {}
        data = orjson.dumps(body) if body is not None else None
        response = await self.client.request(method, url, headers=headers, data=data)
        raw = await response.read()
        assert response.status == expect, raw
        answer = orjson.loads(raw)
        schema = response_schema(template, method, expect)
        assert schema is not None
        jsonschema.Draft202012Validator(schema).validate(answer)
        if expect in (401, 403):
            assert answer["error"]["field"] == "X-API-Key"
        if expect == 429:
            assert int(response.headers["Retry-After"]) >= 1
        return answer  # type: ignore[no-any-return]


@pytest.fixture
async def make_app() -> AsyncIterator[Any]:
    clients: list[TestClient] = []

    async def make(records: dict[str, KeyRecord] | None = None, clock: FakeClock | None = None,
                   **overrides: Any) -> App:
        publisher = FakePublisher()
        source = dict(_records() if records is None else records)

        async def service_factory(settings: Settings, artifacts: Path | None) -> FakeService:
            return FakeService()

        async def key_source() -> dict[str, KeyRecord]:
            return dict(source)

        app = create_app(Settings(_env_file=None, **overrides), service_factory=service_factory,
                         publisher_factory=lambda settings: publisher, key_source=key_source,
                         experiments_factory=no_experiments)
        if clock is not None:
            app[RATE_LIMITER] = RateLimiter(app[RATE_LIMITER].rate, app[RATE_LIMITER].burst, clock=clock)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return App(client, publisher, source)

    yield make
    for client in clients:
        await client.close()


async def test_writes_need_a_known_key_by_default(make_app: Any) -> None:
    app = await make_app()
    missing = await app.call("POST", EVENTS, EVENTS, 401, body=PLAY)
    assert "needs an API key" in missing["error"]["message"]
    unknown = await app.call("POST", EVENTS, EVENTS, 401, key="srk_not-a-key", body=PLAY)
    assert "unknown or revoked" in unknown["error"]["message"]
    assert app.publisher.published == []
    assert (await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=PLAY))["accepted"] == 1
    assert len(app.publisher.published) == 1


async def test_catalogue_events_need_catalog_write_and_a_mixed_batch_needs_both(make_app: Any) -> None:
    app = await make_app()
    denied = await app.call("POST", EVENTS, EVENTS, 403, key=KEYS["writer"], body=ITEM)
    assert "catalog:write" in denied["error"]["message"]
    denied = await app.call("POST", EVENTS, EVENTS, 403, key=KEYS["writer"], body=[PLAY, ITEM])
    assert "catalog:write" in denied["error"]["message"]
    denied = await app.call("POST", EVENTS, EVENTS, 403, key=KEYS["catalog"], body=[PLAY, ITEM])
    assert "events:write" in denied["error"]["message"]
    denied = await app.call("POST", EVENTS, EVENTS, 403, key=KEYS["reader"], body=PLAY)
    assert "events:write" in denied["error"]["message"]
    assert app.publisher.published == [], "a refused batch publishes nothing, not even its allowed part"
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["catalog"], body=ITEM)
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["both"], body=[PLAY, ITEM])
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["admin"], body=[PLAY, ITEM])
    # The refused events of a batch do not count: a writer's batch of a play and a broken upsert is a 202.
    partly = await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=[PLAY, {**ITEM, "title": 5}])
    assert partly["accepted"] == 1 and partly["refused"][0]["index"] == 1


async def test_the_static_operator_key_has_every_scope(make_app: Any) -> None:
    app = await make_app(records={}, api_key="operator-secret")
    await app.call("POST", EVENTS, EVENTS, 202, key="operator-secret", body=[PLAY, ITEM])
    await app.call("POST", EVENTS, EVENTS, 401, key="operator-secreT", body=PLAY)


async def test_reads_are_open_unless_read_keys_are_configured(make_app: Any) -> None:
    app = await make_app()
    await app.call("GET", "/v1/recommendations/u1", REC, 200)
    await app.call("GET", "/v1/items/i1/similar", SIM, 200)
    guarded = await make_app(auth_reads=True)
    for url, template in (("/v1/recommendations/u1", REC), ("/v1/items/i1/similar", SIM)):
        await guarded.call("GET", url, template, 401)
        await guarded.call("GET", url, template, 401, key="srk_unknown")
        denied = await guarded.call("GET", url, template, 403, key=KEYS["writer"])
        assert "recommendations:read" in denied["error"]["message"]
        await guarded.call("GET", url, template, 200, key=KEYS["reader"])
        await guarded.call("GET", url, template, 200, key=KEYS["admin"])


async def test_a_revoked_key_stops_working_at_the_next_refresh(make_app: Any) -> None:
    app = await make_app(auth_keys_refresh_s=0.05)
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=PLAY)
    del app.source[key_digest(KEYS["writer"])]
    deadline = time.monotonic() + 5
    while (await app.client.post(EVENTS, data=orjson.dumps(PLAY), headers={"X-API-Key": KEYS["writer"]})).status \
            != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        await asyncio.sleep(0.02)
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["other-writer"], body=PLAY)


async def test_a_key_over_its_rate_gets_429_and_other_keys_do_not(make_app: Any) -> None:
    clock = FakeClock()
    app = await make_app(clock=clock, rate_limit_events_per_s=10.0, rate_limit_burst=20)
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=[PLAY] * 15)
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=[PLAY] * 5)
    limited = await app.call("POST", EVENTS, EVENTS, 429, key=KEYS["writer"], body=[PLAY] * 3)
    assert limited["error"]["field"] == "rate" and "'writer'" in limited["error"]["message"]
    assert len(app.publisher.published) == 20, "a 429 publishes nothing"
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["other-writer"], body=[PLAY] * 20)
    clock.now += 0.35  # 3.5 events' worth of tokens at 10/s
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=[PLAY] * 3)
    response = await app.client.post(EVENTS, data=orjson.dumps(PLAY), headers={"X-API-Key": KEYS["writer"]})
    assert response.status == 429 and response.headers["Retry-After"] == "1"


async def test_the_rate_limit_can_be_turned_off(make_app: Any) -> None:
    app = await make_app(clock=FakeClock(), rate_limit_events_per_s=0, rate_limit_burst=1)
    for _ in range(5):
        await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=[PLAY] * 100)


async def test_auth_off_is_an_explicit_opt_out_logged_loudly(make_app: Any, captured: io.StringIO,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_AUTH", "off")
    assert Settings(_env_file=None).auth is False
    monkeypatch.delenv("STREAMREC_AUTH")
    assert Settings(_env_file=None).auth is True, "on by default"
    app = await make_app(auth=False)
    await app.call("POST", EVENTS, EVENTS, 202, body=[PLAY, ITEM])
    assert "AUTH IS OFF" in captured.getvalue() and "warning" in captured.getvalue()


async def test_with_no_key_at_all_writes_get_401_and_the_log_says_how_to_make_one(
        make_app: Any, captured: io.StringIO) -> None:
    app = await make_app(records={})
    await app.call("POST", EVENTS, EVENTS, 401, body=PLAY)
    assert "streamrec keys create" in captured.getvalue()


async def test_keys_never_reach_the_log(make_app: Any, captured: io.StringIO) -> None:
    app = await make_app(api_key="operator-secret", auth_keys_refresh_s=0.05, rate_limit_events_per_s=1.0,
                         rate_limit_burst=1)
    await app.call("POST", EVENTS, EVENTS, 202, key=KEYS["writer"], body=PLAY)
    await app.call("POST", EVENTS, EVENTS, 429, key=KEYS["writer"], body=PLAY)
    await app.call("POST", EVENTS, EVENTS, 401, key=KEYS["writer"] + "-wrong", body=PLAY)
    await app.call("POST", EVENTS, EVENTS, 202, key="operator-secret", body=PLAY)
    out = captured.getvalue()
    assert out, "something was logged (the start-up lines at least)"
    for key in (*KEYS.values(), "operator-secret"):
        assert key not in out and key_digest(key) not in out


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    yield from capture_logs()
