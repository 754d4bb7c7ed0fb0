"""The HTTP API against the real broker and Redis with the real RecommendationService and Kafka producer.

One small bundle for the module. Each test gets its own topics and a flushed Redis; the app runs in-process
(aiohttp's test server), except the last test, which runs ``streamrec serve --workers 2`` as a subprocess. Every
JSON answer is validated against the schema that /openapi.json documents for its path and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer
from test_worker_dead_letters import per_test_settings

from foundation.child_env import settings_env
from foundation.kafka_io import connection_options
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import open_bundle
from serving.app import create_app
from tools.stack import process
from tools.stack.layout import StackLayout
from tools.stack.probes import free_port

REPO = Path(__file__).resolve().parents[2]
T0 = 1_760_000_000_000
REC = "/v1/recommendations/{user_id}"
SIM = "/v1/items/{item_id}/similar"
EVENTS = "/v1/events"


@pytest.fixture(scope="module")
def artifacts(small_bundle: Path) -> Path:
    return small_bundle


def _play(user: str, item: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "play", "event_id": f"e-{user}-{item}-{n}", "ts": T0 + n, "schema_version": 1,
            "user_id": user, "item_id": item, **extra}


def _upsert(item: str) -> dict[str, Any]:
    return {"type": "item_upsert", "event_id": f"c-{item}", "ts": T0, "schema_version": 1, "item_id": item,
            "title": "A New Heist", "genres": ["Crime"], "release_ts": T0}


class Api:
    """An HTTP client that checks every answer against the OpenAPI document the server itself serves."""

    def __init__(self, request: Any, document: dict[str, Any]) -> None:
        self._request = request
        self.document = document

    def _schema(self, template: str, method: str, status: int) -> dict[str, Any] | None:
        responses = self.document["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, which the document does not list"
        media = responses[str(status)].get("content", {}).get("application/json")
        if media is None:
            return None
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **media["schema"],
                "components": self.document["components"]}

    async def call(self, method: str, url: str, template: str, *, expect: int, **kwargs: Any) -> Any:
        async with self._request(method, url, **kwargs) as response:
            raw = await response.read()
            assert response.status == expect, raw
            assert response.headers["X-Request-ID"]
            content_type = response.content_type
        schema = self._schema(template, method, expect)
        if schema is None:
            return raw.decode()
        assert content_type == "application/json"
        body = orjson.loads(raw)
        jsonschema.Draft202012Validator(schema).validate(body)
        return body


async def _eventually_ready(api: Api, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        status = 200
        try:
            body = await api.call("GET", "/readyz", "/readyz", expect=200)
        except AssertionError:
            status = 503
        if status == 200 and body["events_producer"]:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not become ready")
        await asyncio.sleep(0.2)


OPERATOR_KEY = "it-operator-key"  # the servers' static key (every scope) unless a test sets its own


@contextlib.asynccontextmanager
async def running_api(settings: Settings, artifacts: Path, send_key: bool = True) -> AsyncIterator[Api]:
    """The app in-process; writes need a key (the default), so the client sends the server's key unless told not."""
    await ensure_topics_retrying(settings)
    if not settings.api_key:
        settings = settings.model_copy(update={"api_key": OPERATOR_KEY})
    headers = {"X-API-Key": settings.api_key_value()} if send_key else None
    client = TestClient(TestServer(create_app(settings, artifacts)), headers=headers)
    await client.start_server()
    try:
        document = await (await client.get("/openapi.json")).json()
        api = Api(client.request, document)
        await _eventually_ready(api)
        yield api
    finally:
        await client.close()


async def _read_topic(settings: Settings, topic: str, expected: int) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(topic, **connection_options(settings), group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        for _ in range(100):
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            if len(records) >= expected:
                break
        # A little longer: more than expected would be a duplicate or a refused event that slipped through.
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return [(r.key, orjson.loads(r.value)) for r in records]


async def test_recommendations_similar_readiness_and_metrics(stack: Settings, redis_client: Any,
                                                             artifacts: Path) -> None:
    settings = per_test_settings(stack, "http-read")
    bundle = open_bundle(artifacts)
    known_user = bundle.json("user_ids")[0]
    item_ids: list[str] = bundle.json("item_ids")
    async with running_api(settings, artifacts) as api:
        ready = await api.call("GET", "/readyz", "/readyz", expect=200)
        assert ready["ready"] is True and ready["bundle"] == bundle.version and ready["redis"] is True
        assert ready["index"]["size"] > 0

        known = await api.call("GET", f"/v1/recommendations/{known_user}?k=10&device=tv&country=nl&hour=20",
                               REC, expect=200, headers={"X-Request-ID": "it-1"})
        assert known["request_id"] == "it-1" and known["user_id"] == known_user
        assert known["model_version"] == bundle.version
        got = [item["item_id"] for item in known["items"]]
        assert len(got) == 10 == len(set(got)) and set(got) <= set(item_ids)

        cold = await api.call("GET", "/v1/recommendations/nobody-at-all?k=5", REC, expect=200)
        assert len(cold["items"]) == 5
        # A cold start is not a degraded answer; only a Redis stage running past its budget (a loaded CI box) is.
        assert not cold["degraded"] or all("timeout" in r for r in cold["degraded_reasons"]), cold

        bad = await api.call("GET", f"/v1/recommendations/{known_user}?k=0", REC, expect=400)
        assert bad["error"]["field"] == "k"

        similar = await api.call("GET", f"/v1/items/{item_ids[0]}/similar?k=5", SIM, expect=200)
        assert similar["item_id"] == item_ids[0] and 0 < len(similar["items"]) <= 5
        assert item_ids[0] not in {item["item_id"] for item in similar["items"]}
        missing = await api.call("GET", "/v1/items/no-such-title/similar", SIM, expect=404)
        assert missing["error"]["field"] == "item_id"

        assert (await api.call("GET", "/healthz", "/healthz", expect=200)) == {"status": "ok"}
        text = await api.call("GET", "/metrics", "/metrics", expect=200)
        for series in ('streamrec_http_request_seconds_bucket{endpoint="/v1/recommendations/{user_id}"',
                       "streamrec_serving_stage_seconds", "streamrec_serving_candidates",
                       "streamrec_serving_index_items", "streamrec_serving_index_lag"):
            assert series in text, series


async def test_posted_events_arrive_in_kafka_keyed_by_their_topic_contract(
    stack: Settings, redis_client: Any, artifacts: Path
) -> None:
    settings = per_test_settings(stack, "http-events")
    async with running_api(settings, artifacts) as api:
        one = await api.call("POST", EVENTS, EVENTS, expect=202, data=orjson.dumps(_play("u1", "i1", 1)))
        assert one["accepted"] == 1 and one["refused"] == []

        batch = [_play("u2", "i2", 2), {**_play("u2", "i3", 3), "ts": "soon"}, _upsert("new-title"),
                 _play("u3", "i1", 4, context={"local_hour": 99})]
        partly = await api.call("POST", EVENTS, EVENTS, expect=202, data=orjson.dumps(batch))
        assert partly["accepted"] == 2
        assert [(r["index"], r["field"]) for r in partly["refused"]] == [(1, "$.ts"), (3, "$.context.local_hour")]

        none = await api.call("POST", EVENTS, EVENTS, expect=400, data=orjson.dumps([{"type": "play"}, 5]))
        assert [r["index"] for r in none["refused"]] == [0, 1]
        not_json = await api.call("POST", EVENTS, EVENTS, expect=400, data=b"{'type': 'play'")
        assert not_json["error"]["field"] == "body"

    interactions = await _read_topic(settings, settings.topic_interactions, 2)
    assert sorted((key, value["event_id"]) for key, value in interactions) == [
        (b"u1", "e-u1-i1-1"), (b"u2", "e-u2-i2-2")]
    catalog = await _read_topic(settings, settings.topic_catalog, 1)
    assert [(key, value["type"]) for key, value in catalog] == [(b"new-title", "item_upsert")]


async def test_api_key_guards_writes(stack: Settings, redis_client: Any, artifacts: Path) -> None:
    settings = per_test_settings(stack, "http-key").model_copy(update={"api_key": "k-123"})
    async with running_api(settings, artifacts, send_key=False) as api:
        event = orjson.dumps(_play("u9", "i9", 9))
        denied = await api.call("POST", EVENTS, EVENTS, expect=401, data=event)
        assert denied["error"]["field"] == "X-API-Key"
        await api.call("POST", EVENTS, EVENTS, expect=401, data=event, headers={"X-API-Key": "k-124"})
        await api.call("POST", EVENTS, EVENTS, expect=202, data=event, headers={"X-API-Key": "k-123"})
        await api.call("GET", "/v1/recommendations/u9", REC, expect=200)  # reads stay open
    assert [key for key, _ in await _read_topic(settings, settings.topic_interactions, 1)] == [b"u9"]


async def test_serve_command_runs_replicas_and_stops_on_sigterm(
    stack: Settings, stack_env: dict[str, str], redis_client: Any, artifacts: Path, tmp_path: Path
) -> None:
    settings = per_test_settings(stack, "http-serve")
    await ensure_topics_retrying(settings)
    port = free_port()
    env = settings_env(settings, base=stack_env)  # this test's topics, the session's stack
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamrec.cli", "serve", "--artifacts", str(artifacts), "--port", str(port),
            "--workers", "2", env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        async with ClientSession(f"http://127.0.0.1:{port}") as session:
            api = Api(session.request, {})
            deadline = time.monotonic() + 90
            while True:
                with contextlib.suppress(OSError):
                    async with session.get("/openapi.json") as response:
                        api.document = await response.json()
                        break
                assert child.returncode is None, log_path.read_text()
                assert time.monotonic() < deadline, "streamrec serve did not start"
                await asyncio.sleep(0.3)
            await _eventually_ready(api, 90)
            # Fresh connections: the kernel spreads them over both replicas (SO_REUSEPORT); every one must answer.
            for n in range(12):
                async with ClientSession(f"http://127.0.0.1:{port}") as fresh:
                    body = await Api(fresh.request, api.document).call(
                        "GET", f"/v1/recommendations/u{n}?k=3", REC, expect=200)
                    assert len(body["items"]) == 3
            text = await api.call("GET", "/metrics", "/metrics", expect=200)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(child.wait(), 40)
        except TimeoutError:
            child.kill()
            raise
    assert code == 0, log_path.read_text()
    # Multiprocess metrics: whichever replica answered the scrape reports the requests of both.
    count = 'streamrec_http_request_seconds_count{endpoint="/v1/recommendations/{user_id}",status="200"} 12.0'
    assert count in text, text


def test_a_dead_broker_fails_writes_fast_and_the_replica_unready(stack_factory: Any, artifacts: Path) -> None:
    # A stack of its own: its broker is SIGKILLed here (the factory is synchronous: the test runs its own loop).
    own = stack_factory("deadbroker", 22092, 22093, 19379)
    asyncio.run(_dead_broker(own, artifacts))


async def _dead_broker(own: Settings, artifacts: Path) -> None:
    settings = per_test_settings(own, "dead-broker")
    async with running_api(settings, artifacts) as api:
        await api.call("POST", EVENTS, EVENTS, expect=202, data=orjson.dumps(_play("u1", "i1", 1)))
        record = process.read_record(StackLayout.from_settings(own).kafka_pid_file)
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)
        started = time.monotonic()
        body = await api.call("POST", EVENTS, EVENTS, expect=503, data=orjson.dumps(_play("u1", "i2", 2)))
        # Within the publish deadline (1 s) plus slack, not the old 5 s; and the answer does not promise anything.
        assert time.monotonic() - started < 3.0
        assert body["error"]["field"] == "kafka" and body["written"] == "unknown"
        deadline = time.monotonic() + 15
        while True:  # the broker probe (every 2 s) turns the replica unready; reads still answer
            try:
                ready = await api.call("GET", "/readyz", "/readyz", expect=503)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "still ready with the broker dead"
                await asyncio.sleep(0.2)
        assert ready["kafka"] is False
        await api.call("GET", "/v1/recommendations/u1", REC, expect=200)
