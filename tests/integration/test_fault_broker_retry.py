"""Fault: the Kafka broker SIGKILLed and restarted while a client posts events and retries every failure.

What it kills: the broker of a stack of its own (through its pid record), mid-stream, then restarts it
(``tools.stack.manager.up`` starts only what is down). What runs: ``streamrec serve`` (a real server process, with
a static API key the client sends) and ``streamrec worker`` (a real worker process). The client posts distinct
plays (unique event_ids) one request each and retries every 503, 429 or connection error with the same body,
the way the 503's message invites; one more event is POSTed three times on purpose.

What it compares: once every partition's stored offset reaches the topic's end, each user's play counter (the
``n`` counts of its feature state) equals the number of distinct plays posted for that user: every acknowledged
event applied, none applied twice, although retries of 503s the broker did take reach the topic twice (the
worker's ``duplicate`` count says how many). With de-duplication off (``STREAMREC_WORKER_DEDUPE_WINDOW=0``) the
triple POST alone makes the comparison fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import TopicPartition

from foundation.child_env import settings_env
from foundation.kafka_io import make_consumer
from foundation.redis_io import redis_client
from foundation.settings import ApiKey, Settings
from models.bundle import open_bundle
from online_state.feature_codec import decode_user_blob
from online_state.keys import DEFAULT_KEYS
from streams.catalogue import LiveCatalogue
from tools.stack import manager, process
from tools.stack.layout import StackLayout
from tools.stack.probes import free_port

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
KEY = "fault-suite-static-key-0123456789"
USERS = ("br-u1", "br-u2", "br-u3", "br-u4")
PLAYS_PER_USER = 15
KILL_AFTER = 20  # accepted events before the broker is killed
DOWN_FOR_S = 2.0  # the client keeps posting (and retrying) this long against a dead broker before the restart


def test_broker_killed_and_restarted_while_a_client_retries_applies_every_event_once(
        stack_factory: Any, small_bundle: Path, tmp_path: Path) -> None:
    own = stack_factory("brokerretry", 23092, 23093, 19479)
    asyncio.run(asyncio.wait_for(_scenario(own, small_bundle, tmp_path), 150))


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def _scenario(own: Settings, artifacts: Path, tmp: Path) -> None:
    settings = own.model_copy(update={"api_key": ApiKey(KEY), "log_level": "WARNING"})
    env = settings_env(settings, base=dict(os.environ))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port, metrics_port = free_port(), free_port()
    items = LiveCatalogue.from_bundle(open_bundle(artifacts)).static().item_ids[:5]
    worker = _spawn(["streamrec.commands.worker", "--artifacts", str(artifacts), "--metrics-port", str(metrics_port),
                     "--session-timeout-ms", "6000"], env, tmp / "worker.log")
    server = _spawn(["streamrec.cli", "serve", "--artifacts", str(artifacts), "--port", str(port), "--workers", "1"],
                    env, tmp / "serve.log")
    redis = redis_client(settings)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}",
                                         timeout=aiohttp.ClientTimeout(total=10)) as http:
            await _until_ready(http, server, tmp / "serve.log")
            client = _RetryingClient(http)
            plays = [_play(u, n, items) for n in range(PLAYS_PER_USER) for u in USERS]
            kafka_pid = process.read_record(StackLayout.from_settings(own).kafka_pid_file)
            assert kafka_pid is not None
            for event in plays[:KILL_AFTER]:
                await client.post(event)
            os.kill(kafka_pid.pid, signal.SIGKILL)  # mid-stream: the next posts meet a dead broker
            restart = asyncio.create_task(_restart_after(own, DOWN_FOR_S))
            for event in plays[KILL_AFTER:]:
                await client.post(event)
            await restart
            triple = _play("br-u1", 999, items)
            for _ in range(3):
                await client.post(triple)
            assert client.failures > 0, "no post failed: the broker's death was not exercised"

            ends = await _end_offsets(settings)
            await _until_applied(redis, settings, ends, worker, tmp / "worker.log")
            duplicates = await _duplicates(http, metrics_port)
        counts = {u: decode_user_blob(await redis.get(DEFAULT_KEYS.user_state(u))).n[1] for u in USERS}
        expected = {u: PLAYS_PER_USER + (u == "br-u1") for u in USERS}
        assert counts == expected, (f"play counts {counts} != distinct plays {expected} "
                                    f"({client.failures} failed posts retried, {duplicates} duplicates dropped)")
        assert duplicates >= 2  # at least the triple POST's two repeats
    finally:
        await redis.aclose()
        process.terminate(server)
        process.terminate(worker)


def _play(user: str, n: int, items: list[str]) -> bytes:
    return orjson.dumps({"type": "play", "event_id": f"{user}-play-{n}", "ts": T0 + n, "schema_version": 1,
                         "user_id": user, "item_id": items[n % len(items)]})


class _RetryingClient:
    """POSTs one event per request, retrying it (same body, same event_id) until it is accepted."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.failures = 0  # answers other than 202 (and connection errors), each retried

    async def post(self, body: bytes, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                async with self.http.post("/v1/events", data=body, headers={
                        "X-API-Key": KEY, "Content-Type": "application/json"}) as response:
                    if response.status == 202:
                        return
                    assert response.status in (429, 503), (response.status, await response.text())
                    if response.status == 503:
                        answer = await response.json()
                        assert answer["written"] == "unknown" and "same event_id is safe" in answer["error"]["message"]
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass
            self.failures += 1
            assert time.monotonic() < deadline, "an event was never accepted"
            await asyncio.sleep(0.2)


async def _until_ready(http: aiohttp.ClientSession, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get("/readyz") as response:
                if response.status == 200:
                    return
        assert server.poll() is None, log_path.read_text()[-4000:]
        assert time.monotonic() < deadline, "streamrec serve did not become ready"
        await asyncio.sleep(0.2)


async def _restart_after(own: Settings, seconds: float) -> None:
    await asyncio.sleep(seconds)  # the outage's length is the scenario, not a synchronisation
    result = await manager.up(own)
    assert result.started == ("kafka",), result


async def _end_offsets(settings: Settings) -> dict[int, int]:
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_interactions, p) for p in range(settings.interactions_partitions)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _until_applied(redis: Any, settings: Settings, ends: dict[int, int], worker: subprocess.Popen[bytes],
                         log_path: Path) -> None:
    """Until every interactions partition's stored offset is its end - 1 (each record applied or dropped)."""
    keys = [DEFAULT_KEYS.offset(settings.topic_interactions, p) for p in sorted(ends)]
    wanted = [ends[p] - 1 for p in sorted(ends)]
    deadline = time.monotonic() + 60
    while True:
        stored = [int(v) if v is not None else -1 for v in await redis.mget(keys)]
        if stored == wanted:
            return
        assert worker.poll() is None, log_path.read_text()[-4000:]
        assert time.monotonic() < deadline, f"stored offsets {stored}, topic ends {wanted}"
        await asyncio.sleep(0.1)


async def _duplicates(http: aiohttp.ClientSession, port: int) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("streamrec_worker_events_total") and 'outcome="duplicate"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
