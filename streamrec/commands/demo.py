"""`streamrec demo`: the README's first command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    data: Annotated[Path, typer.Option(help="Where the demo's event log is written.")] = Path("data/demo"),
    movielens: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Use a MovieLens directory instead.")
    ] = None,
    users: Annotated[int, typer.Option(min=1)] = 1000,
    items: Annotated[int, typer.Option(min=1)] = 10_000,
    events: Annotated[int, typer.Option(min=1)] = 200_000,
    seed: Annotated[int, typer.Option()] = 0,
    down: Annotated[bool, typer.Option("--down", help="Stop everything the demo started, then exit.")] = False,
) -> None:
    """Start the stack, generate a world (or import MovieLens), replay it into Kafka, show what landed."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from streamrec.demo import last_record, prepare_data, topic_end_offsets
    from streamrec.progress import progress_bar
    from streamrec.replay import replay_log
    from streamrec.settings import get_settings
    from streamrec.stack import StackError, manager

    settings = get_settings()
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    if down:
        result = asyncio.run(manager.down(settings))
        for item in result.stopped:
            out.print(f"{item.name:<6} {item.outcome}")
        return

    out.rule("[bold]1. local stack: Kafka (KRaft) + redis-server")
    try:
        started = asyncio.run(manager.up(settings, progress=lambda message: err.status(message, spinner="dots")))
    except StackError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    for service in started.status.services:
        out.print(f"{service.name:<6} {service.address:<16} pid {service.pid}  {service.detail}")

    out.rule("[bold]2. event log")
    with progress_bar("preparing the event log", total=None if movielens else events) as advance:
        summary = prepare_data(data, movielens, users, items, events, seed, advance)
    out.print(f"{'reused' if 'reused' in summary else 'wrote'} {data}/catalog.jsonl and {data}/events.jsonl")

    out.rule("[bold]3. replay into Kafka")
    topics = [settings.topic_catalog, settings.topic_interactions]
    before = asyncio.run(topic_end_offsets(settings, topics))
    with progress_bar("replaying", total=None) as advance:
        report = asyncio.run(replay_log(data, settings, progress=advance))
    after = asyncio.run(topic_end_offsets(settings, topics))
    out.print(f"published {report.published:,} events at {report.events_per_s:,.0f} events/s, "
              f"rejected {report.rejected:,}" + (f" (see {report.rejects_path})" if report.rejects_path else ""))

    out.rule("[bold]4. what landed")
    table = Table(show_header=True)
    for column in ("topic", "partitions", "records before", "records after", "landed now"):
        table.add_column(column, justify="right" if column != "topic" else "left")
    for topic in topics:
        partitions, end_before = before[topic]
        _, end_after = after[topic]
        table.add_row(topic, str(partitions), f"{end_before:,}", f"{end_after:,}", f"{end_after - end_before:,}")
    out.print(table)
    sample = asyncio.run(last_record(settings, settings.topic_interactions))
    if sample:
        out.print(f"newest record of {settings.topic_interactions} (partition {sample['partition']}, "
                  f"offset {sample['offset']}, key {sample['key']}):")
        out.print_json(data=sample["value"])
    out.rule()
    out.print(f"Kafka on {settings.kafka_bootstrap}, Redis on {settings.redis_url}; "
              "they keep running. Stop them with: streamrec demo --down")


def register(app: typer.Typer) -> None:
    app.command()(demo)
