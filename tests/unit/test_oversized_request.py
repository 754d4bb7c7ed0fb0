"""A request the HTTP parser refuses (a 100 KB path or header, bytes that are not HTTP) gets the app's JSON error
shape, 414/431/400, and quotes nothing of the input (issue 11: aiohttp's text/plain 400 echoed a Python
``bytearray(b'...')`` of it). Raw sockets against the app served as ``streamrec serve`` serves it
(:class:`serving.protocol_errors.JsonErrorAppRunner`), on a real port."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from serving_fakes import FakePublisher, FakeService, capture_logs, no_experiments

from foundation.settings import Settings
from serving.app import create_app
from serving.protocol_errors import MAX_HEADER_FIELD, MAX_REQUEST_LINE, PROTOCOL_ERRORS, JsonErrorAppRunner
from serving.service import RecommendationService

MARK = b"Zq7"  # the filler of the oversized parts: found in a body only if the answer echoes the input


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def service_factory(settings: Settings, artifacts: Path | None) -> RecommendationService:
        return FakeService()  # type: ignore[return-value]

    async def no_keys() -> dict[str, Any]:  # the shared key table, empty (no Redis in unit tests)
        return {}

    app = create_app(Settings(_env_file=None), service_factory=service_factory,
                     publisher_factory=lambda settings: FakePublisher(),  # type: ignore[arg-type,return-value]
                     key_source=no_keys, experiments_factory=no_experiments)
    runner = JsonErrorAppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the whole answer (the server closes after a protocol error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def _assert_json_error(status: int, headers: dict[str, str], body: bytes, want: int, field: str) -> None:
    assert status == want, body[:300]
    assert headers["content-type"].startswith("application/json")
    assert MARK not in body and b"bytearray" not in body and len(body) < 300, body[:300]
    document = orjson.loads(body)
    assert document["error"]["field"] == field and document["request_id"]
    assert set(document) == {"error", "request_id"} and set(document["error"]) == {"field", "message"}


async def test_a_100_kb_path_is_a_json_414_that_echoes_nothing(port: int, captured: io.StringIO) -> None:
    before = PROTOCOL_ERRORS.labels("414", "path")._value.get()
    raw = b"GET /v1/recommendations/" + MARK * 34_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    _assert_json_error(*await _exchange(port, raw), want=414, field="path")
    assert PROTOCOL_ERRORS.labels("414", "path")._value.get() == before + 1
    # Logged as one line without the input (aiohttp logged a traceback quoting it).
    text = captured.getvalue()
    assert "request refused by the HTTP parser" in text and MARK.decode() not in text and "Traceback" not in text


@pytest.mark.parametrize("header", [b"X-Big: " + MARK * 34_000, b"X-" + MARK * 34_000 + b": 1"])
async def test_a_100_kb_header_is_a_json_431_that_echoes_nothing(port: int, header: bytes) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n"
    _assert_json_error(*await _exchange(port, raw), want=431, field="headers")


async def test_just_under_the_limits_is_served(port: int) -> None:
    header = b"X-Fill: " + b"a" * (MAX_HEADER_FIELD - 200)
    status, _, body = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header +
                                      b"\r\nConnection: close\r\n\r\n")
    assert status == 200, body
    path = b"/healthz?pad=" + b"b" * (MAX_REQUEST_LINE - 100)
    status, _, body = await _exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200, body


@pytest.mark.parametrize("raw", [b"GET /" + MARK + b"\x00 HTTP/1.1\r\n\r\n", b"\x16\x03\x01" + MARK + b"\r\n\r\n"])
async def test_bytes_that_are_not_http_are_a_json_400_that_echoes_nothing(port: int, raw: bytes) -> None:
    _assert_json_error(*await _exchange(port, raw), want=400, field="request")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    yield from capture_logs()
