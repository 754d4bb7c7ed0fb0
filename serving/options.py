"""Knobs of one server's recommendation service: the ``STREAMREC_SERVING_*`` settings plus the in-code knobs.

Every knob that is a setting takes its default from :class:`foundation.settings.Settings` (declared once
there); the others (post-processing overrides, the bundle poll interval) are fixed here and changed by
tests and benchmarks through the constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from foundation.settings import Settings
from online_state.keys import DEFAULT_PREFIX

# The settings whose names are ``serving_<field>``: their defaults are the settings' own.
FROM_SETTINGS = ("candidates_timeout_ms", "features_timeout_ms", "item_state_ttl_s", "shared_reads_ttl_s",
                 "item_state_in_process", "item_state_resync_s", "reason_titles")


def _setting_default(name: str) -> Any:
    return Settings.model_fields[f"serving_{name}"].default


@dataclass(frozen=True, slots=True)
class ServingOptions:
    candidates_timeout_ms: float = _setting_default("candidates_timeout_ms")  # stage 1 budget (Redis read + sources)
    features_timeout_ms: float = _setting_default("features_timeout_ms")  # stage 2 Redis read of the candidates
    item_state_ttl_s: float = _setting_default("item_state_ttl_s")  # a candidate's feature row is reused this long
    shared_reads_ttl_s: float = _setting_default("shared_reads_ttl_s")  # trending lists / new releases reused
    item_state_in_process: bool = _setting_default("item_state_in_process")  # every title's state held here
    item_state_resync_s: float = _setting_default("item_state_resync_s")  # full re-read of it from Redis
    reason_titles: bool = _setting_default("reason_titles")  # reasons may name a watched title
    redis_timeout_s: float = 0.25  # socket connect/read timeout of the pool: a dead Redis fails fast
    trending_window: str = "24h"  # online_state.trending.WINDOWS key read for the popular source
    diversity: float | None = None  # MMR strength; None: the bundle's PostConfig
    original_boost: float | None = None
    new_release_boost: float | None = None
    freshness_half_life_days: float | None = None
    bundle_poll_s: float = 1.0  # how often `latest` is checked
    redis_prefix: str = DEFAULT_PREFIX  # of every Redis key (online_state.keys.KeyLayout)


def options_from_settings(settings: Settings) -> ServingOptions:
    """The settings' ``serving_*`` values over the defaults."""
    return replace(ServingOptions(), **{name: getattr(settings, f"serving_{name}") for name in FROM_SETTINGS})
