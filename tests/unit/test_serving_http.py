"""The HTTP layer against a stub service and a stub publisher: validation, error shapes, limits, the API key,
fallbacks instead of 5xx, and every response checked against the OpenAPI document the server publishes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from serving_fakes import no_experiments

from foundation.settings import Settings
from models.recommend.pipeline import RecommendRequest
from schemas.events import Event, Impression, ItemUpsert, Play
from serving.app import create_app
from serving.http_events import PublisherUnavailable, ValidEvent, decode_events
from serving.openapi import openapi_document, response_schema

PLAY = {"type": "play", "event_id": "e1", "ts": 1_700_000_000_000, "schema_version": 1, "user_id": "u1",
        "item_id": "i1"}
ITEM = {"type": "item_upsert", "event_id": "c1", "ts": 1_700_000_000_000, "schema_version": 1, "item_id": "i9",
        "title": "Nine", "genres": ["Drama"], "release_ts": 0}


class StubService:
    """Implements the serving core's contract; records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.assignments: list[list[Any]] = []
        self.fallbacks: list[str] = []
        self.fail: BaseException | None = None
        self.delay_s = 0.0
        self.ready = True
        self.closed = False

    @property
    def model_version(self) -> str:
        return "v-test"

    async def recommend(self, req: Any, assignments: Any = ()) -> dict[str, Any]:
        self.requests.append(req)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        items = [{"item_id": f"i{n}", "score": 1.0 / (n + 1), "sources": ["ann"], "reason": "because"}
                 for n in range(req.k)]
        body = {"user_id": req.user_id, "request_id": req.request_id, "model_version": "v-test", "items": items,
                "degraded": False, "timings_ms": {"candidates": 1.0, "total": 2.0}}
        if assignments:  # as the real service: the experiments that ran, and (private) no interleaving teams
            self.assignments.append(list(assignments))
            body |= {"experiments": [{"name": a.experiment, "variant": a.variant} for a in assignments], "_teams": {}}
        return body

    def fallback(self, req: Any, reason: str, seconds: float) -> dict[str, Any]:
        self.fallbacks.append(reason)
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": "v-test", "items": [],
                "degraded": True, "degraded_reasons": [reason], "timings_ms": {"total": seconds * 1000}}

    async def homepage(self, hreq: Any) -> dict[str, Any]:
        self.requests.append(hreq)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        items = [{"item_id": f"i{n}", "title": "T", "genres": ["Drama"], "year": 1995, "score": 0.5,
                  "sources": ["trending"]} for n in range(hreq.per_row)]
        rows = [{"id": f"row{r}", "title": "Row", "reason": "top_picks", "score": 0.1, "items": items}
                for r in range(hreq.rows)]
        return {"user_id": hreq.base.user_id, "request_id": hreq.base.request_id, "model_version": "v-test",
                "rows": rows, "degraded": False, "timings_ms": {"total": 2.0}}

    def homepage_fallback(self, hreq: Any, reason: str, seconds: float) -> dict[str, Any]:
        self.fallbacks.append(reason)
        return {"user_id": hreq.base.user_id, "request_id": hreq.base.request_id, "model_version": "v-test",
                "rows": [], "degraded": True, "degraded_reasons": [reason], "timings_ms": {"total": seconds * 1000}}

    async def similar(self, item_id: str, k: int) -> dict[str, Any] | None:
        if item_id == "missing":
            return None
        return {"item_id": item_id, "model_version": "v-test", "degraded": False,
                "items": [{"item_id": f"s{n}", "score": 0.5, "title": "T", "reason": "similar"} for n in range(k)]}

    async def readiness(self) -> dict[str, Any]:
        return {"ready": self.ready, "bundle": "v-test", "redis": True,
                "index": {"size": 10, "lag": 0 if self.ready else 5, "caught_up": self.ready}}

    async def close(self) -> None:
        self.closed = True


class StubPublisher:
    def __init__(self) -> None:
        self.published: list[Event] = []
        self.originals: list[bytes] = []
        self.down = False

    def start_background(self) -> None:
        pass

    @property
    def connected(self) -> bool:
        return not self.down

    async def publish(self, events: list[ValidEvent]) -> None:
        if self.down:
            raise PublisherUnavailable("not connected to Kafka yet")
        self.published.extend(v.event for v in events)
        self.originals.extend(v.original for v in events)

    async def close(self) -> None:
        pass


class Harness:
    def __init__(self, client: TestClient, service: StubService, publisher: StubPublisher) -> None:
        self.client, self.service, self.publisher = client, service, publisher

    async def call(self, method: str, url: str, template: str, *, expect: int, **kwargs: Any) -> Any:
        """One request; asserts the status and that the body matches the OpenAPI schema of (template, status)."""
        response = await self.client.request(method, url, **kwargs)
        raw = await response.read()
        assert response.status == expect, raw
        assert response.headers["X-Request-ID"]
        schema = response_schema(template, method, expect)
        if schema is None:
            return raw
        assert response.content_type == "application/json"
        body = orjson.loads(raw)
        jsonschema.Draft202012Validator(schema).validate(body)
        return body


OPERATOR_KEY = "unit-operator-key"  # the server's static key (every scope); the harness's client sends it


def _settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{"api_key": OPERATOR_KEY, **overrides})


async def _no_keys() -> dict[str, Any]:  # the shared key table, empty (no Redis in unit tests)
    return {}


@pytest.fixture
async def make_harness() -> AsyncIterator[Any]:
    clients: list[TestClient] = []

    async def make(send_key: bool = True, experiments: Any = None, **overrides: Any) -> Harness:
        service, publisher = StubService(), StubPublisher()
        settings = _settings(**overrides)

        async def service_factory(settings: Settings, artifacts: Path | None) -> StubService:
            return service

        app = create_app(settings, service_factory=service_factory, publisher_factory=lambda settings: publisher,
                         key_source=_no_keys, experiments_factory=experiments or no_experiments)
        client = TestClient(TestServer(app), headers={"X-API-Key": settings.api_key_value()} if send_key else None)
        await client.start_server()
        clients.append(client)
        return Harness(client, service, publisher)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def h(make_harness: Any) -> Harness:
    return await make_harness()


REC = "/v1/recommendations/{user_id}"
SIM = "/v1/items/{item_id}/similar"
EVENTS = "/v1/events"


# --- the document itself -----------------------------------------------------------------------


def test_openapi_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    validator.validate(document)
    assert {"/v1/recommendations/{user_id}", "/v1/items/{item_id}/similar", "/v1/events", "/healthz", "/readyz",
            "/metrics", "/openapi.json"} <= set(document["paths"])


async def test_served_document_is_the_document(h: Harness) -> None:
    body = await h.call("GET", "/openapi.json", "/openapi.json", expect=200)
    assert body == orjson.loads(orjson.dumps(openapi_document()))


# --- recommendations ---------------------------------------------------------------------------


async def test_recommendations_pass_parsed_parameters_to_the_service(h: Harness) -> None:
    body = await h.call("GET", "/v1/recommendations/u42?k=7&device=tv&country=gb&hour=21&now=5", REC,
                        expect=200, headers={"X-Request-ID": "req-1"})
    (req,) = h.service.requests
    assert isinstance(req, RecommendRequest), "one request object from the handler to the pipeline"
    assert (req.user_id, req.k, req.device, req.country, req.hour, req.now_ms) == ("u42", 7, "tv", "GB", 21, 5)
    assert req.request_id == "req-1" == body["request_id"]
    assert len(body["items"]) == 7 and body["degraded"] is False


async def test_defaults_and_generated_request_ids(h: Harness) -> None:
    first = await h.call("GET", "/v1/recommendations/u1", REC, expect=200, headers={"X-Request-ID": "bad id!"})
    second = await h.call("GET", "/v1/recommendations/u1", REC, expect=200)
    assert h.service.requests[0].k == 20 and h.service.requests[0].device is None
    assert first["request_id"] != "bad id!" and first["request_id"] != second["request_id"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("k=0", "k"), ("k=201", "k"), ("k=ten", "k"), ("k=1.5", "k"), ("hour=24", "hour"), ("hour=-1", "hour"),
     ("device=fridge", "device"), ("country=USA", "country"), ("country=1A", "country"), ("now=-1", "now")],
)
async def test_invalid_parameters_get_400_naming_the_field(h: Harness, query: str, field: str) -> None:
    body = await h.call("GET", f"/v1/recommendations/u1?{query}", REC, expect=400)
    assert body["error"]["field"] == field and body["error"]["message"]
    assert h.service.requests == []


async def test_overlong_user_id_is_refused(h: Harness) -> None:
    body = await h.call("GET", "/v1/recommendations/" + "u" * 129, REC, expect=400)
    assert body["error"]["field"] == "user_id"


async def test_service_error_becomes_a_degraded_answer_not_a_5xx(h: Harness) -> None:
    h.service.fail = RuntimeError("redis exploded")
    body = await h.call("GET", "/v1/recommendations/u1?k=3", REC, expect=200)
    assert body["degraded"] is True and body["items"] == [] and body["user_id"] == "u1"
    assert h.service.fallbacks == ["error"] and body["degraded_reasons"] == ["error"]


async def test_homepage_parameters_reach_the_service_and_failures_degrade(make_harness: Any) -> None:
    h = await make_harness(request_timeout_s=0.05)
    body = await h.call("GET", "/v1/homepage/u7?rows=3&per_row=4&country=nl", "/v1/homepage/{user_id}", expect=200)
    (hreq,) = h.service.requests
    assert (hreq.rows, hreq.per_row, hreq.base.k, hreq.base.country) == (3, 4, 4, "NL")
    assert len(body["rows"]) == 3 and all(len(row["items"]) == 4 for row in body["rows"])
    bad = await h.call("GET", "/v1/homepage/u7?rows=21", "/v1/homepage/{user_id}", expect=400)
    assert bad["error"]["field"] == "rows"
    h.service.fail = RuntimeError("redis exploded")
    body = await h.call("GET", "/v1/homepage/u7", "/v1/homepage/{user_id}", expect=200)
    assert body["degraded"] is True and body["degraded_reasons"] == ["error"]
    h.service.fail, h.service.delay_s = None, 5.0
    body = await h.call("GET", "/v1/homepage/u7", "/v1/homepage/{user_id}", expect=200)
    assert body["degraded"] is True and h.service.fallbacks == ["error", "timeout"]


async def test_service_past_its_budget_becomes_a_degraded_answer(make_harness: Any) -> None:
    h = await make_harness(request_timeout_s=0.05)
    h.service.delay_s = 5.0
    body = await h.call("GET", "/v1/recommendations/u1", REC, expect=200)
    assert body["degraded"] is True and body["model_version"] == "v-test"
    assert h.service.fallbacks == ["timeout"]


async def test_over_the_admission_limit_requests_get_a_fast_503_not_a_queue(make_harness: Any) -> None:
    h = await make_harness(serving_admission_initial_limit=2, serving_admission_min_limit=2,
                           serving_admission_max_limit=2)
    h.service.delay_s = 0.5  # each admitted request holds its slot for half a second

    async def one(n: int) -> tuple[int, float, Any]:
        started = time.perf_counter()
        response = await h.client.get(f"/v1/recommendations/u{n}?k=3")
        body = await response.json()
        return response.status, time.perf_counter() - started, (response.headers.get("Retry-After"), body)

    results = await asyncio.gather(*(one(n) for n in range(10)))
    admitted = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(admitted) == 2 and len(shed) == 8
    for _, seconds, (retry_after, body) in shed:
        assert seconds < 0.25, "refused at once, not after waiting for a slot"
        assert retry_after == "1" and body["error"]["field"] == "capacity"
        jsonschema.Draft202012Validator(response_schema(REC, "GET", 503)).validate(body)
    assert len(h.service.requests) == 2, "a refused request never reaches the service"
    # Writes and operations are never shed.
    assert (await h.client.get("/healthz")).status == 200
    text = await (await h.client.get("/metrics")).text()
    assert "streamrec_http_admission_limit 2.0" in text
    assert 'streamrec_http_admission_shed_total{endpoint="/v1/recommendations/{user_id}"}' in text
    assert "streamrec_http_admission_in_flight 0.0" in text


# --- similar -----------------------------------------------------------------------------------


async def test_similar_items(h: Harness) -> None:
    body = await h.call("GET", "/v1/items/i1/similar?k=4", SIM, expect=200, headers={"X-Request-ID": "r9"})
    assert body["item_id"] == "i1" and len(body["items"]) == 4 and body["request_id"] == "r9"


async def test_similar_unknown_item_is_404_and_bad_k_is_400(h: Harness) -> None:
    body = await h.call("GET", "/v1/items/missing/similar", SIM, expect=404)
    assert body["error"]["field"] == "item_id"
    body = await h.call("GET", "/v1/items/i1/similar?k=500", SIM, expect=400)
    assert body["error"]["field"] == "k"


# --- events ------------------------------------------------------------------------------------


async def test_one_event_is_published(h: Harness) -> None:
    body = await h.call("POST", EVENTS, EVENTS, expect=202, data=orjson.dumps(PLAY))
    assert body["accepted"] == 1 and body["refused"] == []
    assert h.publisher.published == [Play(**{k: v for k, v in PLAY.items() if k != "type"})]


async def test_events_are_published_as_the_bytes_the_client_sent(h: Harness) -> None:
    # Odd spacing and key order survive: what reaches Kafka is what was validated, not a re-encoding.
    first = b'{ "type":"play",  "event_id":"e-raw", "schema_version":1, "ts":1700000000000, "user_id":"u9",' \
            b' "item_id":"i9" }'
    body = b"[" + first + b" , " + orjson.dumps(ITEM) + b"]"
    await h.call("POST", EVENTS, EVENTS, expect=202, data=body)
    assert h.publisher.originals == [first, orjson.dumps(ITEM)]


async def test_partly_valid_batch_publishes_the_valid_and_lists_the_refused(h: Harness) -> None:
    bad_hour = {**PLAY, "event_id": "e2", "context": {"local_hour": 24}}
    batch = [PLAY, bad_hour, ITEM, {"type": "nope"}, 7]
    body = await h.call("POST", EVENTS, EVENTS, expect=202, data=orjson.dumps(batch))
    assert body["accepted"] == 2
    assert [(r["index"], r["field"]) for r in body["refused"]] == [(1, "$.context.local_hour"), (3, "$.type"), (4, "$")]
    assert [type(e) for e in h.publisher.published] == [Play, ItemUpsert]


async def test_batch_without_a_valid_event_is_400_by_index(h: Harness) -> None:
    batch = [{**PLAY, "ts": "yesterday"}, {**PLAY, "user_id": ""}]
    body = await h.call("POST", EVENTS, EVENTS, expect=400, data=orjson.dumps(batch))
    assert [(r["index"], r["field"]) for r in body["refused"]] == [(0, "$.ts"), (1, "$.user_id")]
    assert h.publisher.published == []


@pytest.mark.parametrize("data", [b"{not json", b"", b"[1, 2", b"[]", b"null"])
async def test_unusable_bodies_are_400(h: Harness, data: bytes) -> None:
    body = await h.call("POST", EVENTS, EVENTS, expect=400, data=data)
    assert body["error"]["field"] == "body"
    assert h.publisher.published == []


async def test_too_many_events_and_too_large_bodies(make_harness: Any) -> None:
    h = await make_harness(max_events_per_request=2, max_body_bytes=2048)
    body = await h.call("POST", EVENTS, EVENTS, expect=400, data=orjson.dumps([PLAY] * 3))
    assert "at most 2" in body["error"]["message"]
    big = orjson.dumps({**ITEM, "title": "x" * 3000})
    body = await h.call("POST", EVENTS, EVENTS, expect=413, data=big)
    assert body["error"]["field"] == "body"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit must hold while reading
        for _ in range(4):
            yield b" " * 1000

    await h.call("POST", EVENTS, EVENTS, expect=413, data=chunks())
    assert h.publisher.published == []


async def test_api_key_is_required_when_configured(make_harness: Any) -> None:
    h = await make_harness(api_key="s3cret", send_key=False)
    for headers in ({}, {"X-API-Key": "wrong"}):
        body = await h.call("POST", EVENTS, EVENTS, expect=401, data=orjson.dumps(PLAY), headers=headers)
        assert body["error"]["field"] == "X-API-Key"
    assert h.publisher.published == []
    await h.call("POST", EVENTS, EVENTS, expect=202, data=orjson.dumps(PLAY), headers={"X-API-Key": "s3cret"})
    assert len(h.publisher.published) == 1
    await h.call("GET", "/v1/recommendations/u1", REC, expect=200)  # reads need no key


async def test_kafka_unavailable_is_503_for_writes_only(h: Harness) -> None:
    h.publisher.down = True
    body = await h.call("POST", EVENTS, EVENTS, expect=503, data=orjson.dumps(PLAY))
    assert body["error"]["field"] == "kafka"
    # The outcome is unknown past the deadline: the answer says so (a broker may have taken some of them).
    assert body["written"] == "unknown" and "may or may not have been written" in body["error"]["message"]
    response = await h.client.post(EVENTS, data=orjson.dumps(PLAY))
    assert response.headers["Retry-After"] == "1"
    # A replica whose broker is away is not ready (writes would fail); reads still answer.
    body = await h.call("GET", "/readyz", "/readyz", expect=503)
    assert body["kafka"] is False and body["ready"] is False


def test_decode_events_keeps_order_and_indexes() -> None:
    batch = decode_events(orjson.dumps([{"x": 1}, PLAY, ITEM]), max_events=10)
    assert batch.is_batch and [type(v.event) for v in batch.events] == [Play, ItemUpsert]
    assert [r.index for r in batch.refused] == [0]


# --- operations --------------------------------------------------------------------------------


async def test_health_and_readiness(h: Harness) -> None:
    assert (await h.call("GET", "/healthz", "/healthz", expect=200)) == {"status": "ok"}
    body = await h.call("GET", "/readyz", "/readyz", expect=200)
    assert body["ready"] is True
    h.service.ready = False
    body = await h.call("GET", "/readyz", "/readyz", expect=503)
    assert body["index"]["caught_up"] is False


async def test_not_ready_while_redis_is_unreachable(h: Harness) -> None:
    async def redis_down() -> dict[str, Any]:
        return {"ready": True, "bundle": "v-test", "redis": False, "index": {"size": 1, "lag": 0, "caught_up": True}}

    h.service.readiness = redis_down  # type: ignore[method-assign]
    body = await h.call("GET", "/readyz", "/readyz", expect=503)
    assert body["ready"] is False and body["redis"] is False


def test_serve_without_a_bundle_exits_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "STREAMREC_LOG_JSON": "true"}
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", "serve", "--artifacts", str(tmp_path / "none"),
                           "--port", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no model bundle" in done.stderr and "Traceback" not in done.stderr


async def test_unknown_routes_and_methods_answer_json(h: Harness) -> None:
    response = await h.client.get("/v2/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["field"] == "path"
    response = await h.client.delete("/v1/events")
    assert response.status == 405
    assert (await response.json())["error"]["field"] == "method"


async def test_metrics_has_the_request_histogram_per_endpoint(h: Harness) -> None:
    await h.call("GET", "/v1/recommendations/u1?k=0", REC, expect=400)
    text = (await h.call("GET", "/metrics", "/metrics", expect=200)).decode()
    assert 'streamrec_http_request_seconds_count{endpoint="/v1/recommendations/{user_id}",status="400"}' in text


async def test_the_service_is_closed_on_shutdown(h: Harness) -> None:
    await h.client.close()
    assert h.service.closed


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    app = create_app(_settings())
    routed = {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
              if route.resource is not None and route.method != "HEAD"}
    documented = {(path, method) for path, item in openapi_document()["paths"].items() for method in item}
    assert routed == documented



async def test_a_client_hanging_up_mid_body_is_not_an_unhandled_error() -> None:
    from aiohttp import web

    from serving.http_metrics import FALLBACK_ANSWERS, REQUEST_SECONDS

    publisher = StubPublisher()

    async def service_factory(settings: Settings, artifacts: Path | None) -> StubService:
        return StubService()

    app = create_app(_settings(), service_factory=service_factory, publisher_factory=lambda settings: publisher,
                     key_source=_no_keys, experiments_factory=no_experiments)
    # As `streamrec serve` runs it (web.run_app): a client's hang-up does not cancel the handler, whose body read
    # fails instead (aiohttp's TestServer cancels handlers, which would skip the path under test).
    runner = web.AppRunner(app, handler_cancellation=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    unhandled = FALLBACK_ANSWERS.labels(EVENTS, "unhandled")
    answered_400 = REQUEST_SECONDS.labels(EVENTS, "400")
    unhandled_before, count_before = unhandled._value.get(), _histogram_count(answered_400)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-API-Key: " + OPERATOR_KEY.encode() + b"\r\n"
                     b"Content-Length: 5000\r\n\r\n[{\"type\": \"play\"")  # a body promised, never sent
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # the client is gone while the handler reads its body
        for _ in range(200):
            if _histogram_count(answered_400) > count_before:
                break
            await asyncio.sleep(0.01)
        assert _histogram_count(answered_400) == count_before + 1
        assert unhandled._value.get() == unhandled_before
        assert publisher.published == []
    finally:
        await runner.cleanup()


def _histogram_count(child: Any) -> float:
    return sum(bucket.get() for bucket in child._buckets)


async def test_an_answer_in_an_experiment_names_it_and_its_exposure_reaches_the_publisher(make_harness: Any) -> None:
    from models.experiments.config import parse_config
    from online_state.keys import DEFAULT_KEYS
    from serving.experiments import ExperimentsRegistry

    config = parse_config({"version": 1, "experiments": [{"name": "ranker", "variants": [
        {"name": "control"}, {"name": "retrieval_order", "changes": {"ranker": False}}]}]})
    h = await make_harness(experiments=lambda s: ExperimentsRegistry(s, None, DEFAULT_KEYS, config),
                           exposure_flush_ms=10)
    body = await h.call("GET", "/v1/recommendations/u1?k=3&now=1800000000000&device=tv", REC, expect=200)
    assert body["experiments"] in ([{"name": "ranker", "variant": v}] for v in ("control", "retrieval_order"))
    assert "_teams" not in body and len(h.service.assignments) == 1
    for _ in range(100):  # the exposure leaves the buffer in the background (every 10 ms)
        if h.publisher.published:
            break
        await asyncio.sleep(0.01)
    (exposure,) = h.publisher.published
    assert isinstance(exposure, Impression) and exposure.user_id == "u1" and exposure.request_id == body["request_id"]
    assert exposure.item_ids == ["i0", "i1", "i2"] and exposure.ts == 1_800_000_000_000
    assert exposure.experiments is not None and exposure.experiments[0].variant == body["experiments"][0]["variant"]
    assert exposure.context is not None and exposure.context.device == "tv"
    # The document is readable (admin: the operator key has every scope); a PUT has no store here: 503.
    doc = await h.call("GET", "/v1/experiments", "/v1/experiments", expect=200)
    assert doc["experiments"][0]["name"] == "ranker"
    refused = await h.call("PUT", "/v1/experiments", "/v1/experiments", expect=503,
                           data=b'{"version": 2, "experiments": []}')
    assert refused["error"]["field"] == "redis"
