"""Overload: a real server (bundle, Redis, ONNX, HNSW) with a tiny admission limit, flooded. Every request is
answered at once (200, or 503 with Retry-After), nothing waits in a queue, nothing is left running after.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from foundation.settings import Settings
from serving.app import create_app
from serving.service import RecommendationService

FLOOD = 60


@pytest.fixture(scope="module")
def artifacts(small_bundle: Path) -> Path:
    return small_bundle


async def test_a_flooded_server_sheds_at_once_and_leaves_nothing_behind(
    stack: Settings, redis_client: aioredis.Redis, artifacts: Path
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))  # e.g. a task never awaited
    settings = stack.model_copy(update={"serving_admission_initial_limit": 2, "serving_admission_min_limit": 1,
                                        "serving_admission_max_limit": 2})

    async def service(s: Settings, a: Path | None) -> RecommendationService:
        return await RecommendationService.start(s, a, tail_index=False, watch_bundle=False)

    before = {t for t in asyncio.all_tasks() if not t.done()}
    client = TestClient(TestServer(create_app(settings, artifacts, service_factory=service)))
    await client.start_server()
    try:
        assert (await client.get("/v1/recommendations/warm-up")).status == 200

        async def one(n: int) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            response = await client.get(f"/v1/recommendations/flood-{n}", params={"k": "20"})
            await response.read()
            return response.status, time.perf_counter() - started, response.headers.get("Retry-After")

        results = await asyncio.gather(*(one(n) for n in range(FLOOD)))
        statuses = sorted({status for status, _, _ in results})
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        shed = [seconds for status, seconds, _ in results if status == 503]
        assert all(retry == "1" for status, _, retry in results if status == 503)
        # Refused at once: a refusal costs no model work, so it is answered within the time of a few requests
        # that were admitted (never after the flood drains, as a queue would).
        slowest_admitted = max(seconds for status, seconds, _ in results if status == 200)
        assert sorted(shed)[len(shed) // 2] < slowest_admitted
        text = await (await client.get("/metrics")).text()
        assert "streamrec_http_admission_shed_total" in text and "streamrec_http_admission_in_flight 0.0" in text
        # After the flood the server answers normally again.
        assert (await client.get("/v1/recommendations/after-the-flood")).status == 200
    finally:
        await client.close()
        loop.set_exception_handler(None)
    await asyncio.sleep(0.1)
    leaked = [t for t in asyncio.all_tasks() if not t.done() and t not in before and t is not asyncio.current_task()]
    assert not leaked, leaked
    assert not loop_errors, loop_errors
