"""`streamrec stack up|down|status|topics`: a local Kafka (KRaft) broker and redis-server for development, or a
local cluster (``up --brokers 3 --redis-cluster``: three KRaft brokers, a Redis Cluster of three masters with one
replica each; see tools/stack/topology.py for the ports).

Results go to stdout (``status --json`` is machine-readable); progress and errors go to stderr.
"""

from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console
from rich.table import Table

from foundation.settings import get_settings
from foundation.topics import TopicSetupError, ensure_topics
from tools.stack import StackError, manager


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code=1)


def up(
    brokers: int | None = typer.Option(
        None, "--brokers", min=1, max=9, help="Kafka brokers (KRaft, each also a controller); topics get replication "
        "factor min(3, N). Default: what this state dir ran last, else 1.",
    ),
    redis_cluster: bool | None = typer.Option(
        None, "--redis-cluster/--no-redis-cluster", help="A Redis Cluster of 3 masters with 1 replica each instead "
        "of one redis-server. Default: what this state dir ran last, else one redis-server.",
    ),
) -> None:
    """Start Kafka and redis-server (if not running), wait until both answer, create the topics."""
    settings = get_settings()
    err = Console(stderr=True, highlight=False)
    out = Console(highlight=False, soft_wrap=True)
    try:
        result = asyncio.run(manager.up(settings, progress=lambda message: err.status(message, spinner="dots"),
                                        brokers=brokers, redis_cluster=redis_cluster))
    except StackError as exc:
        raise _fail(str(exc)) from None
    width = max(6, *(len(service.name) for service in result.status.services))
    for service in result.status.services:
        verb = "already running" if service.name in result.already_running else "started"
        out.print(f"{service.name:<{width}} {verb:<16} {service.address:<16} pid {service.pid}  ({service.detail})")
    created = ", ".join(result.created_topics) or "none (all existed)"
    out.print(f"topics created: {created}")
    out.print(f"state: {result.status.state_dir}   ({result.seconds:.1f}s)")


def down() -> None:
    """Stop the processes that `stack up` started (verified by pid), and nothing else."""
    out = Console(highlight=False, soft_wrap=True)
    try:
        result = asyncio.run(manager.down(get_settings()))
    except StackError as exc:
        raise _fail(str(exc)) from None
    width = max(6, *(len(item.name) for item in result.stopped)) if result.stopped else 6
    for item in result.stopped:
        pid = f"pid {item.pid}" if item.pid is not None else ""
        out.print(f"{item.name:<{width}} {item.outcome!s:<12} {pid}".rstrip())


def status(
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object on stdout."),
) -> None:
    """Report whether Kafka and Redis run and answer; exits with status 1 unless both are healthy."""
    current = asyncio.run(manager.status(get_settings()))
    if as_json:
        typer.echo(json.dumps(current.to_dict(), indent=2))
    else:
        table = Table(title=f"streamrec stack ({current.state_dir})", title_justify="left")
        for column in ("service", "address", "pid", "health", "detail"):
            table.add_column(column)
        for service in current.services:
            health = "[green]healthy[/]" if service.healthy else "[red]unhealthy[/]"
            table.add_row(service.name, service.address, str(service.pid or "-"), health, service.detail)
        out = Console(highlight=False, soft_wrap=True)
        out.print(table)
        if current.topology.brokers > 1 or current.topology.redis_cluster:
            out.print(f"topology: {current.topology.describe()}")
        if current.topics:
            out.print(f"topics: {', '.join(current.topics)}")
    if not current.healthy:
        raise typer.Exit(code=1)


def topics() -> None:
    """Create the topics on the configured Kafka (idempotent): for clusters `stack up` did not start."""
    try:
        created = asyncio.run(ensure_topics(get_settings()))
    except TopicSetupError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"topics created: {', '.join(created) or 'none (all existed)'}")


def register(app: typer.Typer) -> None:
    # The help is also the line of `streamrec --help` (streamrec/cli.py COMMANDS); `up --help` tells of clusters.
    stack_app = typer.Typer(help="Run a local Kafka (KRaft) broker and redis-server.", no_args_is_help=True)
    stack_app.command("up")(up)
    stack_app.command("down")(down)
    stack_app.command("status")(status)
    stack_app.command("topics")(topics)
    app.add_typer(stack_app, name="stack")
