"""The trending and new-releases writes: the worker effect that adds each positive event's forward-decayed
weight to its trending keys, and the catalog effect that keeps the new releases.

How the stored scores decay, generations and reads: :mod:`online_state.trending`; the keys:
:meth:`~online_state.keys.KeyLayout.trending` and :attr:`~online_state.keys.KeyLayout.new_releases`.

Size: not capped, TTL'd
-----------------------
Trimming to the top N (``ZREMRANGEBYRANK``) is not commutative: whether an item survives depends
on which partition's increments arrived first. Threshold pruning would be order-dependent too
(an increment landing before or after a prune). So the sets are left uncapped: a key only holds
items touched during its generation (``<= 60 H`` of event time) in its scope, so it is bounded by
the catalogue, and generations roll over. Every write refreshes ``EXPIRE`` to
``TTL_HALF_LIVES`` (32) half-lives + 1 h: once a key has not been written for that long, all its
counts have decayed below ``2**-32`` of one fresh event, so its expiry changes no ranking. (TTLs
are wall-clock: when history is replayed fast, keys outlive their event-time use, which is harmless.)

What counts
-----------
- ``window``: ``1h`` / ``24h`` / ``7d`` (the half-life). TTL 33 h / 32 d + 1 h / 224 d + 1 h.
- ``scope``: ``all``, ``country:{CC}``, ``device:{device}``, ``hour:{0..23}`` (local hour): one
  dimension per key; a positive event updates up to 4 scopes x 3 windows = 12 keys. Combinations
  (country *and* device) are not kept: they would multiply the keys for little signal.
- weights: :data:`models.feedback.FEEDBACK_WEIGHT`, positive kinds only (play 1, complete 2,
  add_to_list 1.5, click 0.25, rating 0.25..2 by stars as in :func:`models.feedback.feedback_weights`);
  skips, heartbeats, impressions and profile events do not count.
- new releases come from the catalog topic (:func:`catalog_writes`): ``ZADD`` on ``item_upsert``
  (idempotent; the score is overwritten), ``ZREM`` on ``item_remove`` and on an upsert with
  ``available=false``. No TTL: bounded by the catalogue, like the items' feature state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.dataset import KIND
from models.feedback import feedback_weights
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.redis_functions import zincr_many
from online_state.trending import GENERATION_HALF_LIVES, WINDOWS, generation, landmark, scope_name
from schemas.events import (
    CatalogEvent,
    Context,
    Impression,
    InteractionEvent,
    ItemRemove,
    ItemUpsert,
    UserUpsert,
)
from streams.effects import Batch, Effect, EffectContext, Reads

TTL_HALF_LIVES: Final = 32  # an unwritten key expires once its counts are < 2**-32 of a fresh event
TTL_SLACK_S: Final = 3_600


def forward_amount(weight: float, ts: int, half_life_ms: int) -> tuple[int, float]:
    """``(generation, amount)`` an event of ``weight`` at ``ts`` adds: ``w * 2**((ts - L) / H)``."""
    gen = generation(ts, half_life_ms)
    return gen, weight * 2.0 ** ((ts - landmark(gen, half_life_ms)) / half_life_ms)


def ttl_seconds(half_life_ms: int) -> int:
    return TTL_HALF_LIVES * half_life_ms // 1000 + TTL_SLACK_S


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
class TrendingEffect(Effect[InteractionEvent]):
    """The trending effect for the worker (see :mod:`streams.effects`): increments only, no reads.

    For every positive event and every (window, scope), ``ZINCRBY`` the forward-decayed amount
    into the event's generation key; then ``EXPIRE`` each touched key once. Amounts of the same
    (key, item) within a batch are summed first (fewer commands; the sum is still commutative).
    """

    keys: KeyLayout = DEFAULT_KEYS
    windows: tuple[str, ...] = tuple(WINDOWS)
    name: str = "trending"
    bulk: bool = False  # one FCALL for the whole batch (online_state.redis_functions, loaded)

    # read: none (the base's): increments need no prior state.

    def write(self, pipe: Any, batch: Batch[InteractionEvent], reads: Reads[Any]) -> None:
        events = batch.events
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
                    key = self.keys.trending(window, scope, gen_lo + k % n_gens)
                    out.append((window, key, [item_ids[m] for m in member_rows[lo:hi]], sums_list[lo:hi]))
        return out


def catalog_writes(pipe: Any, catalog_events: Iterable[ItemUpsert | ItemRemove], keys: KeyLayout = DEFAULT_KEYS
                   ) -> int:
    """Queue the new-releases updates of a catalog batch on ``pipe``; returns the commands queued.

    Idempotent and per item (the catalog topic is keyed by item id, so one partition owns each
    item and its events arrive in order): ``ZADD`` sets the score, ``ZREM`` removes.
    """
    key = keys.new_releases
    commands = 0
    for event in catalog_events:
        if isinstance(event, ItemUpsert) and event.available:
            pipe.zadd(key, {event.item_id: event.release_ts})
        else:  # removed, or no longer available: not something to recommend as new
            pipe.zrem(key, event.item_id)
        commands += 1
    return commands


def decayed_naive(events: Iterable[tuple[float, int]], now_ms: int, half_life_ms: int) -> float:
    """Reference: ``sum w * 2**(-(now - ts)/H)`` over ``(w, ts)`` pairs (for tests and docs)."""
    return math.fsum(w * 2.0 ** (-(now_ms - ts) / half_life_ms) for w, ts in events)


# --- the worker's effects (listed in streams.effects_registry) -------------------------------------


@dataclass(frozen=True, slots=True)
class NewReleasesEffect(Effect[CatalogEvent]):
    """New releases, from the catalog partitions this worker owns: each event's ``ZADD``/``ZREM``
    (:func:`catalog_writes`) in the catalog batch's MULTI."""

    keys: KeyLayout = DEFAULT_KEYS
    name: str = "new_releases"

    def write(self, pipe: Any, batch: Batch[CatalogEvent], reads: Reads[Any]) -> None:
        catalog_writes(pipe, batch.events, keys=self.keys)


def make_effect(ctx: EffectContext) -> TrendingEffect:
    return TrendingEffect(keys=ctx.keys, bulk=ctx.bulk)


def make_catalog_effect(ctx: EffectContext) -> NewReleasesEffect:
    return NewReleasesEffect(keys=ctx.keys)
