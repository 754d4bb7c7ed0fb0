"""`streamrec worker`: run a stream worker (:mod:`streams.worker`), which consumes the interactions and catalog
topics and keeps the online state in Redis, exactly once.

Several workers share the partitions (consumer group ``streamrec-workers``). Also runnable on its own,
``python -m streamrec.commands.worker [OPTIONS]``, without loading the other commands (tests and benchmarks
start workers that way).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from foundation.logs import configure_logging
from foundation.settings import get_settings
from online_state.keys import DEFAULT_PREFIX
from streams.worker import WorkerOptions, run_worker


def worker(
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="Model bundle root (default: STREAMREC_ARTIFACTS; runs without a bundle too).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, help="Partition batches handled at once (their Redis round trips overlap); "
                                     "default: STREAMREC_WORKER_CONCURRENCY.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, help="Prometheus metrics port (0 disables); "
                                                 "default: STREAMREC_WORKER_METRICS_PORT.")] = None,
    max_records: Annotated[int, typer.Option(
        "--max-records", min=1, help="Records fetched per round (split into per-partition batches).")] = 2000,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Delete every sr:* key (state and offsets) first and re-consume every partition from "
                          "the beginning. Stop the other workers before.")] = False,
    session_timeout_ms: Annotated[int, typer.Option(
        "--session-timeout-ms", min=1000, help="Group session timeout: how soon a dead worker's partitions move.")
    ] = 10_000,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="Redis key prefix of the state (benchmarks use their own).", hidden=True)] = DEFAULT_PREFIX,
    no_effects: Annotated[bool, typer.Option(
        "--features-only", help="Maintain the ranking features only (skip trending, sessions, vectors).")] = False,
) -> None:
    """Consume the interactions and catalog topics and keep the online state in Redis, exactly once."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    options = WorkerOptions(
        artifacts=artifacts or settings.artifacts,
        concurrency=concurrency if concurrency is not None else settings.worker_concurrency,
        metrics_port=metrics_port if metrics_port is not None else settings.worker_metrics_port,
        max_records=max_records, rebuild=rebuild, effects=not no_effects,
        session_timeout_ms=session_timeout_ms, prefix=prefix, blas_threads=settings.blas_threads,
    )
    uvloop.install()
    asyncio.run(run_worker(settings, options))


def register(app: typer.Typer) -> None:
    app.command()(worker)


def main() -> None:
    """``python -m streamrec.commands.worker``: this one command, without the rest of the CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app(prog_name="streamrec worker")


if __name__ == "__main__":
    main()
