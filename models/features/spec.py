"""The ranking feature spec: its version, constants and column layout, in one place.

A model bundle records the ``FEATURE_SPEC_VERSION`` its ranker was trained with (and the
:class:`~models.features.batch.FeatureLayout`). The server calls :func:`check_feature_spec` on load
and refuses a bundle built for a spec it does not compute, because a ranker fed differently
defined columns scores garbage without any error. Bump the version whenever the meaning of a
column changes (a constant below, a formula in :mod:`models.features.rows`, the state update in
:mod:`models.features.state`), and add the new number to ``SUPPORTED_FEATURE_SPECS`` only once
this code computes it. ``SPEC_FINGERPRINT`` digests the names and constants; a unit test pins it
so that an edit of this module without a version bump fails.

The columns themselves are documented in :mod:`models.features.rows`; the state behind them in
:mod:`models.features.state`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

from models.features.batch import FeatureLayout

FEATURE_SPEC_VERSION: Final = 2  # 2: the item-to-item and sequence sources and their scores of every candidate
SUPPORTED_FEATURE_SPECS: Final[frozenset[int]] = frozenset({FEATURE_SPEC_VERSION})

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000

# --- state -------------------------------------------------------------------------------------
# Decayed sums (user taste per genre, item popularity) are kept as integers per *epoch* of
# EPOCH_HALF_LIVES half-lives: sum(round(weight * 2 ** ((ts - epoch_start) / half_life) * DECAY_SCALE)).
# A read at ``now`` decays the sums of now's epoch and the one before to ``now``; older epochs hold
# events more than EPOCH_HALF_LIVES half-lives old (weight < 2**-8) and are dropped. See
# models.features.state for why integers.
EPOCH_HALF_LIVES: Final = 8
DECAY_SCALE: Final = 1 << 20
USER_GENRE_HALF_LIFE_MS: Final = 14 * DAY_MS
POP_HALF_LIVES: Final[tuple[tuple[str, int], ...]] = (("d", DAY_MS), ("w", 7 * DAY_MS))  # (Redis field prefix, ms)
# The user's last RECENT_ITEMS distinct positively engaged items (most recent first).
RECENT_ITEMS: Final = 20
# A user idle for longer than this (event time) starts from an empty state: both the offline
# replay and the online store apply the rule, so Redis can expire idle users (see
# online_state.redis_store) without the two paths disagreeing.
USER_RETENTION_MS: Final = 365 * DAY_MS

# --- smoothing priors (Bayesian averages: (count + strength * prior) / (trials + strength)) ----
COMPLETION_PRIOR: Final = (0.4, 5.0)  # (prior rate, strength in plays)
SKIP_PRIOR: Final = (0.2, 5.0)
CTR_PRIOR: Final = (0.05, 20.0)  # in impressions
RATING_PRIOR: Final = (3.5, 5.0)  # (prior stars, strength in ratings)

# --- categorical codes -------------------------------------------------------------------------
N_DEVICE_CODES: Final = 7  # 0 unknown + schemas.events.DEVICES (models.dataset.DEVICE_CODE)
N_COUNTRY_CODES: Final = 26 * 26 + 1  # 0 unknown + every two-letter code (see country_code)
N_HOUR_CODES: Final = 25  # 0 unknown + local hour 0..23
N_ACTIVITY_CODES: Final = 13  # 0: no history, k: 2**(k-1) <= events < 2**k, 12: 2048 and more
WIDE_BUCKETS: Final = 1 << 18

# --- columns -----------------------------------------------------------------------------------
STATE_DENSE_NAMES: Final[tuple[str, ...]] = (
    "u_log_events", "u_log_plays", "u_log_completes", "u_log_ratings", "u_skip_rate", "u_mean_rating",
    "u_log_hours_since_last", "u_genre_mass",
    "i_log_pop_1d", "i_log_pop_7d", "i_trend", "i_log_plays", "i_log_ratings", "i_completion_rate",
    "i_skip_rate", "i_ctr", "i_mean_rating", "i_log_age_days", "i_log_days_in_catalog", "i_is_original",
    "i_maturity", "i_unknown",
    "ui_genre_affinity", "ui_seen_recent", "ui_recent_decay",
    "ctx_hour_sin", "ctx_hour_cos",
)
# Filled by the caller from the model bundle and the retrieval stage (0 when not passed).
EXTRA_DENSE_NAMES: Final[tuple[str, ...]] = (
    "cf_score", "content_score", "src_ann", "src_content", "src_popular", "src_new", "src_byw", "src_item_item",
    "src_sequence", "ii_score", "seq_score",
)
DENSE_NAMES: Final[tuple[str, ...]] = STATE_DENSE_NAMES + EXTRA_DENSE_NAMES
WIDE_NAMES: Final[tuple[str, ...]] = (
    "x_user_genre", "x_item_device", "x_item_hour", "x_item_country", "x_lastitem_item",
)
CAT_NAMES: Final[tuple[str, ...]] = ("item", "genre", "device", "country", "hour", "user_activity")


class UnsupportedFeatureSpec(ValueError):
    """A bundle (or a layout) was built for features this code does not compute."""


def check_feature_spec(version: object) -> None:
    """Refuse a bundle whose feature spec this build does not compute, with what to do about it."""
    if isinstance(version, int) and not isinstance(version, bool) and version in SUPPORTED_FEATURE_SPECS:
        return
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_FEATURE_SPECS))
    raise UnsupportedFeatureSpec(
        f"model bundle was built with feature spec version {version!r}, but this build computes feature "
        f"spec version(s) {supported}: its ranker would be fed differently defined features. Rebuild the "
        f"bundle with this code (models.features.spec.FEATURE_SPEC_VERSION = {FEATURE_SPEC_VERSION}) or "
        f"deploy a server version that supports feature spec {version!r}."
    )


def feature_layout(n_items: int, n_genres: int) -> FeatureLayout:
    """The layout of the current spec for a catalogue of ``n_items`` titles and ``n_genres`` genres."""
    return FeatureLayout(
        dense_names=DENSE_NAMES,
        wide_names=WIDE_NAMES,
        wide_buckets=WIDE_BUCKETS,
        cat_names=CAT_NAMES,
        cat_cardinalities=(n_items + 1, n_genres + 1, N_DEVICE_CODES, N_COUNTRY_CODES, N_HOUR_CODES,
                           N_ACTIVITY_CODES),
    )


def check_layout(layout: FeatureLayout, expected: FeatureLayout) -> None:
    """Refuse a bundle whose stored layout differs from what this code builds for its catalogue."""
    if layout == expected:
        return
    diffs = [
        name for name in ("dense_names", "wide_names", "wide_buckets", "cat_names", "cat_cardinalities")
        if getattr(layout, name) != getattr(expected, name)
    ]
    raise UnsupportedFeatureSpec(
        f"model bundle's feature layout differs from feature spec {FEATURE_SPEC_VERSION} in {', '.join(diffs)}; "
        "rebuild the bundle with this code"
    )


def country_code(country: str | None) -> int:
    """A stable code for an ISO 3166-1 alpha-2 country: 1 + 26 * letter1 + letter2; 0 when unknown.

    No vocabulary to ship or keep in sync: the same code offline (from any log) and online.
    """
    if not country or len(country) != 2 or not ("A" <= country[0] <= "Z" and "A" <= country[1] <= "Z"):
        return 0
    return 1 + (ord(country[0]) - 65) * 26 + (ord(country[1]) - 65)


def _fingerprint() -> str:
    payload = {
        "version": FEATURE_SPEC_VERSION, "dense": DENSE_NAMES, "wide": WIDE_NAMES, "cats": CAT_NAMES,
        "wide_buckets": WIDE_BUCKETS, "genre_half_life": USER_GENRE_HALF_LIFE_MS, "recent": RECENT_ITEMS,
        "retention": USER_RETENTION_MS, "pop": POP_HALF_LIVES, "epoch": EPOCH_HALF_LIVES, "scale": DECAY_SCALE,
        "priors": (COMPLETION_PRIOR, SKIP_PRIOR, CTR_PRIOR, RATING_PRIOR),
        "codes": (N_DEVICE_CODES, N_COUNTRY_CODES, N_HOUR_CODES, N_ACTIVITY_CODES),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


SPEC_FINGERPRINT: Final = _fingerprint()
