"""Redis clients built from the settings, so every process connects (password, ACL user, TLS) the same way.

``redis.Redis.from_url(settings.redis_url)`` alone would drop ``redis_password``, ``redis_username`` and
``redis_tls_ca``: every call site goes through :func:`redis_client` (async) or :func:`redis_client_sync`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis

from foundation.settings import Settings


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


def redis_client(settings: Settings, url: str | None = None, **overrides: Any) -> aioredis.Redis:
    """An asyncio client of ``url`` (default ``settings.redis_url``) with the settings' credentials and TLS."""
    target = url or settings.redis_url
    return aioredis.Redis.from_url(target, **{**connection_options(settings, target), **overrides})


def redis_client_sync(settings: Settings, url: str | None = None, **overrides: Any) -> redis.Redis:
    """:func:`redis_client` for synchronous code (tools, benchmarks' set-up)."""
    target = url or settings.redis_url
    return redis.Redis.from_url(target, **{**connection_options(settings, target), **overrides})
