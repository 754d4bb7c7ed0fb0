"""Prometheus metrics of the stream worker (one set per process, on the default registry).

Served over HTTP by :func:`serve` on the worker's metrics port (``settings.worker_metrics_port``, or
``streamrec worker --metrics-port``; 0 disables), bound to ``settings.worker_metrics_host``: 127.0.0.1 by
default, so that only the host itself can scrape it; set ``STREAMREC_WORKER_METRICS_HOST=0.0.0.0`` where a
scraper elsewhere must reach it (a container), behind a firewall.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS: Final = Counter(
    "streamrec_worker_events_total",
    "Records handled by the worker, by topic and outcome (processed, rejected = dead-lettered, "
    "skipped = already applied before a restart, duplicate = an event_id its user applied before: a retry).",
    ["topic", "outcome"],
)
BATCH_SECONDS: Final = Histogram(
    "streamrec_worker_batch_seconds", "Time to handle one batch of one partition, decode to EXEC.", ["topic"],
    buckets=_LATENCY_BUCKETS,
)
REDIS_APPLY_SECONDS: Final = Histogram(
    "streamrec_worker_redis_apply_seconds", "Time of the Redis part of a batch (reads + MULTI/EXEC).",
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE: Final = Histogram(
    "streamrec_worker_batch_records", "Records per partition batch.", ["topic"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
CONSUMER_LAG: Final = Gauge(
    "streamrec_worker_consumer_lag", "Records between the partition's high watermark and the last handled one.",
    ["topic", "partition"],
)
FENCED: Final = Counter(
    "streamrec_worker_fenced_total",
    "Batches whose EXEC was refused because another worker advanced the partition's offset (WATCH).",
    ["topic"],
)
DEAD_LETTERS: Final = Counter("streamrec_worker_dead_letters_total", "Dead letters produced.", ["topic"])
FAILURES: Final = Counter(
    "streamrec_worker_batch_failures_total", "Batches that failed (Redis or Kafka errors) and are retried.", ["topic"]
)
PAUSED: Final = Gauge(
    "streamrec_worker_paused",
    "1 while the worker is paused, by reason (redis_oom: Redis refuses writes at maxmemory; batches are retried).",
    ["reason"],
)
OOM_REFUSED: Final = Counter(
    "streamrec_worker_redis_oom_total",
    "Batches whose writes Redis refused for memory (OOM); each is rewound and retried, never dropped.", ["topic"],
)
RESTARTS: Final = Counter(
    "streamrec_worker_restarts_total", "In-process restarts (new Kafka clients and effects) after a client died."
)

DEFAULT_HOST: Final = "127.0.0.1"

_served: set[tuple[str, int]] = set()


def serve(port: int, host: str = DEFAULT_HOST) -> bool:
    """Expose the metrics on ``host:port`` (port 0: disabled; once per process and address: a restart
    keeps the server). Loopback unless told otherwise. Returns whether a server is serving."""
    if port <= 0:
        return False
    if (host, port) not in _served:
        start_http_server(port, addr=host)
        _served.add((host, port))
    return True
ITEM_STATE_PUBLISHED: Final = Counter(
    "streamrec_worker_item_state_published_total",
    "Item-state records (an item hash after a commit) sent to the item-state topic for the servers' copies.",
)
ITEM_STATE_PENDING: Final = Gauge(
    "streamrec_worker_item_state_pending", "Item-state records committed in Redis and not yet sent (one per item).",
)
