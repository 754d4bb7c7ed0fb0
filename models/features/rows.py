"""Ranking features of one user and a list of candidates at time ``now``, from the state known then.

:func:`feature_batch` is the single definition, vectorised over candidates; offline training rows
(:mod:`models.features.offline`) and the server (through ``online_state``) both call it
on state from :mod:`models.features.state`. Counts use ``log1p`` and a fixed divisor so that
columns are roughly in [0, 1.5]; rates are Bayesian averages with the priors in
:mod:`models.features.spec`.

Dense (``spec.DENSE_NAMES``, float32):

=========================  ===================================================================
``u_log_events``           log1p(user's interactions, heartbeats excluded) / 8
``u_log_plays``            log1p(plays) / 8
``u_log_completes``        log1p(completions) / 8
``u_log_ratings``          log1p(ratings) / 8
``u_skip_rate``            (skips + 5 * 0.2) / (plays + 5)
``u_mean_rating``          smoothed mean rating ((sum + 5 * 3.5) / (n + 5)), scaled (r - 0.5) / 4.5
``u_log_hours_since_last`` log1p(hours since the user's last interaction) / 10; 1 when never
``u_genre_mass``           log1p(sum of |decayed genre taste|) / 5: how much recent taste we know
``i_log_pop_1d``           log1p(engagements decayed with a 1-day half-life) / 8
``i_log_pop_7d``           log1p(engagements decayed with a 7-day half-life) / 8
``i_trend``                log((7 * pop_1d + 1) / (pop_7d + 1)): > 0 when rising (0 at a steady rate)
``i_log_plays``            log1p(all-time plays) / 8
``i_log_ratings``          log1p(all-time ratings) / 8
``i_completion_rate``      (completes + 5 * 0.4) / (plays + 5)
``i_skip_rate``            (skips + 5 * 0.2) / (plays + 5)
``i_ctr``                  (clicks + 20 * 0.05) / (impressions + 20)
``i_mean_rating``          smoothed mean rating of the item, scaled as the user's
``i_log_age_days``         log1p(days since release, >= 0) / 10
``i_log_days_in_catalog``  log1p(days since the title entered the catalogue, >= 0) / 10
``i_is_original``          1 for an original production
``i_maturity``             maturity index / 5 (G = 0, NR = 1)
``i_unknown``              1 when the title is not in the bundle's static table (defaults used)
``ui_genre_affinity``      cosine(user's genre taste decayed to now, item's genre vector); 0 if none
``ui_seen_recent``         1 when the item is among the user's last 20 engaged items
``ui_recent_decay``        2 ** (-days since that engagement), 0 when not seen
``ctx_hour_sin/cos``       the local hour on the unit circle (0, 0 when unknown)
``cf_score`` ...           ``spec.EXTRA_DENSE_NAMES``: passed by the caller (``extra_dense``):
                           CF and content similarity from the bundle, and the retrieval sources'
                           scores (ANN, content, popular, new, because-you-watched); 0 if absent
=========================  ===================================================================

Wide (``spec.WIDE_NAMES``, hashed into ``spec.WIDE_BUCKETS`` with :func:`~models.features.hashing.cross`):
``x_user_genre`` user id x the item's primary genre; ``x_item_device``, ``x_item_hour`` (3-hour
bucket), ``x_item_country``: item x request context; ``x_lastitem_item``: the user's last engaged
item x the candidate (co-watch).

Categorical (``spec.CAT_NAMES``, 0 = unknown): ``item`` static index + 1; ``genre`` primary genre
+ 1; ``device``; ``country`` (``spec.country_code``); ``hour`` local hour + 1; ``user_activity``
1 + floor(log2(events)), capped at 12.

Context: a request's device, country and hour; each unknown one falls back to the user's last
known value (the state's ``device``/``country``/``hour``). A user idle longer than
``spec.USER_RETENTION_MS`` reads as a new user (the update code resets such a user too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.dataset import MATURITY_ORDER
from models.features import spec
from models.features.batch import FeatureBatch
from models.features.hashing import cross_mixed, mix64
from models.features.state import (
    I_CLICK,
    I_COMP,
    I_IMP,
    I_PLAY,
    I_RATE,
    I_RSUM,
    I_SKIP,
    NO_ITEM_HASH,
    NO_TS,
    U_COMP,
    U_EV,
    U_PLAY,
    U_RATE,
    U_SKIP,
    ItemStates,
    StaticRows,
    UserStates,
    decay,
    decayed,
    epoch_weights,
)

_LOG_DIV = 8.0
_EXTRA = frozenset(spec.EXTRA_DENSE_NAMES)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where and when a request happens: codes as in :class:`~models.features.state.EventBatch`."""

    device: int = 0  # models.dataset.DEVICE_CODE, 0 unknown
    country: int = 0  # spec.country_code, 0 unknown
    hour: int = -1  # local hour 0..23, -1 unknown


def _smooth(hits: NDArray[np.float64], trials: NDArray[np.float64], prior: tuple[float, float]) -> NDArray[np.float64]:
    rate, strength = prior
    return (hits + strength * rate) / (trials + strength)


def _log_scaled(x: NDArray[np.float64] | float, div: float) -> NDArray[np.float64]:
    # log1p on a contiguous float64 array: the same numpy kernel on both paths (see state.decay).
    return np.log1p(np.ascontiguousarray(np.maximum(np.asarray(x, np.float64), 0.0))) / div


def _first_match(values: NDArray[np.int64], recent: NDArray[np.int64]) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Per value: whether it is among ``recent``'s filled slots (not ``NO_ITEM_HASH``) and the first such
    slot (0 when none), as ``(values[:, None] == recent).argmax(axis=1)`` would, without the (n, 20) matrix."""
    filled = np.flatnonzero(recent != NO_ITEM_HASH)
    if len(filled) == 0 or len(values) == 0:
        return np.zeros(len(values), bool), np.zeros(len(values), np.int64)
    slots = filled[np.argsort(recent[filled], kind="stable")]  # equal hashes keep slot order: the first wins
    keys = recent[slots]
    pos = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    seen = keys[pos] == values
    return seen, np.where(seen, slots[pos], 0)


def feature_batch(
    user_hash: int,
    user: UserStates,
    items: ItemStates,
    static: StaticRows,
    context: RequestContext,
    now_ts: int,
    extra_dense: Mapping[str, NDArray[np.floating] | float] | None = None,
) -> FeatureBatch:
    """Features of one user (``user``: one row, ``user_hash``: ``hash_str(user_id)``) against the
    candidates of ``items`` / ``static`` (aligned), read at ``now_ts`` (ms).

    ``items`` must have been read for ``now_ts`` (popularity sums of now's epochs, see ``ItemStates``).
    """
    n = len(static.index)
    if len(user) != 1:
        raise ValueError(f"feature_batch takes one user's state, got {len(user)} rows")
    if len(items.counts) != n:
        raise ValueError(f"items ({len(items.counts)}) and static rows ({n}) are not aligned")
    if items.epoch != ItemStates.epochs_at(now_ts):
        raise ValueError("item state was read for another time than now_ts")
    unknown_extra = set(extra_dense or ()) - _EXTRA
    if unknown_extra:
        raise ValueError(f"unknown extra dense features {sorted(unknown_extra)}; allowed: {spec.EXTRA_DENSE_NAMES}")

    last_ts = int(user.last_ts[0])
    if last_ts != NO_TS and now_ts - last_ts > spec.USER_RETENTION_MS:
        user = UserStates.empty(1, user.n_genres)
        last_ts = NO_TS
    cols: dict[str, NDArray[np.float64] | NDArray[np.bool_] | float] = {}

    # --- user (the same for every candidate) -----------------------------------------------------
    uc = user.counts[0].astype(np.float64)
    plays = uc[U_PLAY]
    taste = user.taste(0, now_ts)
    cols["u_log_events"] = _log_scaled(uc[U_EV], _LOG_DIV)
    cols["u_log_plays"] = _log_scaled(plays, _LOG_DIV)
    cols["u_log_completes"] = _log_scaled(uc[U_COMP], _LOG_DIV)
    cols["u_log_ratings"] = _log_scaled(uc[U_RATE], _LOG_DIV)
    cols["u_skip_rate"] = _smooth(uc[U_SKIP], plays, spec.SKIP_PRIOR)
    cols["u_mean_rating"] = (_smooth(user.rating_milli[0] / 1000.0, uc[U_RATE], spec.RATING_PRIOR) - 0.5) / 4.5
    cols["u_log_hours_since_last"] = (
        _log_scaled((now_ts - last_ts) / spec.HOUR_MS, 10.0) if last_ts != NO_TS else 1.0
    )
    cols["u_genre_mass"] = _log_scaled(np.abs(taste).sum(), 5.0)

    # --- item ----------------------------------------------------------------------------------
    ic = items.counts.astype(np.float64)
    pop_1d, pop_7d = (decayed(items.pop[:, r], epoch_weights(now_ts, half_life)[1])
                      for r, (_, half_life) in enumerate(spec.POP_HALF_LIVES))
    i_plays = ic[:, I_PLAY]
    known = static.index >= 0
    cols["i_log_pop_1d"] = _log_scaled(pop_1d, _LOG_DIV)
    cols["i_log_pop_7d"] = _log_scaled(pop_7d, _LOG_DIV)
    cols["i_trend"] = np.log(np.ascontiguousarray((7.0 * pop_1d + 1.0) / (pop_7d + 1.0)))
    cols["i_log_plays"] = _log_scaled(i_plays, _LOG_DIV)
    cols["i_log_ratings"] = _log_scaled(ic[:, I_RATE], _LOG_DIV)
    cols["i_completion_rate"] = _smooth(ic[:, I_COMP], i_plays, spec.COMPLETION_PRIOR)
    cols["i_skip_rate"] = _smooth(ic[:, I_SKIP], i_plays, spec.SKIP_PRIOR)
    cols["i_ctr"] = _smooth(ic[:, I_CLICK], ic[:, I_IMP], spec.CTR_PRIOR)
    cols["i_mean_rating"] = (_smooth(ic[:, I_RSUM] / 1000.0, ic[:, I_RATE], spec.RATING_PRIOR) - 0.5) / 4.5
    cols["i_log_age_days"] = np.where(known, _log_scaled((now_ts - static.release_ts) / spec.DAY_MS, 10.0), 0.0)
    cols["i_log_days_in_catalog"] = np.where(
        known, _log_scaled((now_ts - static.first_seen_ts) / spec.DAY_MS, 10.0), 0.0)
    cols["i_is_original"] = static.is_original  # bool: 0.0 / 1.0 once in the float32 matrix
    cols["i_maturity"] = static.maturity / float(len(MATURITY_ORDER) - 1)
    cols["i_unknown"] = ~known

    # --- user x item ---------------------------------------------------------------------------
    dot = np.zeros(n)
    # Explicit order of additions: the same bits for any n. A genre without taste adds +-0.0 to each row,
    # which leaves it as it is (the sum is never -0.0: it starts at +0.0), so only genres with taste are added.
    for g in np.flatnonzero(taste).tolist():
        dot = dot + static.genre_unit[:, g] * taste[g]
    denom = static.genre_norm * float(np.sqrt(np.sum(taste * taste)))
    cols["ui_genre_affinity"] = np.where(denom > 0.0, dot / np.where(denom > 0.0, denom, 1.0), 0.0)
    recent = user.recent_item[0]
    seen, first = _first_match(static.item_hash, recent)
    seen_ts = user.recent_ts[0][first]
    cols["ui_seen_recent"] = seen
    cols["ui_recent_decay"] = np.where(seen, decay(now_ts - seen_ts, spec.DAY_MS), 0.0)

    # --- context -------------------------------------------------------------------------------
    device = context.device or int(user.device[0])
    country = context.country or int(user.country[0])
    hour = context.hour if context.hour >= 0 else int(user.hour[0])
    if hour >= 0:
        angle = np.array([2.0 * np.pi * hour / 24.0])
        cols["ctx_hour_sin"] = float(np.sin(angle)[0])
        cols["ctx_hour_cos"] = float(np.cos(angle)[0])

    for name, values in (extra_dense or {}).items():
        cols[name] = np.asarray(values, np.float64)
    # Filled column by column as rows of the transpose (contiguous writes), then laid out row-major once.
    columns = np.zeros((len(spec.DENSE_NAMES), n), np.float32)
    for j, name in enumerate(spec.DENSE_NAMES):
        if name in cols:
            columns[j] = cols.pop(name)  # a scalar or an (n,) column
    if cols:  # a column computed above that the spec does not list
        raise AssertionError(f"features missing from spec.DENSE_NAMES: {sorted(cols)}")
    dense = np.ascontiguousarray(columns.T)

    # --- wide ----------------------------------------------------------------------------------
    # hashing.cross of each pair; mix64 of the item hash (crossed three times) and of the scalars once.
    b = spec.WIDE_BUCKETS
    item_hash = static.item_hash
    item_mix = mix64(item_hash)
    last_item = int(recent[0])
    wide = np.empty((n, len(spec.WIDE_NAMES)), np.int64)
    wide[:, 0] = cross_mixed(mix64(user_hash), static.primary_genre_hash, 1, b)
    wide[:, 1] = cross_mixed(item_mix, device, 2, b)
    wide[:, 2] = cross_mixed(item_mix, hour // 3 if hour >= 0 else 8, 3, b)
    wide[:, 3] = cross_mixed(item_mix, country, 4, b)
    wide[:, 4] = cross_mixed(mix64(last_item), item_hash, 5, b)

    # --- categorical ---------------------------------------------------------------------------
    events = int(user.counts[0, U_EV])
    activity = 0 if events == 0 else min(spec.N_ACTIVITY_CODES - 1, events.bit_length())
    cats = np.empty((n, len(spec.CAT_NAMES)), np.int64)
    cats[:, 0] = static.index + 1
    cats[:, 1] = static.primary_genre
    cats[:, 2] = device
    cats[:, 3] = country
    cats[:, 4] = hour + 1
    cats[:, 5] = activity
    return FeatureBatch(dense=dense, wide=wide, cats=cats)
