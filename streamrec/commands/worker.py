"""`streamrec worker`: run a stream worker (consumes interactions + catalog, writes Redis state).

Several workers share the partitions (consumer group ``streamrec-workers``); see
:mod:`streams.worker` for the exactly-once protocol and :mod:`streams.app` for the Faust entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def worker(
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="Model bundle root (default: STREAMREC_ARTIFACTS; runs without a bundle too).")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, help="Partition batches handled at once (their Redis round trips overlap).")] = 4,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", min=0, max=65535, help="Prometheus metrics port (0 disables).")] = 9108,
    max_records: Annotated[int, typer.Option(
        "--max-records", min=1, help="Records fetched per round (split into per-partition batches).")] = 2000,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Delete every sr:* key (state and offsets) first and re-consume every partition from "
                          "the beginning. Stop the other workers before.")] = False,
    session_timeout_ms: Annotated[int, typer.Option(
        "--session-timeout-ms", min=1000, help="Group session timeout: how soon a dead worker's partitions move.")
    ] = 10_000,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="Redis key prefix of the state (benchmarks use their own).", hidden=True)] = "sr",
    no_effects: Annotated[bool, typer.Option(
        "--features-only", help="Maintain the ranking features only (skip trending, sessions, vectors).")] = False,
) -> None:
    """Consume the interactions and catalog topics and keep the online state in Redis, exactly once."""
    import asyncio

    from foundation.logs import configure_logging
    from foundation.settings import get_settings
    from streams.worker import WorkerOptions, run_worker

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    options = WorkerOptions(
        artifacts=artifacts or settings.artifacts, concurrency=concurrency, metrics_port=metrics_port,
        max_records=max_records, rebuild=rebuild, effects=not no_effects,
        session_timeout_ms=session_timeout_ms, prefix=prefix, blas_threads=settings.blas_threads,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    asyncio.run(run_worker(settings, options))


def register(app: typer.Typer) -> None:
    app.command()(worker)
