"""Trending titles and new releases as stored: the forward-decay arithmetic shared by writers and readers,
and the reads (exact for ``inspect``, a one-round-trip merge for the server).

Forward decay (Cormode et al., 2009): a decayed count ``S(t) = sum_i w_i * 2 ** (-(t - ts_i) / H)`` (half-life
``H``) is stored as ``sum_i w_i * 2 ** ((ts_i - L) / H)`` for a fixed *landmark* ``L``: each event adds its own
amount (``ZINCRBY``), the amounts never change, and additions commute, so the workers of all partitions update
one key in any order and batching. A reader at ``t`` multiplies by ``2 ** (-(t - L) / H)``, the same for every
member of a key, so a key's rank order *is* the trending order.

Generations: the stored amounts grow 2x per half-life, so event time is cut into *generations* of
``GENERATION_HALF_LIVES`` (60) half-lives, ``n = ts // (60 * H)``, with landmark ``L_n = n * 60 * H``: scores
stay below ``w * 2**60``. The generation is a function of the event's own time, so every worker (and every
re-delivery) picks the same key (``KeyLayout.trending(window, scope, n)``). A reader at ``t`` combines
generations ``n(t)`` and ``n(t) - 1``: anything older weighs below ``2**-60`` of a fresh event.

Scopes: ``all``, ``country:{CC}``, ``device:{device}``, ``hour:{0..23}``, one dimension per key.
``{prefix}:new_releases``: member item id, score its release ts (epoch ms).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from online_state.keys import DEFAULT_KEYS, KeyLayout

HOUR_MS: Final = 3_600_000
# Window name -> half-life in ms. The window names are part of the key and of the reader API.
WINDOWS: Final[dict[str, int]] = {"1h": HOUR_MS, "24h": 24 * HOUR_MS, "7d": 7 * 24 * HOUR_MS}
GENERATION_HALF_LIVES: Final = 60  # exponent bound per generation: scores stay below w * 2**60
SCOPE_DIMENSIONS: Final[tuple[str, ...]] = ("country", "device", "hour")


def generation(ts: int, half_life_ms: int) -> int:
    """The generation of event time ``ts``: ``floor(ts / (60 * half_life))`` (negative ts too)."""
    return ts // (GENERATION_HALF_LIVES * half_life_ms)


def landmark(gen: int, half_life_ms: int) -> int:
    """The landmark (epoch ms) of a generation: its first instant."""
    return gen * GENERATION_HALF_LIVES * half_life_ms


def read_factor(gen: int, now_ms: int, half_life_ms: int) -> float:
    """What a generation's stored scores are multiplied by at ``now_ms`` to give decayed counts."""
    return 2.0 ** (-(now_ms - landmark(gen, half_life_ms)) / half_life_ms)


def scope_name(dimension: str | None, value: str | int | None = None) -> str:
    """``all`` or ``{dimension}:{value}`` (``country:US``, ``device:tv``, ``hour:21``)."""
    if dimension is None:
        return "all"
    if dimension not in SCOPE_DIMENSIONS:
        raise ValueError(f"unknown trending scope {dimension!r}; expected one of {SCOPE_DIMENSIONS}")
    return f"{dimension}:{value}"


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


def member_text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


def _pairs(reply: Sequence[Any]) -> tuple[list[Any], NDArray[np.float64]]:
    """(members, scores) of a raw ``ZREVRANGE .. WITHSCORES`` reply: flat ``[m, s, m, s, ...]`` (RESP2)
    or ``[[m, s], ...]`` (RESP3 and some clients)."""
    if not reply:
        return [], np.zeros(0)
    if isinstance(reply[0], list | tuple):
        members, raw = [m for m, _ in reply], [sc for _, sc in reply]
    else:
        members, raw = list(reply[0::2]), list(reply[1::2])
    return members, np.asarray(raw).astype(np.float64)  # bytes (RESP2) or floats (RESP3), parsed in C


def merge_top_lists(replies: Sequence[Sequence[Any]], factors: Sequence[float], k: int) -> list[tuple[str, float]]:
    """The top ``k`` of generations' top lists (raw ``ZREVRANGE .. WITHSCORES`` replies, one per factor), each
    scaled by its :func:`read_factor`, best first, ties by item id. An item outside one list counts 0 there:
    approximate where :func:`read_trending` is exact, and one round trip."""
    combined: dict[str, float] = {}
    for reply, factor in zip(replies, factors, strict=True):
        members, scores = _pairs(reply)
        if members:
            for member, score in zip(members, (scores * factor).tolist(), strict=True):
                name = member_text(member)
                combined[name] = combined.get(name, 0.0) + score
    ranked = sorted(combined.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(i, s) for i, s in ranked[:k] if s > 0]


async def read_trending(
    redis: Any,
    window: str,
    scope: Mapping[str, Any] | None,
    now_ms: int | None,
    k: int,
    *,
    keys: KeyLayout = DEFAULT_KEYS,
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
    names = [keys.trending(window, scope_key, g) for g in gens]
    factors = [read_factor(g, now, half_life) for g in gens]
    m = max(2 * k, 64)
    while True:
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.zrevrange(name, 0, m - 1, withscores=True)
        tops: list[list[tuple[bytes, float]]] = await pipe.execute()
        candidates = sorted({member_text(member) for top in tops for member, _ in top})
        if not candidates:
            return []
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.zmscore(name, candidates)
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
    redis: Any, k: int, *, now_ms: int | None = None, keys: KeyLayout = DEFAULT_KEYS
) -> list[tuple[str, int]]:
    """The ``k`` most recent releases ``(item_id, release_ts)``, newest first; with ``now_ms``,
    titles announced for a later date are left out."""
    if k <= 0:
        return []
    top = "+inf" if now_ms is None else now_ms
    rows = await redis.zrevrangebyscore(keys.new_releases, top, "-inf", start=0, num=k, withscores=True)
    return [(member_text(member), int(score)) for member, score in rows]
