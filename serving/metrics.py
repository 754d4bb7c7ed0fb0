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
ITEM_STATE_ITEMS: Final = Gauge("streamrec_serving_item_state_items", "Titles whose feature state this process holds.")
ITEM_STATE_BYTES: Final = Gauge(
    "streamrec_serving_item_state_bytes", "Bytes of the in-process item state arrays (the id index comes on top).")
ITEM_STATE_RECORDS: Final = Counter(
    "streamrec_serving_item_state_records_total",
    "Item-state records read, by outcome (applied, stale = an older version than the row held).", ["outcome"],
)
ITEM_STATE_STALENESS: Final = Histogram(
    "streamrec_serving_item_state_staleness_seconds",
    "From a worker's EXEC to its item-state record applied in this process (same-host clocks).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ITEM_STATE_LOADS: Final = Counter(
    "streamrec_serving_item_state_loads_total", "Full reads of the item state from Redis, by outcome.", ["outcome"])
