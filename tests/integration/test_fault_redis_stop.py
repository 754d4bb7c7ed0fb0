"""Fault: Redis frozen with SIGSTOP while a real ``streamrec serve`` answers /v1/recommendations (issue 11, item 8).

What it stops: the ``redis-server`` of a stack of this test's own (``stack_factory``; its pid from the stack's pid
record), with SIGSTOP: connections stay open and nothing answers, the worst case for a client (no error, only
silence). Then SIGCONT.

What it compares: before, a normal answer (200, ``degraded: false``); while Redis is stopped, every answer (one by
one and several at once) is a 200 within the request budget (``request_timeout_s``) plus a little HTTP and process
overhead, marked ``degraded: true`` with its reasons, and nothing is a 5xx; after SIGCONT, normal answers again
within a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout
from test_schemathesis import running_server
from test_worker_dead_letters import per_test_settings

from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from tools.stack import process
from tools.stack.layout import StackLayout

API_KEY = "redis-stop-operator-key"
OVERHEAD_S = 0.5  # HTTP, JSON and scheduling on top of the service's budget, on a busy 2-core CI machine
USERS = [f"u{n}" for n in range(1, 9)]


def test_redis_sigstop_gives_degraded_answers_within_the_budget_then_normal_ones(
    stack_factory: Any, small_bundle: Path, tmp_path: Path
) -> None:
    own = stack_factory("rstop", 26092, 26093, 26379)  # its Redis is frozen here: not the session's stack
    settings = per_test_settings(own, "redis-stop").model_copy(update={"api_key": API_KEY})
    asyncio.run(ensure_topics_retrying(settings))
    record = process.read_record(StackLayout.from_settings(own).redis_pid_file)
    assert record is not None and process.owns(record)
    with running_server(settings, dict(os.environ), small_bundle, tmp_path / "serve.log") as url:
        try:
            asyncio.run(_frozen_redis(url, settings, record.pid))
        finally:
            os.kill(record.pid, signal.SIGCONT)  # never leave the stack frozen (its `stack down` would hang)


async def _get(session: ClientSession, user: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with session.get(f"/v1/recommendations/{user}", params={"k": "5"}) as response:
        body = await response.json()
        return response.status, body, time.monotonic() - started


async def _frozen_redis(url: str, settings: Settings, redis_pid: int) -> None:
    budget = settings.request_timeout_s + OVERHEAD_S
    async with ClientSession(url, headers={"X-API-Key": API_KEY}, timeout=ClientTimeout(total=30)) as session:
        status, body, _ = await _get(session, "u1")
        assert status == 200 and body["degraded"] is False, body

        os.kill(redis_pid, signal.SIGSTOP)
        answers = [await _get(session, user) for user in USERS]  # one by one: each waits on the frozen Redis
        answers += await asyncio.gather(*(_get(session, user) for user in USERS))  # and several at once
        for status, body, seconds in answers:
            assert status == 200, body  # never a 5xx
            assert body["degraded"] is True and body["degraded_reasons"], body
            assert seconds < budget, f"{seconds:.2f} s > {budget:.2f} s: {body}"
        slowest = max(seconds for _, _, seconds in answers)
        print(f"{len(answers)} answers with Redis stopped, slowest {slowest:.2f} s (budget {budget:.2f} s)")

        os.kill(redis_pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while True:
            status, body, _ = await _get(session, "u1")
            if status == 200 and body["degraded"] is False:
                break
            assert status == 200, body
            assert time.monotonic() < deadline, f"still degraded 10 s after SIGCONT: {body}"
            await asyncio.sleep(0.1)
        recovered = 10 - (deadline - time.monotonic())
        print(f"normal answers again {recovered:.1f} s after SIGCONT")
