"""The Faust entry point of the stream worker: ``faust -A streams.app worker -l info``.

Its one task runs :class:`streams.worker.Worker` (what ``streamrec worker`` runs without Faust), configured by
the settings (``STREAMREC_KAFKA_BOOTSTRAP``, ``STREAMREC_ARTIFACTS``, ``STREAMREC_WORKER_METRICS_PORT``,
``STREAMREC_WORKER_CONCURRENCY``). The data topics are not consumed through Faust's agents: Faust wraps every
record in an event with its own acknowledgement and offset bookkeeping and feeds agents through per-event
queues, which alone stays far below the worker's throughput goal (``benchmarks/bench_worker.py
--faust-floor``; figures in the README). The worker drives an aiokafka consumer with ``getmany`` and handles
each partition's records as one batch instead.
"""

from __future__ import annotations

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
    return WorkerOptions(artifacts=settings.artifacts, metrics_port=settings.worker_metrics_port,
                         concurrency=settings.worker_concurrency, blas_threads=settings.blas_threads)


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
