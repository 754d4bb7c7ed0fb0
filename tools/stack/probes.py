"""Liveness checks ("does it answer?") for the local services: Kafka metadata, group coordinator, Redis PING."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
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


async def kafka_answers(
    settings: Settings, host: str, timeout_s: float = 5.0, *, port: int | None = None, brokers: int = 1
) -> Probe:
    """A metadata request through aiokafka's admin client, logged in as ``settings`` say (SASL, TLS): the broker
    is up and serving requests to our clients. Probes ``host`` on ``port`` (default: the settings' Kafka port);
    ready only once the metadata lists ``brokers`` brokers (a cluster's nodes all registered)."""
    port = port or settings.kafka_port
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
    listed = cluster.get("brokers") or []
    if not listed:
        return Probe(False, "metadata lists no broker yet")
    if len(listed) < brokers:
        return Probe(False, f"metadata lists {len(listed)} of {brokers} brokers")
    return Probe(True, f"cluster {cluster.get('cluster_id')}, {len(listed)} broker(s)")


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


def node_url(settings: Settings, host: str, port: int) -> str:
    """``settings.redis_url`` (scheme kept: redis:// or rediss://) pointed at one node, database 0."""
    return urlunparse(urlparse(settings.redis_url)._replace(netloc=f"{host}:{port}", path="/0"))


async def redis_answers(
    settings: Settings, host: str, timeout_s: float = 2.0, *, port: int | None = None, cluster: bool = False
) -> Probe:
    """PING answered with PONG, with the settings' password and TLS, on ``host`` at ``port`` (default: the settings'
    Redis port). With ``cluster`` the node must also report ``cluster_state:ok`` (it serves every slot)."""
    port = port or settings.redis_port
    if not port_open(host, port):
        return Probe(False, f"nothing listens on {host}:{port}")
    client = redis_client(settings, node_url(settings, host, port), cluster=False, socket_timeout=timeout_s,
                          socket_connect_timeout=timeout_s)
    try:
        await client.ping()
        info = await client.info("server")
        state = await cluster_info(client) if cluster else {}
        role = (await client.info("replication")).get("role", "?") if cluster else ""
    except Exception as exc:  # any failure means "not ready yet"
        return Probe(False, f"PING failed: {type(exc).__name__}: {exc}")
    finally:
        await client.aclose()
    detail = f"redis {info.get('redis_version', '?')}"
    if not cluster:
        return Probe(True, detail)
    detail += f", {role}, cluster_state:{state.get('cluster_state', '?')}"
    return Probe(state.get("cluster_state") == "ok", detail)


async def cluster_info(client: Any) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as text fields (cluster_state, cluster_size, cluster_known_nodes, ...)."""
    raw = await client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):  # redis-py parsed it
        return {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}
