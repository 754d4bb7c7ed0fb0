"""Prometheus metrics of the recommendation pipeline (default registry; h4's HTTP layer serves /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

# Stages aim at single-digit milliseconds; the upper buckets show timeouts (default 50 ms) and worse.
_STAGE_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
_COUNT_BUCKETS: Final = (0, 10, 50, 100, 200, 300, 400, 600, 800, 1000, 1500)

STAGE_SECONDS: Final = Histogram(
    "streamrec_serving_stage_seconds",
    "Time of one pipeline stage of a recommendation (candidates, features, ranking, postprocess, total).",
    ["stage"], buckets=_STAGE_BUCKETS,
)
CANDIDATES: Final = Histogram(
    "streamrec_serving_candidates",
    "Candidates each source contributed to one request (after exclusions); 'merged' is the de-duplicated set.",
    ["source"], buckets=_COUNT_BUCKETS,
)
DEGRADED: Final = Counter(
    "streamrec_serving_degraded_total",
    "Answers given without some part of the pipeline, by reason (redis_candidates, redis_features, ...).",
    ["reason"],
)
INDEX_ITEMS: Final = Gauge("streamrec_serving_index_items", "Live items in the serving HNSW index.")
INDEX_LAG: Final = Gauge(
    "streamrec_serving_index_lag", "Records of item-vectors and catalog not yet applied to the live index.")
RELOADS: Final = Counter("streamrec_serving_bundle_reloads_total", "Bundle hot reloads, by outcome.", ["outcome"])
