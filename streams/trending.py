"""Trending titles (time-decayed popularity) and the new-releases list, kept in Redis sorted sets.

Forward decay
-------------
A decayed counter ``S(t) = sum_i w_i * 2 ** (-(t - ts_i) / H)`` (half-life ``H``) would need every
score rewritten as time passes. Forward decay (Cormode et al., 2009) stores instead
``sum_i w_i * 2 ** ((ts_i - L) / H)`` for a fixed *landmark* ``L``: each event adds its own
amount with ``ZINCRBY``, the amounts never change afterwards, and additions commute, so the
workers of all partitions can update the same key in any order and any batching (up to double
rounding, ~1e-16 relative). A reader at time ``t`` multiplies by ``2 ** (-(t - L) / H)``, which is
the same for every member of a key, so the key's rank order *is* the trending order.

Generations
-----------
The stored amounts grow by 2x per half-life; after 60 half-lives they are ~1e18. Before that
matters, the landmark moves: event time is cut into *generations* of ``GENERATION_HALF_LIVES``
(60) half-lives, generation ``n = ts // (60 * H)`` with landmark ``L_n = n * 60 * H``, so the
exponent stays in ``[0, 60)`` and a key's scores stay below ``w * 2**60``. The generation is a
function of the event's own time, so every worker (and every re-delivery) picks the same key for
the same event. A reader at ``t`` combines generation ``n(t)`` and ``n(t) - 1``: anything older
is at least 60 half-lives old, weighted below ``2**-60`` of a fresh event (ignored).

Size: not capped, TTL'd
-----------------------
Trimming to the top N (``ZREMRANGEBYRANK``) is not commutative: whether an item survives depends
on which partition's increments arrived first. Threshold pruning would be order-dependent too
(an increment landing before or after a prune). So the sets are left uncapped: a key only holds
items touched during its generation (``<= 60 H`` of event time) in its scope, so it is bounded by
the catalogue, and generations roll over. Every write refreshes ``EXPIRE`` to
``TTL_HALF_LIVES`` (32) half-lives + 1 h: once a key has not been written for that long, all its
counts have decayed below ``2**-32`` (2.3e-10) of one fresh event, so its expiry changes no
ranking. (TTLs are wall-clock: when history is replayed fast, keys outlive their event-time use,
which is harmless.)

Redis layout (prefix ``sr``; every key is self-contained, Redis-Cluster safe)
---------------------------------------------------------------------------
=============================================== ====== ==============================================
key                                             type   content
=============================================== ====== ==============================================
``sr:trend:{window}:{scope}:g{n}``              ZSET   member item id, score forward-decayed sum
``sr:new_releases``                             ZSET   member item id, score ``release_ts`` (epoch ms)
=============================================== ====== ==============================================

- ``window``: ``1h`` / ``24h`` / ``7d`` (the half-life). TTL 33 h / 32 d + 1 h / 224 d + 1 h.
- ``scope``: ``all``, ``country:{CC}``, ``device:{device}``, ``hour:{0..23}`` (local hour): one
  dimension per key; a positive event updates up to 4 scopes x 3 windows = 12 keys. Combinations
  (country *and* device) are not kept: they would multiply the keys for little signal.
- weights: :data:`models.feedback.FEEDBACK_WEIGHT`, positive kinds only (play 1, complete 2,
  add_to_list 1.5, click 0.25, rating 0.25..2 by stars as in :func:`models.feedback.feedback_weights`);
  skips, heartbeats, impressions and profile events do not count.
- ``sr:new_releases`` comes from the catalog topic (:func:`catalog_writes`): ``ZADD`` on
  ``item_upsert`` (idempotent; the score is overwritten), ``ZREM`` on ``item_remove`` and on an
  upsert with ``available=false``. No TTL: bounded by the catalogue, like ``sr:i:{item}``.

Memory (``MEMORY USAGE``, Redis 7, item ids of 2-4 characters, measured by
``tests/integration/test_trending_session.py::test_memory_usage_per_member``): a trend key of
<= 128 members (listpack encoding) costs ~14 bytes per member; above 128 members Redis switches to
a skiplist + dict at ~95 bytes per member (plus the id's length). Worst case for a 10,000-title
catalogue with every title touched in every scope: ~1 MB per key x 3 windows x 2 live generations
x 61 scopes (global + 30 countries + 6 devices + 24 hours) ~ 350 MB; in practice far less, as most
scopes see a small part of the catalogue (and stay listpacks). ``sr:new_releases``: ~95 bytes
per title.

Reads: :func:`read_trending` is exact (threshold algorithm over the two generations' rank
orders, usually one round trip); :func:`read_new_releases` is one ``ZREVRANGEBYSCORE``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from models.dataset import KIND
from models.feedback import feedback_weights
from online_state.redis_functions import zincr_many
from schemas.events import (
    Context,
    Impression,
    InteractionEvent,
    ItemRemove,
    ItemUpsert,
    UserUpsert,
)
from streams.effects import BatchInfo

if TYPE_CHECKING:
    import redis.asyncio as aioredis

HOUR_MS: Final = 3_600_000
# Window name -> half-life in ms. The window names are part of the key and of the reader API.
WINDOWS: Final[dict[str, int]] = {"1h": HOUR_MS, "24h": 24 * HOUR_MS, "7d": 7 * 24 * HOUR_MS}
GENERATION_HALF_LIVES: Final = 60  # exponent bound per generation: scores stay below w * 2**60
TTL_HALF_LIVES: Final = 32  # an unwritten key expires once its counts are < 2**-32 of a fresh event
TTL_SLACK_S: Final = 3_600
SCOPE_DIMENSIONS: Final[tuple[str, ...]] = ("country", "device", "hour")
NEW_RELEASES: Final = "new_releases"


def generation(ts: int, half_life_ms: int) -> int:
    """The generation of event time ``ts``: ``floor(ts / (60 * half_life))`` (negative ts too)."""
    return ts // (GENERATION_HALF_LIVES * half_life_ms)


def landmark(gen: int, half_life_ms: int) -> int:
    """The landmark (epoch ms) of a generation: its first instant."""
    return gen * GENERATION_HALF_LIVES * half_life_ms


def forward_amount(weight: float, ts: int, half_life_ms: int) -> tuple[int, float]:
    """``(generation, amount)`` an event of ``weight`` at ``ts`` adds: ``w * 2**((ts - L) / H)``."""
    gen = generation(ts, half_life_ms)
    return gen, weight * 2.0 ** ((ts - landmark(gen, half_life_ms)) / half_life_ms)


def read_factor(gen: int, now_ms: int, half_life_ms: int) -> float:
    """What a generation's stored scores are multiplied by at ``now_ms`` to give decayed counts."""
    return 2.0 ** (-(now_ms - landmark(gen, half_life_ms)) / half_life_ms)


def ttl_seconds(half_life_ms: int) -> int:
    return TTL_HALF_LIVES * half_life_ms // 1000 + TTL_SLACK_S


def scope_name(dimension: str | None, value: str | int | None = None) -> str:
    """``all`` or ``{dimension}:{value}`` (``country:US``, ``device:tv``, ``hour:21``)."""
    if dimension is None:
        return "all"
    if dimension not in SCOPE_DIMENSIONS:
        raise ValueError(f"unknown trending scope {dimension!r}; expected one of {SCOPE_DIMENSIONS}")
    return f"{dimension}:{value}"


def event_scopes(context: Context | None) -> list[str]:
    """Every scope an event with this context counts in (global first)."""
    scopes = ["all"]
    if context is not None:
        if context.country is not None:
            scopes.append(scope_name("country", context.country))
        if context.device is not None:
            scopes.append(scope_name("device", context.device))
        if context.local_hour is not None:
            scopes.append(scope_name("hour", context.local_hour))
    return scopes


def scope_from_dict(scope: Mapping[str, Any] | None) -> str:
    """The key scope of a reader's ``scope`` dict (``None``/``{}``: global; one dimension at most).

    Scopes are kept per dimension only, so ``{"country": "US", "device": "tv"}`` has no exact
    answer: it is refused rather than approximated.
    """
    given = {k: v for k, v in (scope or {}).items() if v is not None}
    unknown = set(given) - set(SCOPE_DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown trending scope {sorted(unknown)}; expected one of {SCOPE_DIMENSIONS}")
    if len(given) > 1:
        raise ValueError(f"trending is kept per single dimension; got {sorted(given)}: pick one")
    if not given:
        return "all"
    ((dimension, value),) = given.items()
    return scope_name(dimension, int(value) if dimension == "hour" else value)


def trend_key(window: str, scope: str, gen: int, prefix: str = "sr") -> str:
    return f"{prefix}:trend:{window}:{scope}:g{gen}"


def event_weights(events: Sequence[InteractionEvent]) -> list[float]:
    """The trending weight of each event: its CF feedback weight when positive, else 0.

    Computed by :func:`models.feedback.feedback_weights`, the one definition shared with training
    (ratings scale 0.25..2 by stars), vectorised over the batch.
    """
    if not events:
        return []
    kinds = np.array([KIND[e.__struct_config__.tag] for e in events], np.int8)  # type: ignore[index]
    values = np.array([getattr(e, "value", 0.0) for e in events], np.float32)
    weights = feedback_weights(kinds, values).astype(np.float64)
    return np.where(weights > 0, weights, 0.0).tolist()


@dataclass(frozen=True, slots=True)
class TrendingEffect:
    """The trending effect for the worker (see :mod:`streams.effects`): increments only, no reads.

    For every positive event and every (window, scope), ``ZINCRBY`` the forward-decayed amount
    into the event's generation key; then ``EXPIRE`` each touched key once. Amounts of the same
    (key, item) within a batch are summed first (fewer commands; the sum is still commutative).
    """

    prefix: str = "sr"
    windows: tuple[str, ...] = tuple(WINDOWS)
    name: str = "trending"
    bulk: bool = False  # one FCALL for the whole batch (online_state.redis_functions, loaded)

    def read(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo) -> int:
        return 0  # increments need no prior state

    def write(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo, replies: list[Any]) -> None:
        if self.bulk:
            # The same ZINCRBYs and EXPIREs, run inside Redis. Amounts travel as msgpack doubles, which
            # redis.call formats back exactly (%.17g), as redis-py's repr() of a float would.
            keys: list[str] = []
            entries: list[list[Any]] = []
            for window, key, members, amounts in self.groups(events):
                flat: list[Any] = [None] * (2 * len(members))
                flat[0::2] = members
                flat[1::2] = amounts
                keys.append(key)
                entries.append([ttl_seconds(WINDOWS[window]), *flat])
            zincr_many(pipe, keys, entries)
            return
        for (window, key), members in self.increments(events).items():
            for item_id, amount in members.items():
                pipe.zincrby(key, amount, item_id)
            pipe.expire(key, ttl_seconds(WINDOWS[window]))

    def increments(self, events: Sequence[InteractionEvent]) -> dict[tuple[str, str], dict[str, float]]:
        """``{(window, key): {item_id: amount}}`` for a batch (amounts of one key and item summed)."""
        return {(window, key): dict(zip(members, amounts, strict=True))
                for window, key, members, amounts in self.groups(events)}

    def groups(self, events: Sequence[InteractionEvent]) -> list[tuple[str, str, list[str], list[float]]]:
        """``(window, key, item ids, amounts)`` per touched key, each item once per key (its amounts summed).

        Vectorised: one pass over the events collects columns, then per window and scope dimension
        numpy groups (scope value, generation, item) and sums the forward-decayed amounts (a Python
        loop over events x windows x scopes cost ~10 µs per event). Deterministic order: windows,
        then dimensions, then sorted codes.
        """
        relevant = [e for e in events if not isinstance(e, Impression | UserUpsert)]
        if not relevant:
            return []
        weights = np.asarray(event_weights(relevant), np.float64)
        keep = np.flatnonzero(weights > 0)
        if not keep.size:
            return []
        chosen = [relevant[i] for i in keep.tolist()]
        weights = weights[keep]
        ts = np.fromiter((e.ts for e in chosen), np.int64, len(chosen))
        item_code: dict[str, int] = {}
        items = np.fromiter((item_code.setdefault(e.item_id, len(item_code)) for e in chosen), np.int64, len(chosen))
        item_ids = list(item_code)
        contexts = [e.context for e in chosen]
        # Per dimension: a code per event for its scope name ("" where the event has none).
        dimensions: list[tuple[list[str], NDArray[np.int64]]] = []
        for names in (
            None,
            [scope_name("country", c.country) if c is not None and c.country is not None else "" for c in contexts],
            [scope_name("device", c.device) if c is not None and c.device is not None else "" for c in contexts],
            [scope_name("hour", c.local_hour) if c is not None and c.local_hour is not None else ""
             for c in contexts],
        ):
            if names is None:
                dimensions.append((["all"], np.zeros(len(chosen), np.int64)))
                continue
            scope_code: dict[str, int] = {}
            codes = np.fromiter((scope_code.setdefault(name, len(scope_code)) for name in names), np.int64,
                                len(names))
            dimensions.append((list(scope_code), codes))
        out: list[tuple[str, str, list[str], list[float]]] = []
        n_items = len(item_ids)
        for window in self.windows:
            half_life = WINDOWS[window]
            period = GENERATION_HALF_LIVES * half_life
            gens = ts // period
            amounts = weights * np.power(2.0, (ts - gens * period) / half_life)
            gen_lo = int(gens.min())
            gen_rel = gens - gen_lo
            n_gens = int(gen_rel.max()) + 1
            for scope_names, codes in dimensions:
                combined = (codes * n_gens + gen_rel) * n_items + items
                uniq, inverse = np.unique(combined, return_inverse=True)
                sums = np.bincount(inverse, weights=amounts, minlength=len(uniq))
                key_of = uniq // n_items
                starts = np.flatnonzero(np.r_[True, key_of[1:] != key_of[:-1]])
                ends = np.r_[starts[1:], len(uniq)]
                member_rows = (uniq % n_items).tolist()
                sums_list = sums.tolist()
                for lo, hi, k in zip(starts.tolist(), ends.tolist(), key_of[starts].tolist(), strict=True):
                    scope = scope_names[k // n_gens]
                    if not scope:
                        continue  # events without this dimension
                    key = trend_key(window, scope, gen_lo + k % n_gens, self.prefix)
                    out.append((window, key, [item_ids[m] for m in member_rows[lo:hi]], sums_list[lo:hi]))
        return out


def catalog_writes(pipe: Any, catalog_events: Iterable[ItemUpsert | ItemRemove], prefix: str = "sr") -> int:
    """Queue the new-releases updates of a catalog batch on ``pipe``; returns the commands queued.

    Idempotent and per item (the catalog topic is keyed by item id, so one partition owns each
    item and its events arrive in order): ``ZADD`` sets the score, ``ZREM`` removes.
    """
    key = f"{prefix}:{NEW_RELEASES}"
    commands = 0
    for event in catalog_events:
        if isinstance(event, ItemUpsert) and event.available:
            pipe.zadd(key, {event.item_id: event.release_ts})
        else:  # removed, or no longer available: not something to recommend as new
            pipe.zrem(key, event.item_id)
        commands += 1
    return commands


def _decode(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


async def read_trending(
    redis: aioredis.Redis,
    window: str,
    scope: dict[str, Any] | None,
    now_ms: int | None,
    k: int,
    *,
    prefix: str = "sr",
) -> list[tuple[str, float]]:
    """The top ``k`` items of a window and scope at ``now_ms`` (default: wall clock), with their
    decayed counts (one fresh play = 1.0), best first; ties by item id.

    Combines the current and the previous generation exactly with the threshold algorithm: fetch
    the top ``m`` of each key, score the union on both keys, and stop once the k-th best beats the
    bound ``f_cur * s_cur[m] + f_prev * s_prev[m]`` that any unfetched item is under (else double m).
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; expected one of {tuple(WINDOWS)}")
    if k <= 0:
        return []
    half_life = WINDOWS[window]
    now = int(time.time() * 1000) if now_ms is None else now_ms
    scope_key = scope_from_dict(scope)
    current = generation(now, half_life)
    gens = (current, current - 1)
    keys = [trend_key(window, scope_key, g, prefix) for g in gens]
    factors = [read_factor(g, now, half_life) for g in gens]
    m = max(2 * k, 64)
    while True:
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrevrange(key, 0, m - 1, withscores=True)
        tops: list[list[tuple[bytes, float]]] = await pipe.execute()
        candidates = sorted({_decode(member) for top in tops for member, _ in top})
        if not candidates:
            return []
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.zmscore(key, candidates)
        scores: list[list[float | None]] = await pipe.execute()
        combined = [
            (item, sum(f * (s[i] or 0.0) for f, s in zip(factors, scores, strict=True)))
            for i, item in enumerate(candidates)
        ]
        combined.sort(key=lambda pair: (-pair[1], pair[0]))
        exhausted = all(len(top) < m for top in tops)
        bound = sum(f * top[-1][1] for f, top in zip(factors, tops, strict=True) if len(top) == m)
        if exhausted or (len(combined) >= k and combined[k - 1][1] >= bound):
            return [(item, score) for item, score in combined[:k] if score > 0.0]
        m *= 4


async def read_new_releases(
    redis: aioredis.Redis, k: int, *, now_ms: int | None = None, prefix: str = "sr"
) -> list[tuple[str, int]]:
    """The ``k`` most recent releases ``(item_id, release_ts)``, newest first; with ``now_ms``,
    titles announced for a later date are left out."""
    if k <= 0:
        return []
    top = "+inf" if now_ms is None else now_ms
    rows = await redis.zrevrangebyscore(f"{prefix}:{NEW_RELEASES}", top, "-inf", start=0, num=k, withscores=True)
    return [(_decode(member), int(score)) for member, score in rows]


def decayed_naive(events: Iterable[tuple[float, int]], now_ms: int, half_life_ms: int) -> float:
    """Reference: ``sum w * 2**(-(now - ts)/H)`` over ``(w, ts)`` pairs (for tests and docs)."""
    return math.fsum(w * 2.0 ** (-(now_ms - ts) / half_life_ms) for w, ts in events)


# --- worker registry (streams.worker discovers these) ---------------------------------------------


def make_effect(ctx: Any) -> TrendingEffect:
    return TrendingEffect(prefix=ctx.prefix, bulk=getattr(ctx, "bulk", False))


def make_catalog_hook(ctx: Any) -> Callable[[Any, Sequence[Any], Any], None]:
    """New releases: ``item_upsert``/``item_remove`` queue their ZADD/ZREM in the catalog batch's MULTI."""

    def hook(pipe: Any, events: Sequence[Any], info: Any) -> None:
        catalog_writes(pipe, events, prefix=ctx.prefix)

    return hook
