"""The browser page's routes (serving/page.py) on the real app, with a stub service and key table: the config block
the page is given (sample users, the page key only when it is narrowly scoped, the clock), the static files (only
the package's, with content types and ETags), and the headers that keep the page from loading anything else."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from serving_fakes import FakePublisher, FakeService, no_experiments

from foundation.settings import Settings
from online_state.api_keys import CATALOG_WRITE, EVENTS_WRITE, RECOMMENDATIONS_READ, KeyRecord, key_digest
from serving.app import KEYS, SERVICE, create_app
from serving.page import STATIC_DIR, add_page_routes, load_static, sample_users

PAGE_KEY = "srk_page-key-for-browsers"
BROAD_KEY = "srk_a-key-that-can-do-more"
OPERATOR_KEY = "unit-operator-key"


@dataclass
class StubHistories:
    ptr: np.ndarray


@dataclass
class StubModel:
    histories: StubHistories | None
    user_index: dict[str, int]


class PageService(FakeService):
    def __init__(self, model: StubModel) -> None:
        self.model = model


def _model() -> StubModel:
    # Rows 0..4 with 3, 9, 0, 7, 9 events: the most first, ties in row order; the user without events left out.
    lengths = [3, 9, 0, 7, 9]
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return StubModel(StubHistories(ptr), {"u-a": 0, "u-b": 1, "u-c": 2, "u-d": 3, "</script><b>x": 4})


async def _keys() -> dict[str, KeyRecord]:
    return {key_digest(PAGE_KEY): KeyRecord("page", frozenset({EVENTS_WRITE}), 0),
            key_digest(BROAD_KEY): KeyRecord("demo", frozenset({EVENTS_WRITE, CATALOG_WRITE, RECOMMENDATIONS_READ}), 0)}


Make = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client() -> AsyncIterator[Make]:
    clients: list[TestClient] = []

    async def make(**overrides: Any) -> TestClient:
        settings = Settings(_env_file=None, **{"api_key": OPERATOR_KEY, **overrides})
        service = PageService(_model())

        async def factory(settings: Settings, artifacts: Path | None) -> PageService:
            return service

        app = create_app(settings, service_factory=factory, publisher_factory=lambda s: FakePublisher(),
                         key_source=_keys, experiments_factory=no_experiments)
        if not any(r.resource is not None and r.resource.canonical == "/" for r in app.router.routes()):
            add_page_routes(app, settings, SERVICE, KEYS)  # until create_app adds the page itself
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def _config(html: str) -> dict[str, Any]:
    found = re.search(r'<script id="page-config" type="application/json">(.*?)</script>', html, re.S)
    assert found is not None, html[:500]
    return orjson.loads(found.group(1))


async def test_the_page_carries_its_config(make_client: Make) -> None:
    client = await make_client(page_api_key=PAGE_KEY, page_clock_offset_ms=-1234)
    response = await client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    html = await response.text()
    config = _config(html)
    assert config["api_key"] == PAGE_KEY and config["key_problem"] is None
    assert config["model_version"] == "v-test"
    assert config["clock_offset_ms"] == -1234 and config["server_time_ms"] > 1_700_000_000_000
    assert [u["user_id"] for u in config["sample_users"]] == ["u-b", "</script><b>x", "u-d", "u-a"]
    assert [u["events"] for u in config["sample_users"]] == [9, 9, 7, 3]
    # A user id cannot close the config's element: '<' and '>' travel escaped.
    assert html.count("</script>") == 2  # the config block's and page.js's
    assert '<link rel="stylesheet" href="/static/page.css">' in html


@pytest.mark.parametrize(("key", "problem"), [
    (BROAD_KEY, "has more than the events:write scope"),
    (OPERATOR_KEY, "has more than the events:write scope"),
    ("srk_revoked-or-never-made", "not a valid key"),
    (None, "no page key is configured"),
])
async def test_a_key_that_could_do_more_than_post_events_is_never_handed_out(
        make_client: Make, key: str | None, problem: str) -> None:
    client = await make_client(page_api_key=key)
    html = await (await client.get("/")).text()
    config = _config(html)
    assert config["api_key"] is None and problem in config["key_problem"]
    for secret in (BROAD_KEY, OPERATOR_KEY):
        assert secret not in html


async def test_without_auth_the_page_needs_no_key(make_client: Make) -> None:
    client = await make_client(auth=False, page_api_key=PAGE_KEY)
    config = _config(await (await client.get("/")).text())
    assert config["api_key"] is None and config["key_problem"] is None and config["auth"] is False


@pytest.mark.parametrize(("name", "content_type"), [
    ("page.js", "text/javascript"), ("page.css", "text/css"),
])
async def test_static_files_with_types_and_revalidation(make_client: Make, name: str, content_type: str) -> None:
    client = await make_client()
    response = await client.get(f"/static/{name}")
    assert response.status == 200 and response.content_type == content_type
    assert await response.read() == (STATIC_DIR / name).read_bytes()
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Content-Type-Options"] == "nosniff"
    etag = response.headers["ETag"]
    again = await client.get(f"/static/{name}", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""


@pytest.mark.parametrize("path", [
    "/static/nope.js", "/static/index.html", "/static/..%2Fpage.py", "/static/%2e%2e/app.py", "/static/../app.py",
    "/static/.%2F..%2F..%2Fpyproject.toml",
])
async def test_only_the_package_files_are_served(make_client: Make, path: str) -> None:
    response = await (await make_client()).get(path)
    assert response.status == 404
    body = await response.read()
    assert b"add_page_routes" not in body and b"create_app" not in body and b"[project]" not in body


def test_sample_users_without_histories_is_empty() -> None:
    assert sample_users(StubModel(None, {"u": 0})) == []
    assert sample_users(None) == []


def test_every_static_file_ships_and_loads() -> None:
    assert set(load_static()) == {"index.html", "page.css", "page.js"}
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'serving = ["static/*"]' in pyproject, "the page's files must be package data"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (only a syntax check)")
def test_page_js_parses() -> None:
    subprocess.run(["node", "--check", str(STATIC_DIR / "page.js")], check=True)


def test_add_page_routes_refuses_a_missing_template(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import serving.page as page

    monkeypatch.setattr(page, "STATIC_DIR", tmp_path)
    monkeypatch.setattr(page, "load_static", lambda folder=tmp_path: {})
    with pytest.raises(RuntimeError, match=r"index\.html"):
        add_page_routes(web.Application(), Settings(_env_file=None), SERVICE, KEYS)
