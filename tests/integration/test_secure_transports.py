"""TLS as an option of the stack (``stack_tls``): Redis on ``rediss://`` and Kafka SASL_SSL, with a CA the stack
generates. The clients (producer, consumer, admin, Redis, the CLI's probes) connect through their settings alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from kafka_checks import assert_kafka_refuses
from redis.exceptions import ConnectionError as RedisConnectionError

from foundation.kafka_io import make_producer, start_groupless, stop_quietly
from foundation.redis_io import redis_client
from foundation.settings import Settings
from tools.stack.layout import StackLayout

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _round_trip(settings: Settings) -> None:
    """A keyed record through an idempotent producer, read back by a groupless consumer; a Redis SET/GET."""
    topic, value = settings.topic_interactions, f"tls-{uuid.uuid4().hex}".encode()
    consumer, ends = await start_groupless(settings, topic, auto_offset_reset="latest")
    try:
        for tp, end in ends.items():
            consumer.seek(tp, end)
        producer = make_producer(settings)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=value, key=b"tls-user")
        finally:
            await producer.stop()
        async with asyncio.timeout(30):
            seen: list[bytes] = []
            while value not in seen:
                batches = await consumer.getmany(timeout_ms=500)
                seen += [m.value for messages in batches.values() for m in messages if m.value is not None]
    finally:
        await stop_quietly(consumer)
    client = redis_client(settings)
    try:
        assert await client.set("streamrec:it:tls", value) is True
        assert await client.get("streamrec:it:tls") == value
    finally:
        await client.aclose()


async def _refused(settings: Settings) -> None:
    """Plaintext clients get nothing from the TLS ports."""
    plain_redis = aioredis.Redis.from_url(settings.redis_url.replace("rediss://", "redis://"),
                                          password=settings.redis_password.get_secret_value(),
                                          socket_timeout=3, socket_connect_timeout=3)
    try:
        with pytest.raises((RedisConnectionError, TimeoutError)):
            await plain_redis.ping()
    finally:
        await plain_redis.aclose()
    await assert_kafka_refuses(settings.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"}),
                               request_timeout_ms=3000)


def test_tls_stack_serves_rediss_and_sasl_ssl(
    stack_factory: Callable[..., Settings], env_for: Callable[[Settings], dict[str, str]], tmp_path: Path
) -> None:
    # Ports 5000 above the session's (see test_stack for the others).
    settings = stack_factory("tls", 24092, 24093, 24379, stack_tls=True)
    layout = StackLayout.from_settings(settings)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.redis_url.startswith("rediss://")
    assert Path(settings.kafka_ssl_cafile) == Path(settings.redis_tls_ca) == layout.tls_dir / "ca.crt"
    assert (layout.tls_dir / "server.key").stat().st_mode & 0o777 == 0o600

    asyncio.run(_round_trip(settings))
    asyncio.run(_refused(settings))

    # A process that only knows the state dir reads credentials.env: TLS, the CA and the logins.
    found = Settings(state_dir=settings.state_dir, kafka_bootstrap=settings.kafka_bootstrap,
                     _env_file=(layout.credentials_file,))
    assert (found.kafka_security_protocol, found.redis_url, found.redis_tls_ca) == (
        "SASL_SSL", settings.redis_url, settings.redis_tls_ca)
    asyncio.run(_round_trip(found))

    # The CLI connects the same way: its health probes, and `replay` publishing a generated log over SASL_SSL.
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], env=env_for(settings), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    status = cli("stack", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["healthy"] is True, status.stdout
    world = tmp_path / "world"
    assert cli("generate", "--out", str(world), "--users", "10", "--items", "50", "--events", "300",
               "--seed", "3").returncode == 0
    before = asyncio.run(_end_offsets(settings))
    replayed = cli("replay", str(world), "--json")
    assert replayed.returncode == 0, replayed.stderr
    published = json.loads(replayed.stdout)["published"]
    assert published >= 300
    assert asyncio.run(_end_offsets(settings)) - before == published


async def _end_offsets(settings: Settings) -> int:
    """Records on the interactions and catalog topics, read over the settings' transport."""
    total = 0
    for topic in (settings.topic_interactions, settings.topic_catalog):
        consumer, ends = await start_groupless(settings, topic)
        await stop_quietly(consumer)
        total += sum(ends.values())
    return total
