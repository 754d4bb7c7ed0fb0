"""Redis clients built from the settings, so every process connects (password, ACL user, TLS) the same way.

``redis.Redis.from_url(settings.redis_url)`` alone would drop ``redis_password``, ``redis_username`` and
``redis_tls_ca``: every call site goes through :func:`redis_client` (async) or :func:`redis_client_sync`.

With ``settings.redis_cluster`` both return redis-py's cluster client instead (``redis_url`` names one seed node;
the client discovers the others). A failover or a moved slot is then the library's business: it refreshes the
slot map and retries (:data:`CLUSTER_RETRIES` attempts, exponential backoff up to :data:`CLUSTER_BACKOFF_CAP_S`),
which rides through the few seconds a replica needs to be promoted (the stack's ``cluster-node-timeout`` is 2 s).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.retry as aioretry
import redis.cluster
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from foundation.settings import Settings

# 20 attempts with backoff capped at 1 s: about 15 s of retrying, several failovers' worth (detection takes
# cluster-node-timeout, the replica's election about as long again).
CLUSTER_RETRIES = 20
CLUSTER_BACKOFF_BASE_S = 0.05
CLUSTER_BACKOFF_CAP_S = 1.0


def _cluster_backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=CLUSTER_BACKOFF_CAP_S, base=CLUSTER_BACKOFF_BASE_S)


def connection_options(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``from_url(url, ...)`` that carry the credentials and TLS settings.

    A password or user inside the URL itself wins (redis-py lets the URL's values override these)."""
    options: dict[str, Any] = {}
    password = settings.redis_password.get_secret_value()
    if password:
        options["password"] = password
        if settings.redis_username:
            options["username"] = settings.redis_username
    if urlparse(url or settings.redis_url).scheme == "rediss":
        # Only SSL connections take these: a plain connection refuses unknown keywords.
        options["ssl_cert_reqs"] = "required"
        if settings.redis_tls_ca:
            options["ssl_ca_certs"] = settings.redis_tls_ca
    return options


def cluster_options(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """:func:`connection_options` plus what a cluster client needs: retries across failovers. A plain
    connection's ``ssl_cert_reqs`` is the cluster client's ``ssl=True`` (from a rediss:// URL) plus its own
    default ``ssl_cert_reqs="required"``."""
    return {**connection_options(settings, url), "retry": aioretry.Retry(_cluster_backoff(), CLUSTER_RETRIES)}


def redis_client(
    settings: Settings, url: str | None = None, *, cluster: bool | None = None, **overrides: Any
) -> aioredis.Redis:
    """An asyncio client of ``url`` (default ``settings.redis_url``) with the settings' credentials and TLS.

    A :class:`redis.asyncio.cluster.RedisCluster` when ``cluster`` (default ``settings.redis_cluster``) is true;
    it offers the same commands (typed here as a plain client: callers use the common interface)."""
    target = url or settings.redis_url
    if settings.redis_cluster if cluster is None else cluster:
        overrides.pop("retry_on_timeout", None)  # a cluster client has its own retry policy (and refuses this one)
        options = cluster_options(settings, target)
        if settings.redis_cluster_nodes:
            options["startup_nodes"] = [aiocluster.ClusterNode(h, int(p)) for h, p in _seed_nodes(settings)]
        client: Any = aiocluster.RedisCluster.from_url(target, **{**options, **overrides})
        return client
    return aioredis.Redis.from_url(target, **{**connection_options(settings, target), **overrides})


def redis_client_sync(
    settings: Settings, url: str | None = None, *, cluster: bool | None = None, **overrides: Any
) -> redis.Redis:
    """:func:`redis_client` for synchronous code (tools, benchmarks' set-up)."""
    target = url or settings.redis_url
    if settings.redis_cluster if cluster is None else cluster:
        options = {**connection_options(settings, target),
                   "retry": redis.retry.Retry(_cluster_backoff(), CLUSTER_RETRIES)}
        if settings.redis_cluster_nodes:
            options["startup_nodes"] = [redis.cluster.ClusterNode(h, int(p)) for h, p in _seed_nodes(settings)]
        client: Any = redis.cluster.RedisCluster.from_url(target, **{**options, **overrides})
        return client
    return redis.Redis.from_url(target, **{**connection_options(settings, target), **overrides})


def _seed_nodes(settings: Settings) -> list[tuple[str, str]]:
    """``redis_cluster_nodes`` as (host, port) pairs: the seeds beside ``redis_url``'s node."""
    return [tuple(node.strip().rsplit(":", 1)) for node in settings.redis_cluster_nodes.split(",")  # type: ignore[misc]
            if node.strip()]


async def mget_any(client: Any, keys: list[str]) -> list[Any]:
    """``MGET`` of keys in any slots: one command on one redis-server, split by slot on a cluster (redis-py's
    ``mget_nonatomic``; a plain ``MGET`` there is refused as ``CROSSSLOT``)."""
    if isinstance(client, aiocluster.RedisCluster):
        return list(await client.mget_nonatomic(keys))
    return list(await client.mget(keys))
