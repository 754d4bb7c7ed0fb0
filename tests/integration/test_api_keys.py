"""API keys end to end (issue 11, items 1 and 4): keys made, listed and revoked with the ``streamrec keys`` CLI, in the
real Redis, checked by two real ``streamrec serve`` processes (two replicas on their own ports) that publish to the
real broker.

What each test compares: the status a replica answers for a key (202 / 401 / 403 / 429) against what the key's
scopes, its revocation and its rate allow, and how long after ``keys revoke`` both replicas refuse it (within the
refresh interval plus slack).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from test_worker_dead_letters import per_test_settings

from foundation.child_env import settings_env
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.api_keys import key_digest
from online_state.keys import DEFAULT_KEYS
from tools.stack.probes import free_port

REPO = Path(__file__).resolve().parents[2]
STREAMREC = [sys.executable, "-m", "streamrec.cli"]
REFRESH_S = 0.5  # the replicas' STREAMREC_AUTH_KEYS_REFRESH_S
RATE, BURST = 200, 100  # events per second per key per replica, and the bucket
T0 = 1_760_000_000_000


@pytest.fixture(scope="module")
def artifacts(small_bundle: Path) -> Path:
    return small_bundle


def _play(n: int) -> dict[str, Any]:
    return {"type": "play", "event_id": f"k-{n}", "ts": T0 + n, "schema_version": 1, "user_id": f"u{n % 7}",
            "item_id": "i1"}


UPSERT = {"type": "item_upsert", "event_id": "c-1", "ts": T0, "schema_version": 1, "item_id": "new-title",
          "title": "A New Heist", "genres": ["Crime"], "release_ts": T0}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STREAMREC, *args], env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


def _create_key(env: dict[str, str], name: str, scopes: str) -> str:
    done = _cli(["keys", "create", "--scopes", scopes, "--name", name, "--json"], env)
    assert done.returncode == 0, done.stderr
    created = orjson.loads(done.stdout)
    assert created["name"] == name and created["key"].startswith("srk_")
    return str(created["key"])


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    body: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return self.body


async def _post(url: str, key: str | None, body: Any) -> Answer:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/events", data=orjson.dumps(body), headers=headers,
            timeout=aiohttp.ClientTimeout(total=10)) as response:
        return Answer(response.status, dict(response.headers), await response.json(content_type=None))


def _wait_ready(url: str, child: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert child.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "streamrec serve did not become ready:\n" + log.read_text()[-3000:]
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            if orjson.loads(response.read())["events_producer"]:  # a 503 raises HTTPError (an OSError)
                return
        time.sleep(0.3)


@pytest.fixture(scope="module")
def replicas(stack: Settings, stack_env: dict[str, str], artifacts: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], dict[str, str], list[Path]]]:
    """Two ``streamrec serve`` processes on their own ports, sharing this module's topics and the stack's Redis;
    yields their URLs, the environment that points the CLI at the same stack, and their log files."""
    settings = per_test_settings(stack, "api-keys")
    asyncio.run(ensure_topics_retrying(settings))
    env = {**settings_env(settings, base=stack_env), "STREAMREC_AUTH": "true",
           "STREAMREC_AUTH_KEYS_REFRESH_S": str(REFRESH_S), "STREAMREC_RATE_LIMIT_EVENTS_PER_S": str(RATE),
           "STREAMREC_RATE_LIMIT_BURST": str(BURST)}
    env.pop("STREAMREC_API_KEY", None)  # only keys of the table
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    logs = tmp_path_factory.mktemp("api-keys")
    children: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    try:
        for n in range(2):
            port = free_port()
            log = logs / f"serve-{n}.log"
            with log.open("wb") as out:
                child = subprocess.Popen([*STREAMREC, "serve", "--artifacts", str(artifacts), "--port", str(port)],
                                         env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            children.append((child, log, f"http://127.0.0.1:{port}"))
        for child, log, url in children:
            _wait_ready(url, child, log)
        yield [url for _, _, url in children], env, [log for _, log, _ in children]
    finally:
        for child, _, _ in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child, _, _ in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)


async def test_a_cli_key_writes_on_both_replicas_within_its_scopes_until_revoked(
        replicas: tuple[list[str], dict[str, str], list[Path]], redis_client: aioredis.Redis) -> None:
    (one, two), env, logs = replicas
    assert (await _post(one, None, _play(0))).status_code == 401, "writes need a key by default"
    key = _create_key(env, "ingest", "events:write")
    # Stored hashed: the table holds the key's name and digest, never the key.
    stored = await redis_client.hgetall(DEFAULT_KEYS.api_keys)
    assert list(stored) == [b"ingest"] and key.encode() not in stored[b"ingest"]

    deadline = time.monotonic() + REFRESH_S + 5
    for url in (one, two):  # each replica picks the new key up at its next refresh
        while (status := (await _post(url, key, _play(1))).status_code) == 401:
            assert time.monotonic() < deadline, f"{url} never accepted the new key"
            await asyncio.sleep(0.05)
        assert status == 202, status
    forbidden = await _post(one, key, UPSERT)
    assert forbidden.status_code == 403 and "catalog:write" in forbidden.json()["error"]["message"]
    assert forbidden.json()["error"]["field"] == "X-API-Key"
    assert (await _post(two, key, [_play(2), UPSERT])).status_code == 403, "a mixed batch needs both scopes"

    listed = _cli(["keys", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    assert [(r["name"], r["scopes"]) for r in rows] == [("ingest", ["events:write"])]
    assert key not in listed.stdout and "sha256" not in listed.stdout

    revoked = _cli(["keys", "revoke", "ingest"], env)
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < 2:
        for url in (one, two):
            if url not in refused and (await _post(url, key, _play(3))).status_code == 401:
                refused[url] = time.monotonic() - started
        assert time.monotonic() - started < REFRESH_S + 3, f"still accepted after revoke: {refused}"
        await asyncio.sleep(0.05)
    assert max(refused.values()) < REFRESH_S + 1.5, refused
    assert _cli(["keys", "revoke", "ingest"], env).returncode == 1, "revoking twice says there is no such key"
    for log in logs:  # the servers logged start-up and refusals, never the key nor its digest
        text = log.read_text(errors="replace")
        assert "serving" in text and key not in text and key_digest(key) not in text


async def test_a_flooding_key_gets_429_and_another_key_is_unaffected(
        replicas: tuple[list[str], dict[str, str], list[Path]], redis_client: aioredis.Redis) -> None:
    (one, _two), env, _logs = replicas
    flood_key = _create_key(env, "flood", "events:write")
    calm_key = _create_key(env, "calm", "events:write,catalog:write")
    deadline = time.monotonic() + REFRESH_S + 5
    while (await _post(one, calm_key, UPSERT)).status_code == 401:  # both keys are in the replica's table
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    while (await _post(one, flood_key, _play(0))).status_code == 401:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    batch = [_play(n) for n in range(50)]
    statuses = [await _post(one, flood_key, batch) for _ in range(8)]  # 400 events at once, far over a 100 burst
    codes = [r.status_code for r in statuses]
    assert 429 in codes and codes[0] == 202, codes
    limited = next(r for r in statuses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.json()["error"]["field"] == "rate"
    # Another key has its own bucket: unaffected by the flood.
    assert (await _post(one, calm_key, batch)).status_code == 202
    assert (await _post(one, calm_key, UPSERT)).status_code == 202
    # The flooding key gets through again once its bucket refills (Retry-After is honest).
    await asyncio.sleep(int(limited.headers["Retry-After"]))
    assert (await _post(one, flood_key, batch)).status_code == 202
