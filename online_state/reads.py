"""The server's and ``inspect``'s reads of the online state, each batched into one pipelined round trip.

:func:`read_online_state` is what a recommendation request needs before candidate generation, in ONE round trip;
for a request at the wall clock's ``now`` it is ONE command, an ``MGET`` of the user's three values:

- the online user vector (space-checked against the serving bundle),
- the session (its recent items: exclusions and because-you-watched seeds; the titles to continue watching),
- the user's feature state (its last 20 engaged items, for the same; kept, decoded, for the feature
  read of the same request: :class:`~online_state.feature_reads.FeatureReader` does not read it again).

The shared lists come from :class:`SharedReads`, which the server refreshes in the background
(:func:`refresh_shared`); a request reads one itself (in the same round trip) only when it is not held
(the first request of a scope, or a request ``now`` far from the wall clock, as backtests send):
- ``ZREVRANGE .. WITHSCORES`` of the trending window's current and previous generation for the global scope
  and each known context dimension (country, device, hour),
- ``ZREVRANGEBYSCORE`` of the new releases.

Trending merges the two generations' *top lists* only (:func:`~online_state.trending.merge_top_lists`),
where :func:`~online_state.trending.read_trending` is exact over several round trips: for a candidate source
an approximate order of the top titles is enough. The request-independent lists are shared by every request of
a process for a short while (:class:`SharedReads`, the one cache of them).

:func:`read_user_record` is ``inspect user``'s read: every key of one user, with TTLs and sizes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.recommend.pipeline import RankedIds, Snapshot
from online_state.feature_codec import StoredUser, UserBlob, decode_user_blob
from online_state.keys import KeyLayout
from online_state.sessions import decode_session, session_dict
from online_state.trending import WINDOWS, generation, member_text, merge_top_lists, read_factor, scope_name
from online_state.user_vectors import unpack_user_vector


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
    """What :func:`read_online_state` read for one request (empty values when a key is absent)."""

    user_vector: NDArray[np.float32] | None = None
    recent: list[tuple[str, int]] = field(default_factory=list)  # (item id, ts), session + feature state
    session_recent: list[tuple[str, int]] = field(default_factory=list)
    # Titles started and not finished: (item id, ts, permille watched), most recent first (the homepage's row).
    continue_watching: list[tuple[str, int, int]] = field(default_factory=list)
    # Scope label -> (item id, score) best first; the same object for every request that shares the list.
    trending: dict[str, RankedIds] = field(default_factory=dict)
    new_releases: RankedIds = field(default_factory=lambda: RankedIds([]))  # (item id, release ts), newest first
    # The user's feature state as read, for the request's feature read; None: not read (the read failed, or
    # the value is of another layout version), so the feature read reads it itself.
    features_user: StoredUser | None = None

    def snapshot(self) -> Snapshot:
        """The recommend pipeline's view of this read."""
        return Snapshot(vector=self.user_vector, recent=self.recent, trending=self.trending,
                        new_releases=self.new_releases or None)


class SharedReads:
    """Per-process cache of the request-independent reads (trending lists, new releases), reused for ``ttl_s``.

    Requests that miss it read the list themselves and mark it *wanted*; :func:`refresh_shared`, run in the
    background by the server every ``ttl_s / 2``, re-reads every list wanted in the last ``keep_s`` in one
    round trip, so at the wall clock's ``now`` requests find them here and send Redis only their user's keys.
    It also keeps the last global trending list and new releases read, whatever their age, for the answers
    given while Redis cannot be read (:meth:`last_known`).
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, keep_s: float = 600.0) -> None:
        self.ttl_s = ttl_s
        self.keep_s = keep_s
        self._clock = clock
        self._entries: dict[tuple[Any, ...], tuple[float, int, Any]] = {}  # key -> (read at, now_ms, value)
        self._wanted: dict[tuple[Any, ...], float] = {}  # list spec -> when a request last missed it
        self._last_trending = RankedIds([])
        self._last_releases = RankedIds([])
        self.hits = 0
        self.misses = 0
        self.refreshes = 0

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

    def want(self, spec: tuple[Any, ...]) -> None:
        """A request missed the list of ``spec``: keep it refreshed from now on."""
        if self.ttl_s > 0:
            if len(self._wanted) > 1024:  # bounded: scopes are few (countries x devices x hours)
                self._wanted.clear()
            self._wanted[spec] = self._clock()

    def wanted(self) -> list[tuple[Any, ...]]:
        """The specs to refresh (those not wanted for ``keep_s`` are dropped)."""
        cutoff = self._clock() - self.keep_s
        self._wanted = {spec: at for spec, at in self._wanted.items() if at >= cutoff}
        return list(self._wanted)

    def remember(self, state: OnlineState) -> None:
        """Keep a successful read's global trending list and new releases (when not empty) for :meth:`last_known`."""
        if state.trending.get("all"):
            self._last_trending = state.trending["all"]
        if state.new_releases:
            self._last_releases = state.new_releases

    def last_known(self) -> OnlineState:
        """The state to serve when the read failed: the last global trending list and new releases read."""
        return OnlineState(trending={"all": self._last_trending} if self._last_trending else {},
                           new_releases=self._last_releases)


def _trending_key(keys: KeyLayout, window: str, scope: str, current: int, k: int) -> tuple[Any, ...]:
    return ("trending", keys.prefix, window, scope, current, k)


def _releases_key(keys: KeyLayout, k: int) -> tuple[Any, ...]:
    return ("new_releases", keys.prefix, k)


def _queue_trending(pipe: Any, keys: KeyLayout, window: str, scope: str, gens: tuple[int, int], k: int) -> None:
    for gen in gens:
        # Raw command: without the withscores kwarg redis-py leaves the reply a flat list, and the
        # scores are parsed by numpy in C (its per-pair float() callback cost more than the rest).
        pipe.execute_command("ZREVRANGE", keys.trending(window, scope, gen), 0, max(k, 1) - 1, "WITHSCORES")


def _queue_releases(pipe: Any, keys: KeyLayout, now_ms: int, k: int) -> None:
    pipe.zrevrangebyscore(keys.new_releases, now_ms, "-inf", start=0, num=max(k, 1), withscores=True)


def _releases(reply: Any) -> RankedIds:
    return RankedIds([(member_text(m), int(s)) for m, s in reply])


def _user_pipeline(redis: Any, user_keys: list[str]) -> Any:
    """A pipeline that starts with the MGET of the user's keys. Queued as a raw command: redis-py's cluster pipeline
    refuses its ``mget`` method (meant for keys of any slot), while an ``MGET`` of one slot's keys (the user's, by
    their hash tag) is one command to the master owning it, on a cluster as on one redis-server."""
    pipe = redis.pipeline(transaction=False)
    pipe.execute_command("MGET", *user_keys)
    return pipe


async def refresh_shared(redis: Any, keys: KeyLayout, shared: SharedReads, now_ms: int) -> int:
    """Re-read every list ``shared`` wants, at ``now_ms``, in one round trip (the server's background loop);
    returns the lists read."""
    specs = [spec for spec in shared.wanted() if spec[1] == keys.prefix]
    if not specs:
        return 0
    pipe = redis.pipeline(transaction=False)
    plans: list[tuple[tuple[Any, ...], float | None, int, tuple[float, ...]]] = []  # (cache key, k, replies, factors)
    for spec in specs:
        if spec[0] == "trending":
            _, _, window, scope, k = spec
            half_life = WINDOWS[window]
            current = generation(now_ms, half_life)
            gens = (current, current - 1)
            _queue_trending(pipe, keys, window, scope, gens, k)
            plans.append((_trending_key(keys, window, scope, current, k), k, len(gens),
                          tuple(read_factor(g, now_ms, half_life) for g in gens)))
        else:
            _, _, k = spec
            _queue_releases(pipe, keys, now_ms, k)
            plans.append((_releases_key(keys, k), None, 1, ()))
    replies = await pipe.execute()
    pos = 0
    for cache_key, k, n, factors in plans:
        if k is None:
            shared.put(cache_key, now_ms, _releases(replies[pos]))
        else:
            shared.put(cache_key, now_ms, RankedIds(merge_top_lists(replies[pos:pos + n], list(factors), int(k))))
        pos += n
    shared.refreshes += 1
    return len(plans)


async def read_online_state(
    redis: Any, keys: KeyLayout, user_id: str, scopes: RequestScopes, now_ms: int, *, trending_k: int, new_k: int,
    window: str = "24h", space: int | None = None, dim: int | None = None, shared: SharedReads | None = None,
) -> OnlineState:
    """The user's three values in one ``MGET``, plus the trending lists and new releases ``shared`` does not
    hold (read in the same round trip, and marked wanted so the background refresh keeps them from then on)."""
    half_life = WINDOWS[window]
    current = generation(now_ms, half_life)
    gens = (current, current - 1)
    user_keys = [keys.user_vector(user_id), keys.session(user_id), keys.user_state(user_id)]
    out = OnlineState()
    pipe: Any = None
    to_read: list[tuple[str, tuple[Any, ...]]] = []  # (label, cache key) of the scopes read below
    for label, scope in scopes.names():
        cache_key = _trending_key(keys, window, scope, current, trending_k)
        cached = shared.get(cache_key, now_ms) if shared is not None else None
        if cached is not None:
            out.trending[label] = cached
            continue
        if pipe is None:
            pipe = _user_pipeline(redis, user_keys)
        to_read.append((label, cache_key))
        _queue_trending(pipe, keys, window, scope, gens, trending_k)
        if shared is not None:
            shared.want(("trending", keys.prefix, window, scope, trending_k))
    new_key = _releases_key(keys, new_k)
    releases = shared.get(new_key, now_ms) if shared is not None else None
    if releases is None:
        if pipe is None:
            pipe = _user_pipeline(redis, user_keys)
        _queue_releases(pipe, keys, now_ms, new_k)
        if shared is not None:
            shared.want(("new_releases", keys.prefix, new_k))
    # Everything shared was held: the request's only Redis command is the MGET of its user.
    replies = await pipe.execute() if pipe is not None else [await redis.mget(user_keys)]
    raw_vector, raw_session, raw_user = replies[0]
    vector, _ = unpack_user_vector(raw_vector, space=space, dim=dim)
    out.user_vector = vector
    session = decode_session(raw_session)
    if session is not None:
        out.session_recent = [(str(i), int(t)) for i, t in session.rec]
        out.continue_watching = [(str(i), int(t), int(p)) for i, t, p in session.cw]
    recent = list(out.session_recent)
    # Another layout version raises: the worker's rebuild rewrites it; go on without it (and let the
    # feature read meet the same value).
    with contextlib.suppress(ValueError):
        out.features_user = StoredUser.decode(raw_user)
        if out.features_user.blob is not None:
            recent += [(str(i), int(t)) for i, t in out.features_user.blob.rec]
    out.recent = recent
    factors = [read_factor(g, now_ms, half_life) for g in gens]
    pos = 1
    for label, cache_key in to_read:
        out.trending[label] = RankedIds(merge_top_lists(replies[pos:pos + len(gens)], factors, trending_k))
        pos += len(gens)
        if shared is not None:
            shared.put(cache_key, now_ms, out.trending[label])
    if releases is None:
        releases = _releases(replies[pos])
        if shared is not None:
            shared.put(new_key, now_ms, releases)
    out.new_releases = releases
    # Scopes in the request's order (global first), whichever came from the cache.
    out.trending = {label: out.trending[label] for label, _ in scopes.names()}
    if shared is not None:
        shared.remember(out)
    return out


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key, its TTL (``None``: none, or no key) and its ``MEMORY USAGE`` in bytes (``None``: no key)."""

    key: str
    ttl_s: int | None
    bytes: int | None


@dataclass(frozen=True, slots=True)
class UserRecord:
    """Every online value of one user, decoded (``None``/``{}`` when absent), and their keys."""

    user_id: str
    features: UserBlob | None
    session: dict[str, Any]  # online_state.sessions.session_dict, plus ttl_s
    vector: bytes | None  # the raw value: online_state.user_vectors.unpack_user_vector reads it
    keys: dict[str, KeyInfo]  # "features", "session", "vector"


async def read_user_record(redis: Any, keys: KeyLayout, user_id: str) -> UserRecord:
    """Everything online about a user in one round trip: feature state, session, vector, the keys' TTLs and sizes."""
    names = {"features": keys.user_state(user_id), "session": keys.session(user_id),
             "vector": keys.user_vector(user_id)}
    pipe = redis.pipeline(transaction=False)
    for key in names.values():
        pipe.get(key)
    for key in names.values():
        pipe.ttl(key)
        pipe.memory_usage(key)
    raw_user, raw_session, raw_vector, *meta = await pipe.execute()
    info = {name: KeyInfo(key, meta[2 * i] if meta[2 * i] >= 0 else None, meta[2 * i + 1])
            for i, (name, key) in enumerate(names.items())}
    session = session_dict(decode_session(raw_session))
    if session:
        session["ttl_s"] = int(meta[2])
    return UserRecord(user_id=user_id, features=None if raw_user is None else decode_user_blob(raw_user),
                      session=session, vector=raw_vector, keys=info)
