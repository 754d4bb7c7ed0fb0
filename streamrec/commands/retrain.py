"""`streamrec retrain`: train a candidate bundle from the stream, gate it against `latest`, publish if not worse."""

from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path
from typing import Annotated, Final

import orjson
import typer
from prometheus_client import start_http_server

from foundation.progress import stderr_console
from foundation.settings import get_settings
from models.retrain_gate import DEFAULT_TOLERANCE
from models.train import config_from_bundle
from tools.retrain import RetrainOptions, parse_every, retrain_every, retrain_once

# The one-shot's exit status, for cron and CI: 0 published, 3 refused (latest unchanged), 1 failed.
EXIT_CODES: Final = {"published": 0, "refused": 3, "failed": 1}


def retrain(
    data: Annotated[Path | None, typer.Option(
        "--data", exists=True, file_okay=False,
        help="Train from this event-log folder instead of the topics (default: read the topics).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Artifacts root (default: STREAMREC_ARTIFACTS).")] = None,
    every: Annotated[str | None, typer.Option(
        "--every", help="Run every PERIOD (e.g. 24h, 30m) until stopped; default: once, exit code 0 published, "
                        "3 refused, 1 failed.")] = None,
    tolerance: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="Publish when every gate metric is at least (1 - TOLERANCE) x the current "
                                "bundle's (relative).")] = DEFAULT_TOLERANCE,
    window_share: Annotated[float, typer.Option(
        min=0.01, max=0.9, help="The validation window: this newest share of the log's time, held out of the "
                                "candidate's training.")] = 0.2,
    max_users: Annotated[int, typer.Option(min=10, help="Users of the window scored (sampled).")] = 500,
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", file_okay=False, help="Keep the event log read from the topics here (default: temporary).")
    ] = None,
    per_day: Annotated[bool, typer.Option("--per-day", help="Also archive the events as a file per UTC day.")
                       ] = False,
    seed: Annotated[int | None, typer.Option(help="Training seed (default: the current bundle's).")] = None,
    dim: Annotated[int | None, typer.Option(min=4, help="CF/content dimension (default: the current bundle's).")
                   ] = None,
    rank_users: Annotated[int | None, typer.Option(min=10, help="Ranker requests (default: the current bundle's).")
                          ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Ranker epochs (default: the current bundle's).")] = None,
    metrics_port: Annotated[int, typer.Option(
        help="With --every: serve Prometheus metrics (streamrec_retrain_runs_total) on this port; 0: off.")] = 0,
    candidate: Annotated[str | None, typer.Option(
        "--candidate", hidden=True, help="Gate this bundle of versions/ instead of training one (tests).")] = None,
) -> None:
    """Train a candidate bundle from the topics, compare it with `latest` on a recent window, publish if not worse."""
    settings = get_settings()
    artifacts = out or settings.artifacts
    config = None
    if any(v is not None for v in (seed, dim, rank_users, epochs)):
        base = config_from_bundle(artifacts)
        changes = {k: v for k, v in {"seed": seed, "dim": dim, "rank_users": rank_users, "ranker_epochs": epochs
                                     }.items() if v is not None}
        config = dataclasses.replace(base, **changes)
    options = RetrainOptions(data=data, log_dir=log_dir, per_day=per_day, tolerance=tolerance,
                             window_share=window_share, max_users=max_users, config=config,
                             candidate_version=candidate, seed=seed or 0)

    def progress(message: str) -> None:
        stderr_console.log(message)

    if every is None:
        result = retrain_once(settings, artifacts, options, progress)
        typer.echo(orjson.dumps({"outcome": result.outcome, "candidate": result.candidate, "current": result.current,
                                 "reason": result.reason, "gate": result.gate, "seconds": result.seconds},
                                option=orjson.OPT_INDENT_2).decode())
        raise typer.Exit(EXIT_CODES[result.outcome])
    try:
        period = parse_every(every)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--every") from None
    if metrics_port:
        start_http_server(metrics_port, settings.worker_metrics_host)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    retrain_every(settings, artifacts, period, options, progress, stop=stopping.is_set)


def register(app: typer.Typer) -> None:
    app.command()(retrain)
