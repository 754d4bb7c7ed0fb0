"""The Faust entry point of the stream worker: ``faust -A streams.app worker -l info``.

Broker from ``STREAMREC_KAFKA_BOOTSTRAP``, bundle from ``STREAMREC_ARTIFACTS``, metrics port from
``STREAMREC_METRICS_PORT`` (default 9108, 0 disables; not a settings field: only this entry point
reads it). ``streamrec worker`` runs the same :class:`streams.worker.Worker` without Faust.

Why the agents do not consume through Faust (measured, 2 cores, local KRaft broker, a pre-filled
8-partition topic of 200,000 generated interaction records; scripts in ``benchmarks/bench_worker.py
--faust-floor``):

=============================================================== ==================
consumer, doing nothing but counting (and decoding)              events/s
=============================================================== ==================
aiokafka ``getmany(max_records=2000)``                           ~450,000 (~190,000)
Faust agent ``stream.take_events(2000, within=0.2)``             ~4,900 (~4,400)
=============================================================== ==================

Faust wraps every record in an ``Event`` with its own message, acknowledgement and offset
bookkeeping, and feeds the agent through per-event queues; that alone stays at ~5k events/s, half
the goal of >= 10,000 events/s per worker, before any decoding or Redis work. So the app is the
entry point (and the place for Faust timers/web if wanted), and its one task runs the worker, which
drives an aiokafka consumer with ``getmany`` and handles each partition's records as one batch
(:mod:`streams.worker`): the interactions and catalog "agents" are the worker's per-topic batch
handlers (``Worker._apply_interactions`` / ``Worker._apply_catalog``). The whole worker sustains
several times the Faust floor (``benchmarks/bench_worker.py``).
"""

from __future__ import annotations

import os

import faust

from foundation.logs import get_logger
from foundation.settings import get_settings
from streams.worker import Worker, WorkerOptions

settings = get_settings()
log = get_logger(__name__)

app = faust.App(
    "streamrec-worker-app",
    broker=";".join(f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")),
    value_serializer="raw",
    topic_disable_leader=True,  # the data topics are not consumed through Faust: no leader topic
    web_enabled=False,
    autodiscover=False,
)

# Faust's consumer needs at least one subscription: a one-partition control topic (created by Faust)
# whose messages are only logged, e.g. ``{"note": "deploy 42"}`` from an operator.
control = app.topic("streamrec-worker-control", internal=True, partitions=1, value_serializer="json")


def worker_options() -> WorkerOptions:
    return WorkerOptions(
        artifacts=settings.artifacts,
        metrics_port=int(os.environ.get("STREAMREC_METRICS_PORT", "9108")),
        concurrency=int(os.environ.get("STREAMREC_WORKER_CONCURRENCY", "4")),
    )


@app.task
async def stream_worker() -> None:
    """Runs until Faust stops (SIGTERM/SIGINT): Faust cancels the task, the worker closes its clients."""
    worker = Worker(settings, worker_options())
    await worker.run()


@app.agent(control)
async def control_messages(stream: faust.StreamT) -> None:
    async for message in stream:
        log.info("worker.control", message=message)


def main() -> None:
    app.main()


if __name__ == "__main__":
    main()
