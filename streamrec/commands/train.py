"""`streamrec train`: fit every model from an event log (a folder, or the topics) and publish a versioned bundle."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from foundation.progress import stderr_console
from foundation.settings import get_settings
from models.config import TwoStageConfig
from models.train import train_bundle
from tools.kafka_log import read_topics


def train(
    data: Annotated[Path | None, typer.Option("--data", exists=True, file_okay=False,
                                              help="Event-log folder (catalog.jsonl + events.jsonl).")] = None,
    from_kafka: Annotated[bool, typer.Option(
        "--from-kafka", help="Train from the catalog and interactions topics (read from the beginning, i.e. what "
                             "the retention keeps; broker, topics and credentials from the settings).")] = False,
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", file_okay=False, help="With --from-kafka: keep the event log read from the topics here "
                                           "(default: a temporary folder, removed after training).")] = None,
    per_day: Annotated[bool, typer.Option(
        "--per-day", help="With --from-kafka: also archive the events as a file per UTC day (LOG_DIR/days/).")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Artifacts root (default: STREAMREC_ARTIFACTS).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for every model.")] = 0,
    dim: Annotated[int, typer.Option(min=4, help="Dimension of the CF and content vectors.")] = 64,
    rank_users: Annotated[int, typer.Option(min=10, help="At most this many ranker training requests.")] = 2000,
    epochs: Annotated[int, typer.Option(min=1, help="Ranker epochs (early stopping on validation NDCG).")] = 12,
    sequence_epochs: Annotated[int, typer.Option(
        min=0, help="Epochs of the next-title sequence model (0: none in the bundle).")] = 40,
) -> None:
    """Train CF + content vectors, the HNSW indexes and the Wide & Deep ranker; publish the bundle."""
    if (data is None) == (not from_kafka):
        raise typer.BadParameter("give exactly one of --data FOLDER and --from-kafka", param_hint="--data")
    settings = get_settings()
    artifacts = out or settings.artifacts
    config = TwoStageConfig(dim=dim, seed=seed, rank_users=rank_users, ranker_epochs=epochs,
                            sequence_epochs=sequence_epochs)
    started = time.perf_counter()
    summary: dict[str, object] = {}
    with contextlib.ExitStack() as stack, stderr_console.status("training", spinner="dots") as status:
        def progress(message: str) -> None:
            status.update(f"[bold]training[/]: {message}")
            stderr_console.log(message)

        if data is None:
            folder = log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamrec-train-")))
            progress(f"reading {settings.topic_catalog} and {settings.topic_interactions} into {folder}")
            read = asyncio.run(read_topics(settings, folder, per_day=per_day))
            progress(f"{read.events:,} events, {read.catalog:,} catalog records; {read.invalid} invalid and "
                     f"{read.tombstones} tombstones skipped")
            summary["kafka"] = {"events": read.events, "catalog": read.catalog, "invalid": read.invalid,
                                "tombstones": read.tombstones, "log_dir": str(log_dir) if log_dir else None}
            data = folder
        path, metrics = train_bundle(data, artifacts, config, progress)
    seconds = time.perf_counter() - started
    summary = {"bundle": str(path), "seconds": round(seconds, 1), "ranker": metrics["ranker"],
               "hnsw": metrics["retrieval"]["hnsw"], "inner_candidate_recall": metrics["inner_candidate_recall"],
               **summary}
    typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


def register(app: typer.Typer) -> None:
    app.command()(train)
