"""Who may call: API keys with scopes, checked per request against an in-process copy of the shared key table.

Every replica holds the table (:mod:`online_state.api_keys`: digests, names, scopes) in memory and re-reads it from
Redis every ``STREAMREC_AUTH_KEYS_REFRESH_S`` (2 s) in the background, so a check costs one SHA-256 and a dict lookup,
never a Redis round trip, and a revoked key stops working within the refresh interval. While Redis cannot be reached
the last table is kept (a Redis outage must not lock every writer out, nor let anyone in).

The operator's static key (``STREAMREC_API_KEY``) is accepted too, with every scope (``admin``): it is compared with
``hmac.compare_digest`` (constant time); table keys are found by their digest, so no comparison of secrets leaks
timing either. Keys never reach a log: only key *names* are logged or labelled.

Scopes: ``events:write`` for interaction events, ``catalog:write`` for catalogue events (``item_upsert``,
``item_remove``), ``recommendations:read`` for the read endpoints when ``STREAMREC_AUTH_READS`` is on, ``admin`` for
all of them. ``STREAMREC_AUTH=off`` opts writes out of all this (logged as a WARNING at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter, Gauge

from foundation.logs import get_logger
from foundation.redis_io import redis_client
from foundation.settings import Settings
from online_state.api_keys import ADMIN, KeyRecord, key_digest, load_all

log = get_logger(__name__)

HEADER: Final = "X-API-Key"
OPERATOR: Final = "operator"  # the name the static STREAMREC_API_KEY goes by (metrics, rate-limit buckets)

AUTH_REFUSED = Counter("streamrec_http_auth_refused_total",
                       "Requests refused for their API key: missing, unknown (401) or lacking a scope (403).",
                       ("endpoint", "reason"))
EVENTS_RATE_LIMITED = Counter("streamrec_http_events_rate_limited_total",
                              "Events refused with 429: their key was over its rate on this server process.")
KEYS_LOADED = Gauge("streamrec_auth_keys", "API keys in this process's copy of the key table.",
                    multiprocess_mode="liveall")
KEY_REFRESH_FAILURES = Counter("streamrec_auth_key_refresh_failures_total",
                               "Re-reads of the key table from Redis that failed (the last table was kept).")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not proceed: the status (401/403), and a message that names no secret."""

    status: int
    reason: str  # metric label: missing, unknown, scope
    message: str


class KeyTable:
    """The keys this process accepts: the static operator key and the shared table's records, by digest."""

    def __init__(self, static_key: str = "", records: dict[str, KeyRecord] | None = None) -> None:
        self._static = static_key.encode()
        self._operator = KeyRecord(OPERATOR, frozenset({ADMIN}), 0)
        self._by_digest: dict[str, KeyRecord] = {}
        self.loaded = False  # a table was read from Redis at least once
        if records is not None:
            self.replace(records)

    def replace(self, records: dict[str, KeyRecord]) -> None:
        self._by_digest = dict(records)
        self.loaded = True
        KEYS_LOADED.set(len(self._by_digest))

    @property
    def names(self) -> set[str]:
        return {record.name for record in self._by_digest.values()} | ({OPERATOR} if self._static else set())

    @property
    def empty(self) -> bool:
        return not self._static and not self._by_digest

    def identify(self, presented: str) -> KeyRecord | None:
        """The record of the key presented, or None when it is none of ours."""
        if not presented:
            return None
        if self._static and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), self._static):
            return self._operator
        return self._by_digest.get(key_digest(presented))

    def __repr__(self) -> str:  # never the digests, nor the static key
        return f"KeyTable(keys={len(self._by_digest)}, static_key={'set' if self._static else 'none'})"


def authorize(table: KeyTable, presented: str | None, needed: Iterable[str]) -> KeyRecord | Refusal:
    """The caller's record when its key has every scope of ``needed``, else the refusal (401 or 403)."""
    if not presented:
        return Refusal(401, "missing", f"this endpoint needs an API key in the {HEADER} header")
    record = table.identify(presented)
    if record is None:
        return Refusal(401, "unknown", f"the {HEADER} is not a valid key (unknown or revoked)")
    missing = sorted(scope for scope in set(needed) if not record.allows(scope))
    if missing:
        return Refusal(403, "scope", f"the key {record.name!r} lacks the scope {', '.join(missing)}")
    return record


KeySource = Callable[[], Awaitable[dict[str, KeyRecord]]]


class KeyRefresher:
    """Keeps a :class:`KeyTable` in step with the shared table: one read at start, then one every ``interval_s``."""

    def __init__(self, table: KeyTable, load: KeySource, interval_s: float,
                 on_replace: Callable[[set[str]], None] | None = None) -> None:
        self.table, self._load, self.interval_s = table, load, interval_s
        self._on_replace = on_replace  # told the key names after each re-read (the rate limiter drops the rest)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def refresh(self) -> bool:
        """One re-read; on failure the table is kept (logged once per outage, counted every time)."""
        try:
            async with asyncio.timeout(max(1.0, self.interval_s)):
                records = await self._load()
        except Exception as exc:  # Redis down, a timeout, a malformed row: keep serving the last table
            KEY_REFRESH_FAILURES.inc()
            if not self._failing:
                log.warning("cannot re-read the API-key table; keeping the last one", error=type(exc).__name__,
                            detail=str(exc)[:200], keys=len(self.table.names))
            self._failing = True
            return False
        if self._failing:
            log.info("API-key table re-read again", keys=len(records))
        self._failing = False
        self.table.replace(records)
        if self._on_replace is not None:
            self._on_replace(self.table.names)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-key-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def redis_key_source(settings: Settings) -> tuple[KeySource, Callable[[], Awaitable[None]]]:
    """Load from the configured Redis (short timeouts: a hung Redis must not stall a refresh); (load, close)."""
    client = redis_client(settings, socket_connect_timeout=1.0, socket_timeout=1.0)

    async def load() -> dict[str, KeyRecord]:
        return await load_all(client)

    return load, client.aclose


def log_auth_mode(settings: Settings, table: KeyTable) -> None:
    """The start-up lines an operator must not miss: auth off, or on with no key to pass it."""
    if not settings.auth:
        log.warning("AUTH IS OFF (STREAMREC_AUTH=off): anyone who can reach this server may POST events, catalogue "
                    "events included. Turn it on (the default) and give writers keys: streamrec keys create")
    elif table.empty:
        log.warning("no API key exists yet: every POST /v1/events gets 401. Make one with: streamrec keys create "
                    "--scopes events:write (or set STREAMREC_API_KEY, the operator's key)")
    else:
        log.info("API keys required for writes", keys=len(table.names), reads=settings.auth_reads)
