"""Prometheus metrics of the stream worker (one set per process, on the default registry).

Served over HTTP by :func:`serve` on the worker's metrics port (``settings.worker_metrics_port``, or
``streamrec worker --metrics-port``; 0 disables), bound to ``settings.worker_metrics_host``: 127.0.0.1 by
default, so that only the host itself can scrape it; set ``STREAMREC_WORKER_METRICS_HOST=0.0.0.0`` where a
scraper elsewhere must reach it (a container), behind a firewall.

One port per process: a second worker on the host needs its own (``--metrics-port``), or runs as one of
``streamrec worker --processes N`` (process ``i`` on ``metrics_port + i``). The worker binds the port before
anything else (:meth:`streams.worker.Worker.start`), so a taken port stops it with :class:`MetricsPortInUse`
before it joins the consumer group: it never takes partitions it cannot serve.
"""

from __future__ import annotations

import errno
import socket
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


class MetricsPortInUse(Exception):
    """The metrics port is taken (another worker on the host, most likely): the worker must not start."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__(
            f"worker metrics port {host}:{port} is already in use (another worker on this host?); give this "
            f"worker its own with --metrics-port PORT (0: no metrics), or run several workers on one host with "
            f"`streamrec worker --processes N` (ports {port}..{port}+N-1)"
        )


def serve(port: int, host: str = DEFAULT_HOST) -> bool:
    """Expose the metrics on ``host:port`` (port 0: disabled; once per process and address: a restart
    keeps the server). Loopback unless told otherwise. Returns whether a server is serving; raises
    :class:`MetricsPortInUse` when another process holds the port."""
    if port <= 0:
        return False
    if (host, port) not in _served:
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsPortInUse(host, port) from exc
            raise
        _served.add((host, port))
    return True


def ensure_free(port: int, host: str = DEFAULT_HOST) -> None:
    """Raise :class:`MetricsPortInUse` when ``host:port`` cannot be bound now (port 0: nothing to check).

    What ``streamrec worker --processes N`` checks for every child's port before it starts any: a clear
    refusal up front rather than N-1 workers that joined the group and one that did not. (The child's own
    bind stays the real guard: the port may be taken in between.)"""
    if port <= 0 or (host, port) in _served:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server binds (http.server)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsPortInUse(host, port) from exc
            raise


ITEM_STATE_PUBLISHED: Final = Counter(
    "streamrec_worker_item_state_published_total",
    "Item-state records (an item hash after a commit) sent to the item-state topic for the servers' copies.",
)
ITEM_STATE_PENDING: Final = Gauge(
    "streamrec_worker_item_state_pending", "Item-state records committed in Redis and not yet sent (one per item).",
)
BUNDLE_RELOADS: Final = Counter(
    "streamrec_worker_bundle_reloads_total", "Bundle hot reloads of the worker (a new `latest`), by outcome.",
    ["outcome"],
)
EXPERIMENT_EXPOSURES: Final = Counter(
    "streamrec_worker_experiment_exposures_total",
    "Exposures (impressions in at least one experiment) counted by the experiments effect (streams/experiments.py).",
)
EXPERIMENT_OUTCOMES: Final = Counter(
    "streamrec_worker_experiment_outcomes_total",
    "Positive engagements of users in an experiment, by whether they were attributed to an exposure "
    "(its request_id, or the title within the attribution window) or not.",
    ["outcome"],
)
