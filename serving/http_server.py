"""Running the app: one process on uvloop, or N stateless replicas sharing the port through SO_REUSEPORT.

Each replica loads its own bundle, Redis pool and HNSW replica (nothing is shared between processes, so a replica
can die or restart without the others noticing); the kernel spreads new connections across the listening sockets.
SIGTERM or SIGINT stops accepting, lets in-flight requests finish (``shutdown_timeout``), then closes the service and
flushes the Kafka producer in the app's cleanup context.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType

import uvloop
from aiohttp import web

from foundation.blas_threads import limit_blas_threads
from foundation.logs import configure_logging, get_logger
from foundation.settings import Settings
from serving.app import create_app
from serving.protocol_errors import JsonErrorAppRunner
from serving.service import NoBundleError

log = get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
KEEPALIVE_TIMEOUT_S = 75.0  # web.run_app's default (the protocol's own is an hour)


def serve_one(settings: Settings, artifacts: Path | None, host: str, port: int, reuse_port: bool) -> None:
    """Serve in this process until SIGTERM/SIGINT."""
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings, artifacts)

    async def one_blas_thread(_app: web.Application) -> AsyncIterator[None]:
        # After the service's start-up: loading the bundle loads scipy's own OpenBLAS, which a limit
        # set before it would miss (foundation/blas_threads.py).
        limit_blas_threads(settings.blas_threads)
        yield

    app.cleanup_ctx.append(one_blas_thread)

    log.info("starting server", host=host, port=port, pid=os.getpid(), reuse_port=reuse_port)
    try:
        uvloop.run(_run_app(app, host, port, reuse_port))
    except (web.GracefulExit, KeyboardInterrupt):
        pass  # SIGTERM/SIGINT: _run_app's cleanup has run (the loop cancels it on the way out)
    except NoBundleError as exc:  # an operator's mistake, not a crash: one line, no traceback
        log.error("cannot serve", error=str(exc))
        raise SystemExit(2) from None


async def _run_app(app: web.Application, host: str, port: int, reuse_port: bool) -> None:
    """``web.run_app`` with :class:`JsonErrorAppRunner`: requests the HTTP parser refuses (a request line or header
    too long, bytes that are not HTTP) get the app's JSON error shape instead of an echo of the input."""
    runner = JsonErrorAppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                                keepalive_timeout=KEEPALIVE_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        await asyncio.Future()  # until the runner's signal handlers raise GracefulExit
    finally:
        await runner.cleanup()  # stop accepting, let in-flight requests finish, close the app's resources


def _replica(settings: Settings, artifacts: Path | None, host: str, port: int) -> None:
    serve_one(settings, artifacts, host, port, reuse_port=True)


def serve(settings: Settings, artifacts: Path | None, host: str, port: int, workers: int = 1) -> int:
    """Serve with ``workers`` processes; returns the exit status (0 after a clean SIGTERM)."""
    if workers <= 1:
        serve_one(settings, artifacts, host, port, reuse_port=False)
        return 0
    # prometheus_client's multiprocess mode: /metrics on any replica reports every replica's series.
    own_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.TemporaryDirectory(prefix="streamrec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir.name
    # spawn, not fork: each replica builds its own event loop, sockets and ONNX session from scratch.
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_replica, args=(settings, artifacts, host, port), name=f"streamrec-serve-{n}")
                for n in range(workers)]
    for child in children:
        child.start()
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("replicas started", workers=workers, pids=[c.pid for c in children], host=host, port=port)
    status = 0
    try:
        # When one replica dies on its own the set is broken: stop the rest and report the failure.
        multiprocessing.connection.wait([c.sentinel for c in children])
        if not stopping:
            status = 1
            log.error("a replica exited; stopping the others",
                      exitcodes={c.pid: c.exitcode for c in children if not c.is_alive()})
            stop(signal.SIGTERM, None)
        for child in children:
            child.join(SHUTDOWN_TIMEOUT_S + 5)
            if child.is_alive():
                child.kill()
                child.join()
    finally:
        if own_metrics_dir is not None:
            own_metrics_dir.cleanup()
    return status
