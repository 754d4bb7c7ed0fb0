"""Knobs of the serving pipeline, read from the settings' serving block when it has them.

The HTTP layer's settings block (``STREAMREC_SERVING_*``) may or may not define every field here; a
missing one keeps the default below, so the pipeline runs with any settings object.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class ServingOptions:
    candidates_timeout_ms: float = 50.0  # stage 1 budget (Redis read + every source)
    features_timeout_ms: float = 50.0  # stage 2 Redis read of the candidates' state
    redis_timeout_s: float = 0.25  # socket connect/read timeout of the pool: a dead Redis fails fast
    item_state_ttl_s: float = 1.0  # how long a candidate's feature row is reused (serving.feature_read); 0: never
    shared_reads_ttl_s: float = 1.0  # trending lists / new releases reused this long (serving.online_reads); 0: never
    trending_window: str = "24h"  # streams.trending.WINDOWS key read for the popular source
    diversity: float | None = None  # MMR strength; None: the bundle's PostConfig
    original_boost: float | None = None
    new_release_boost: float | None = None
    freshness_half_life_days: float | None = None
    bundle_poll_s: float = 1.0  # how often `latest` is checked
    redis_prefix: str = "sr"


def options_from_settings(settings: Any) -> ServingOptions:
    """``ServingOptions`` from ``settings.serving_<field>`` attributes where present."""
    values = {}
    for f in fields(ServingOptions):
        value = getattr(settings, f"serving_{f.name}", None)
        if value is not None:
            values[f.name] = value
    return ServingOptions(**values)
