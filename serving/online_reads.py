"""Stage 1's Redis read: everything candidate generation needs, in ONE pipelined round trip.

The keys and value formats belong to the stream workers; this module only batches their reads and
decodes with their helpers (``streams.user_vectors``, ``streams.session``, ``streams.trending``,
``online_state.redis_store``), so a layout change stays in one place:

- ``GET`` the online user vector (space-checked against the serving bundle),
- ``GET`` the session (its recent items: exclusions and because-you-watched seeds),
- ``GET`` the feature-store user value (its last 20 engaged items, for the same),
- ``ZREVRANGE .. WITHSCORES`` of the trending window's current and previous generation for the
  global scope and each known context dimension (country, device, hour),
- ``ZREVRANGEBYSCORE`` of the new releases.

Trending here combines the two generations' *top lists* only (an item outside one list counts 0
there), where ``streams.trending.read_trending`` runs the exact threshold algorithm over several
round trips: for a candidate source an approximate order of the top titles is enough, and the
request saves one or more round trips.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from online_state.redis_store import decode_user_blob
from streams.session import decode_session, session_key
from streams.trending import NEW_RELEASES, WINDOWS, generation, read_factor, scope_name, trend_key
from streams.user_vectors import unpack_user_vector
from streams.user_vectors import user_key as vector_key


@dataclass(frozen=True, slots=True)
class RequestScopes:
    """The trending scopes of a request's context (global first)."""

    country: str | None = None
    device: str | None = None
    hour: int | None = None

    def names(self) -> list[tuple[str, str]]:
        """``[(label, scope key part)]``: ``("all", "all")``, ``("country", "country:US")``, ..."""
        out = [("all", scope_name(None))]
        if self.country:
            out.append(("country", scope_name("country", self.country)))
        if self.device:
            out.append(("device", scope_name("device", self.device)))
        if self.hour is not None:
            out.append(("hour", scope_name("hour", self.hour)))
        return out


@dataclass(slots=True)
class OnlineState:
    """What stage 1 read for one request (empty values when a key is absent)."""

    user_vector: NDArray[np.float32] | None = None
    recent: list[tuple[str, int]] = field(default_factory=list)  # (item id, ts), session + feature state
    session_recent: list[tuple[str, int]] = field(default_factory=list)
    trending: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # scope label -> best first
    new_releases: list[tuple[str, int]] = field(default_factory=list)  # (item id, release ts), newest first


class SharedReads:
    """Per-process cache of the request-independent stage-1 reads (see the module docstring)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[Any, ...], tuple[float, int, Any]] = {}  # key -> (read at, now_ms, value)
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...], now_ms: int) -> Any | None:
        if self.ttl_s <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > self.ttl_s or abs(now_ms - entry[1]) > self.ttl_s * 1000:
            self.misses += 1
            return None
        self.hits += 1
        return entry[2]

    def put(self, key: tuple[Any, ...], now_ms: int, value: Any) -> None:
        if self.ttl_s > 0:
            if len(self._entries) > 4096:  # scopes x generations: bounded, drop the lot now and then
                self._entries.clear()
            self._entries[key] = (self._clock(), now_ms, value)


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


def _pairs(reply: list[Any]) -> tuple[list[Any], NDArray[np.float64]]:
    """(members, scores) of a raw ``ZREVRANGE .. WITHSCORES`` reply: flat ``[m, s, m, s, ...]`` (RESP2)
    or ``[[m, s], ...]`` (RESP3 and some clients)."""
    if not reply:
        return [], np.zeros(0)
    if isinstance(reply[0], list | tuple):
        members, raw = [m for m, _ in reply], [sc for _, sc in reply]
    else:
        members, raw = reply[0::2], reply[1::2]
    return members, np.asarray(raw).astype(np.float64)  # bytes (RESP2) or floats (RESP3), parsed in C


async def read_online_state(
    redis: Any, user_id: str, scopes: RequestScopes, now_ms: int, *, trending_k: int, new_k: int,
    window: str = "24h", space: int | None = None, dim: int | None = None, prefix: str = "sr",
    feature_user_key: str | None = None, shared: SharedReads | None = None,
) -> OnlineState:
    """One pipeline with every stage-1 read (see the module docstring); with ``shared``, the trending
    lists and new releases it holds are not read again."""
    half_life = WINDOWS[window]
    current = generation(now_ms, half_life)
    gens = (current, current - 1)
    pipe = redis.pipeline(transaction=False)
    pipe.get(vector_key(prefix, user_id))
    pipe.get(session_key(user_id, prefix))
    pipe.get(feature_user_key or f"{prefix}:u:{user_id}")
    out = OnlineState()
    to_read: list[tuple[str, tuple[Any, ...]]] = []  # (label, cache key) of the scopes read below
    for label, scope in scopes.names():
        key = ("trending", prefix, window, scope, current, trending_k)
        cached = shared.get(key, now_ms) if shared is not None else None
        if cached is not None:
            out.trending[label] = cached
            continue
        to_read.append((label, key))
        for gen in gens:
            # Raw command: without the withscores kwarg redis-py leaves the reply a flat list, and the
            # scores are parsed below by numpy in C (its per-pair float() callback cost ~5 µs a pair).
            pipe.execute_command("ZREVRANGE", trend_key(window, scope, gen, prefix), 0, max(trending_k, 1) - 1,
                                 "WITHSCORES")
    new_key = ("new_releases", prefix, new_k)
    releases = shared.get(new_key, now_ms) if shared is not None else None
    if releases is None:
        pipe.zrevrangebyscore(f"{prefix}:{NEW_RELEASES}", now_ms, "-inf", start=0, num=max(new_k, 1),
                              withscores=True)
    replies = await pipe.execute()
    vector, _ = unpack_user_vector(replies[0], space=space, dim=dim)
    out.user_vector = vector
    session = decode_session(replies[1])
    if session is not None:
        out.session_recent = [(str(i), int(t)) for i, t in session.rec]
    recent = list(out.session_recent)
    if replies[2] is not None:
        # Another layout version raises: the worker's rebuild rewrites it; go on without it.
        with contextlib.suppress(ValueError):
            recent += [(str(i), int(t)) for i, t in decode_user_blob(replies[2]).rec]
    out.recent = recent
    factors = [read_factor(g, now_ms, half_life) for g in gens]
    pos = 3
    for label, key in to_read:
        combined: dict[str, float] = {}
        for factor in factors:
            members, scores = _pairs(replies[pos])
            if members:
                for member, score in zip(members, (scores * factor).tolist(), strict=True):
                    name = _text(member)
                    combined[name] = combined.get(name, 0.0) + score
            pos += 1
        ranked = sorted(combined.items(), key=lambda kv: (-kv[1], kv[0]))
        out.trending[label] = [(i, s) for i, s in ranked[:trending_k] if s > 0]
        if shared is not None:
            shared.put(key, now_ms, out.trending[label])
    if releases is None:
        releases = [(_text(m), int(s)) for m, s in replies[pos]]
        if shared is not None:
            shared.put(new_key, now_ms, releases)
    out.new_releases = releases
    # Scopes in the request's order (global first), whichever came from the cache.
    out.trending = {label: out.trending[label] for label, _ in scopes.names()}
    return out
