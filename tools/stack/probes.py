"""Liveness checks ("does it answer?") for the local services: Kafka metadata, group coordinator, Redis PING."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

from foundation.kafka_io import make_admin
from foundation.redis_io import redis_client
from foundation.settings import Settings


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it), for servers started by tests and benchmarks."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """Silence aiokafka's connection errors while polling a broker that is expected to be down."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


async def kafka_answers(settings: Settings, host: str, timeout_s: float = 5.0) -> Probe:
    """A metadata request through aiokafka's admin client, logged in as ``settings`` say (SASL, TLS): the broker
    is up and serving requests to our clients. Probes ``host`` on the settings' Kafka port."""
    port = settings.kafka_port
    if not port_open(host, port):
        return Probe(False, f"nothing listens on {host}:{port}")
    admin = make_admin(
        settings, bootstrap=f"{host}:{port}", client_id="streamrec-stack-probe",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        with quiet_aiokafka():
            async with asyncio.timeout(timeout_s):
                await admin.start()
                cluster = await admin.describe_cluster()
    except Exception as exc:  # any failure means "not ready yet"
        return Probe(False, f"metadata request failed: {type(exc).__name__}: {exc}".rstrip(": "))
    finally:
        with quiet_aiokafka(), contextlib.suppress(Exception):
            await admin.close()
    brokers = cluster.get("brokers") or []
    if not brokers:
        return Probe(False, "metadata lists no broker yet")
    return Probe(True, f"cluster {cluster.get('cluster_id')}, {len(brokers)} broker(s)")


async def wait_group_coordinator(settings: Settings, host: str, timeout_s: float = 60.0) -> None:
    """Wait until the group coordinator answers (the broker creates ``__consumer_offsets`` on demand).

    Done once by ``stack up`` so that the first consumer group of a test or worker joins at once
    instead of retrying through COORDINATOR_NOT_AVAILABLE.
    """
    admin = make_admin(settings, bootstrap=f"{host}:{settings.kafka_port}", client_id="streamrec-stack-probe")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        with quiet_aiokafka():
            await admin.start()
            while True:
                try:
                    await admin.find_coordinator("streamrec-stack-warmup")
                    return
                except Exception:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
    finally:
        with quiet_aiokafka(), contextlib.suppress(Exception):
            await admin.close()


async def redis_answers(settings: Settings, host: str, timeout_s: float = 2.0) -> Probe:
    """PING answered with PONG, with the settings' password and TLS, on ``host`` at the settings' Redis port."""
    port = settings.redis_port
    if not port_open(host, port):
        return Probe(False, f"nothing listens on {host}:{port}")
    url = urlunparse(urlparse(settings.redis_url)._replace(netloc=f"{host}:{port}", path="/0"))
    client = redis_client(settings, url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        await client.ping()
        info = await client.info("server")
    except Exception as exc:  # any failure means "not ready yet"
        return Probe(False, f"PING failed: {type(exc).__name__}: {exc}")
    finally:
        await client.aclose()
    return Probe(True, f"redis {info.get('redis_version', '?')}")
