"""Prometheus series of the HTTP layer (the pipeline's stage series live in :mod:`serving.metrics`).

``endpoint`` is the route template (``/v1/recommendations/{user_id}``), never the raw path, so the label set stays
bounded whatever ids clients send.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Fine buckets below 50 ms: the latency goal (p99 < 25 ms) and the 50 ms knee must be readable from the histogram.
_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUEST_SECONDS = Histogram(
    "streamrec_http_request_seconds",
    "Time from request received to response ready, per endpoint (route template) and status code.",
    ("endpoint", "status"),
    buckets=_BUCKETS,
)
EVENTS_ACCEPTED = Counter(
    "streamrec_http_events_accepted_total", "Events accepted by POST /v1/events and published to Kafka.", ("topic",)
)
EVENTS_REFUSED = Counter(
    "streamrec_http_events_refused_total", "Events refused by POST /v1/events (schema errors), by event field.",
    ("field",),
)
FALLBACK_ANSWERS = Counter(
    "streamrec_http_fallback_total",
    "Answers the HTTP layer made itself because the service failed or ran out of time (never a 5xx).",
    ("endpoint", "reason"),
)

# Admission control (serving/admission.py), per process ("liveall": one series per live replica).
ADMISSION_LIMIT = Gauge("streamrec_http_admission_limit", "Current adaptive limit on read requests in flight.",
                        multiprocess_mode="liveall")
ADMISSION_IN_FLIGHT = Gauge("streamrec_http_admission_in_flight", "Read requests being worked on now.",
                            multiprocess_mode="liveall")
ADMISSION_SHED = Counter("streamrec_http_admission_shed_total",
                         "Read requests refused at once with 503 (over the admission limit), per endpoint.",
                         ("endpoint",))

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def render_metrics() -> bytes:
    """The exposition text of this process, or of every worker process when prometheus_client's multiprocess mode
    is on (``PROMETHEUS_MULTIPROC_DIR``), so that ``serve --workers N`` can be scraped through any replica."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
