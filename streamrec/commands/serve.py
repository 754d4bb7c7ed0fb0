"""`streamrec serve`: the HTTP API (aiohttp on uvloop), one process or N replicas sharing the port."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from foundation.logs import configure_logging
from foundation.settings import get_settings
from serving.http_server import serve as run


def serve(
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="Model bundle root holding `latest` (default: STREAMREC_ARTIFACTS).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default: STREAMREC_SERVER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", min=1, max=65535, help="Port (default: STREAMREC_SERVER_PORT).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Stateless replica processes sharing the port (SO_REUSEPORT).")] = 1,
) -> None:
    """Serve /v1/recommendations, /v1/items/{id}/similar, /v1/events, /healthz, /readyz, /metrics, /openapi.json."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    status = run(settings, artifacts or settings.artifacts, host or settings.server_host,
                 port or settings.server_port, workers)
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    app.command()(serve)
