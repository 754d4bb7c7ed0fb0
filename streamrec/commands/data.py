"""Event-log commands: `generate`, `import movielens`, `replay`."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Annotated

import orjson
import typer

from foundation.progress import progress_bar
from foundation.settings import get_settings
from tools.datasets.movielens import MovieLensError, import_movielens
from tools.datasets.world import generate_world
from tools.replay import Pace, ReplayOptions, replay_log, report_table


def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for catalog.jsonl, events.jsonl, world.json.")],
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 2000,
    items: Annotated[int, typer.Option(min=1, help="Number of titles.")] = 10_000,
    events: Annotated[int, typer.Option(min=1, help="Number of lines in events.jsonl.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    malformed_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of event lines replaced by invalid ones.")
    ] = 0.0,
    days: Annotated[float, typer.Option(min=0.01, help="Span of the log in days.")] = 30.0,
) -> None:
    """Generate a synthetic world with drifting tastes, sessions and new releases."""
    with progress_bar("generating events", total=events) as advance:
        summary = generate_world(
            out, users=users, items=items, events=events, seed=seed,
            malformed_rate=malformed_rate, days=days, progress=advance,
        )
    typer.echo(_summary_json(summary))


def import_movielens_command(
    path: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="A MovieLens directory.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for catalog.jsonl and events.jsonl.")],
) -> None:
    """Convert MovieLens (ml-latest[-small], ml-100k or ml-1m layout) into the event-log format."""
    try:
        with progress_bar("importing MovieLens", total=None) as advance:
            summary = import_movielens(path, out, progress=advance)
    except MovieLensError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(_summary_json(summary))


def replay(
    log: Annotated[
        Path, typer.Argument(exists=True, help="An events .jsonl file, or a folder with catalog.jsonl + events.jsonl.")
    ],
    speed: Annotated[
        float | None, typer.Option(min=0.0, help="Replay at X times the recorded pace (event time).")
    ] = None,
    rate: Annotated[float | None, typer.Option(min=1.0, help="Replay at N events per second.")] = None,
    max_: Annotated[bool, typer.Option("--max", help="As fast as possible (the default).")] = False,
    skip: Annotated[int, typer.Option(min=0, help="Resume: skip the first N records of the merged log.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after N records.")] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Where invalid lines go (default: LOG.rejects.jsonl next to the log).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final report as JSON.")] = False,
) -> None:
    """Publish a recorded event log into Kafka, keyed and in per-user order, with an idempotent producer."""
    if sum(x is not None and x is not False for x in (speed, rate, max_ or None)) > 1:
        raise typer.BadParameter("choose one of --speed, --rate and --max")
    pace = Pace(speed=speed, rate=rate)
    options = ReplayOptions(skip=skip, limit=limit, rejects_path=rejects, pace=pace)
    settings = get_settings()
    with progress_bar("replaying", total=None) as advance:
        report = asyncio.run(replay_log(log, settings, options, progress=advance))
    if as_json:
        typer.echo(_summary_json(report))
    else:
        report_table(report)
    if report.published == 0 and report.rejected > 0:
        raise typer.Exit(code=1)


def _summary_json(summary: object) -> str:
    value = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else summary  # type: ignore[arg-type]
    return orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode()


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(replay)
    import_app = typer.Typer(help="Import public data sets into the event-log format.", no_args_is_help=True)
    import_app.command("movielens")(import_movielens_command)
    app.add_typer(import_app, name="import")
