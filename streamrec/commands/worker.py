"""`streamrec worker`: run a stream worker (:mod:`streams.worker`), which consumes the interactions and catalog
topics and keeps the online state in Redis, exactly once.

Several workers share the partitions (consumer group ``streamrec-workers``). Also runnable on its own,
``python -m streamrec.commands.worker [OPTIONS]``, without loading the other commands (tests and benchmarks
start workers that way).

One worker uses one core. ``--processes N`` runs N of them on this host (:mod:`streams.process_pool`): the
same command N times, each with the same options, process ``i`` serving its metrics on ``--metrics-port + i``
(0: none). A metrics port that is taken stops a worker before it joins the group, with exit code 2.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Final

import typer
import uvloop

from foundation.logs import configure_logging
from foundation.settings import get_settings
from online_state.keys import DEFAULT_PREFIX
from streams.metrics import MetricsPortInUse
from streams.process_pool import ProcessSpec, metrics_ports, run_pool
from streams.worker import WorkerOptions, run_worker

PORT_IN_USE_EXIT: Final = 2  # a taken metrics port: the worker never started (nor joined the group)


def worker(
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="Model bundle root (default: STREAMREC_ARTIFACTS; runs without a bundle too).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, help="Partition batches handled at once (their Redis round trips overlap); "
                                     "default: STREAMREC_WORKER_CONCURRENCY.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, help="Prometheus metrics port (0 disables; with --processes N, "
                                                 "process i serves on this port + i); "
                                                 "default: STREAMREC_WORKER_METRICS_PORT.")] = None,
    processes: Annotated[int, typer.Option(
        "--processes", min=1, help="Worker processes to run on this host (one core each), sharing the partitions "
                                   "in the group; stopped together on SIGTERM/SIGINT or when one exits.")] = 1,
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
    try:
        if processes > 1:
            if rebuild:  # every process would delete the state the others are rebuilding
                raise typer.BadParameter("--rebuild needs one process: rebuild first, then start --processes N",
                                         param_hint="--processes")
            code = run_pool(_process_specs(options, processes), metrics_host=settings.worker_metrics_host)
            if code:
                raise typer.Exit(code)
            return
        uvloop.install()
        asyncio.run(run_worker(settings, options))
    except MetricsPortInUse as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(PORT_IN_USE_EXIT) from None


def _process_specs(options: WorkerOptions, processes: int) -> list[ProcessSpec]:
    """This command once per process, with the options resolved here (so every process runs the same) and
    its own metrics port."""
    try:
        ports = metrics_ports(options.metrics_port, processes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metrics-port") from None
    common = ["--concurrency", str(options.concurrency), "--max-records", str(options.max_records),
              "--session-timeout-ms", str(options.session_timeout_ms), "--prefix", options.prefix]
    if options.artifacts is not None:
        common += ["--artifacts", str(options.artifacts)]
    if not options.effects:
        common.append("--features-only")
    return [ProcessSpec(i, (sys.executable, "-m", "streamrec.commands.worker", "--metrics-port", str(port), *common),
                        port) for i, port in enumerate(ports)]


def register(app: typer.Typer) -> None:
    app.command()(worker)


def main() -> None:
    """``python -m streamrec.commands.worker``: this one command, without the rest of the CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app(prog_name="streamrec worker")


if __name__ == "__main__":
    main()
