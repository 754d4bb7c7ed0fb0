"""`streamrec train`: fit every model from an event log and publish a versioned bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from foundation.progress import stderr_console
from foundation.settings import get_settings
from models.config import TwoStageConfig
from models.train import train_bundle


def train(
    data: Annotated[Path, typer.Option("--data", exists=True, file_okay=False,
                                       help="Event-log folder (catalog.jsonl + events.jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", help="Artifacts root (default: STREAMREC_ARTIFACTS).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for every model.")] = 0,
    dim: Annotated[int, typer.Option(min=4, help="Dimension of the CF and content vectors.")] = 64,
    rank_users: Annotated[int, typer.Option(min=10, help="At most this many ranker training requests.")] = 2000,
    epochs: Annotated[int, typer.Option(min=1, help="Ranker epochs (early stopping on validation NDCG).")] = 12,
) -> None:
    """Train CF + content vectors, the HNSW indexes and the Wide & Deep ranker; publish the bundle."""
    artifacts = out or get_settings().artifacts
    config = TwoStageConfig(dim=dim, seed=seed, rank_users=rank_users, ranker_epochs=epochs)
    started = time.perf_counter()
    with stderr_console.status("training", spinner="dots") as status:
        def progress(message: str) -> None:
            status.update(f"[bold]training[/]: {message}")
            stderr_console.log(message)

        path, metrics = train_bundle(data, artifacts, config, progress)
    seconds = time.perf_counter() - started
    summary = {"bundle": str(path), "seconds": round(seconds, 1), "ranker": metrics["ranker"],
               "hnsw": metrics["retrieval"]["hnsw"], "inner_candidate_recall": metrics["inner_candidate_recall"]}
    typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


def register(app: typer.Typer) -> None:
    app.command()(train)
