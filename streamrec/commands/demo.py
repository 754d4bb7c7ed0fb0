"""`streamrec demo`: the README's first command, the whole system from an empty machine to live answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from foundation.progress import progress_bar
from foundation.settings import Settings, get_settings
from tools.demo.apps import server_url, start_apps, stop_apps, wait_key_accepted, wait_server_ready
from tools.demo.show import LogFacts, pick_users, read_log_facts, run_stories
from tools.demo.steps import (
    DEMO_KEY_SCOPES,
    PAGE_KEY_NAME,
    PAGE_KEY_SCOPES,
    make_demo_key,
    make_page_key,
    page_clock_offset_ms,
    prepare_data,
    replay_once,
    train_once,
    wait_worker,
)
from tools.stack import StackError, manager

# The experiments the demo runs (the repository's file; absent from an installed wheel, then none).
DEMO_EXPERIMENTS = Path(__file__).resolve().parents[2] / "deploy" / "experiments.toml"
CLUSTER_BROKERS = 3  # `demo --cluster`'s topology: three brokers, three Redis masters with a replica each


def demo(
    data: Annotated[Path, typer.Option(help="Where the demo's event log is written.")] = Path("data/demo"),
    movielens: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Use a MovieLens directory instead.")
    ] = None,
    users: Annotated[int, typer.Option(min=1)] = 1000,
    items: Annotated[int, typer.Option(min=1)] = 5000,
    events: Annotated[int, typer.Option(min=1)] = 100_000,
    seed: Annotated[int, typer.Option()] = 0,
    artifacts: Annotated[Path | None, typer.Option(help="Bundle root (default: STREAMREC_ARTIFACTS).")] = None,
    show_users: Annotated[int, typer.Option(min=0, help="Users whose before/after answers are shown.")] = 3,
    worker_metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="The worker's Prometheus port (default: STREAMREC_WORKER_METRICS_PORT).")] = None,
    down: Annotated[bool, typer.Option("--down", help="Stop everything the demo started, then exit.")] = False,
    cluster: Annotated[bool, typer.Option(
        "--cluster", help=f"On the cluster stack ({CLUSTER_BROKERS} Kafka brokers and a Redis Cluster: "
        f"`stack up --brokers {CLUSTER_BROKERS} --redis-cluster`), started or reused.")] = False,
) -> None:
    """Start Kafka + Redis, make an event log, train, start a worker and the API, replay the log, and
    show a few users' recommendations before and after new interactions.

    ``--cluster``: the same on three brokers and a Redis Cluster."""
    settings = get_settings()
    if worker_metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": worker_metrics_port})
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    if down:
        for name, outcome in stop_apps(settings):
            out.print(f"{name:<6} {outcome}")
        result = asyncio.run(manager.down(settings))
        for item in result.stopped:
            out.print(f"{item.name:<6} {item.outcome}")
        return
    try:
        _run(settings, out, err, data, movielens, users, items, events, seed,
             (artifacts or settings.artifacts).resolve(), show_users, cluster)
    except StackError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None


def _run(settings: Settings, out: Console, err: Console, data: Path, movielens: Path | None, users: int,
         items: int, events: int, seed: int, artifacts: Path, show_users: int, cluster: bool = False) -> None:
    if cluster:
        out.rule(f"[bold]1. local cluster stack: {CLUSTER_BROKERS} Kafka brokers (KRaft) + Redis Cluster")
    else:
        out.rule("[bold]1. local stack: Kafka (KRaft) + redis-server")
    # None: what the state dir remembers (one broker and one redis-server on a fresh one), as `stack up` does.
    topology: dict[str, Any] = {"brokers": CLUSTER_BROKERS, "redis_cluster": True} if cluster else {}
    started = asyncio.run(manager.up(settings, progress=lambda message: err.status(message, spinner="dots"),
                                     **topology))
    settings = started.settings  # with the stack's credentials (a first `up` generates them)
    for service in started.status.services:
        out.print(f"{service.name:<6} {service.address:<16} pid {service.pid}  {service.detail}")

    out.rule("[bold]2. event log")
    with progress_bar("preparing the event log", total=None if movielens else events) as advance:
        summary = prepare_data(data, movielens, users, items, events, seed, advance)
    out.print(f"{'reused' if 'reused' in summary else 'wrote'} {data}/catalog.jsonl and {data}/events.jsonl")

    out.rule("[bold]3. train: CF + content vectors, HNSW, Wide & Deep ranker (ONNX)")
    with err.status("training", spinner="dots") as status:
        trained = train_once(data, artifacts, lambda stage: status.update(f"training: {stage}"))
    out.print(f"{'reused' if trained['reused'] else 'trained'} bundle {trained['version']} in {artifacts} "
              f"({trained['seconds']:.0f} s)")

    out.rule("[bold]4. stream worker + API server")
    # Writes need a key (STREAMREC_AUTH is on by default): one for the demo's own POSTs, and for the user to try.
    key, key_file = asyncio.run(make_demo_key(settings))
    out.print(f"API key  made: name demo, scopes {', '.join(DEMO_KEY_SCOPES)} (kept in {key_file}, mode 0600)")
    # The browser page's own key: it is handed to every browser, so events:write only.
    page_key, page_key_file, page_key_new = asyncio.run(make_page_key(settings))
    out.print(f"page key {'made' if page_key_new else 'reused'}: name {PAGE_KEY_NAME}, scopes "
              f"{', '.join(PAGE_KEY_SCOPES)} (for the browser page; kept in {page_key_file}, mode 0600)")
    # The page browses the world as of its log: its clock starts just after the newest event.
    facts = read_log_facts(data)
    # The shipped experiments file (deploy/experiments.toml: the ranker against retrieval order) unless the operator
    # named one: `streamrec simulate` then has an experiment to run users through without any configuration.
    experiments = settings.experiments_file or (DEMO_EXPERIMENTS if DEMO_EXPERIMENTS.exists() else None)
    app_settings = settings.model_copy(update={"page_api_key": SecretStr(page_key),
                                               "page_clock_offset_ms": page_clock_offset_ms(facts.last_ts),
                                               "experiments_file": experiments})
    if not trained["reused"]:
        stop_apps(settings)  # a running worker holds the previous bundle's vectors
    elif page_key_new:
        stop_apps(settings, ("server",))  # a running server hands out the previous page key
    for app in start_apps(app_settings, artifacts, Path.cwd()):
        verb = "started" if app.started else "running"
        out.print(f"{app.name:<6} {verb:<8} pid {app.pid:<8} {app.address:<28} log {app.log_file}")

    out.rule("[bold]5. replay the log into Kafka; the worker learns from it")
    with progress_bar("replaying", total=None) as advance:
        report = asyncio.run(replay_once(data, settings, advance))
    if report is None:
        out.print("this log was already replayed into this stack: not publishing it twice")
    else:
        out.print(f"published {report.published:,} events at {report.events_per_s:,.0f} events/s, rejected "
                  f"{report.rejected:,}" + (f" (see {report.rejects_path})" if report.rejects_path else ""))
    with progress_bar("worker applying the log", total=100) as advance:
        seconds = asyncio.run(wait_worker(settings, advance))
    out.print(f"the worker has applied every record ({seconds:.1f} s after the replay)")
    ready = asyncio.run(wait_server_ready(settings))
    asyncio.run(wait_key_accepted(settings, key))  # a server left running from a previous demo re-reads its keys
    out.print(f"server ready: {ready}")

    if show_users:
        out.rule("[bold]6. real-time adaptation: answers before and after a few new interactions")
        _show(settings, out, facts, show_users, key)

    out.rule()
    url = server_url(settings)
    out.print(f"API      {url}/v1/recommendations/USER_ID   (docs: {url}/openapi.json, metrics: {url}/metrics)")
    metrics_port = settings.worker_metrics_port
    out.print(f"worker   metrics on :{metrics_port}" if metrics_port else "worker   running")
    redis_kind = " (Redis Cluster: the client finds every node from this one)" if settings.redis_cluster else ""
    out.print(f"Kafka    {settings.kafka_bootstrap}    Redis {settings.redis_url_masked}{redis_kind}")
    out.print(f"API key  {key}   (shown once here; also in {key_file})", markup=False)
    out.print(f"         curl -H 'X-API-Key: {key}' -H 'Content-Type: application/json' -d @event.json "
              f"{url}/v1/events", markup=False)
    out.print("         more keys: streamrec keys create --scopes events:write   (list / revoke NAME)", markup=False)
    out.print("Everything keeps running. Stop it all with: streamrec demo --down")
    out.rule("[bold]the browser page")
    out.print("A homepage of rows for any user (pick one, or 'New user' for a cold start); click a title to play it, "
              "'Done' to complete it, and watch the rows change.")
    out.print(f"[bold]Open {url}/ in a browser[/]")
    if experiments is not None and movielens is None:
        out.rule("[bold]an experiment")
        out.print(f"{experiments} runs on this server (GET {url}/v1/experiments with an admin key). Simulated "
                  "users of the world play what they are shown; then the report:")
        out.print(f"  streamrec simulate --world {data} --users 300 --minutes 2 --api-key {key}", markup=False)
        out.print("  streamrec experiments report ranker --plots .artifacts/experiments", markup=False)


def _show(settings: Settings, out: Console, facts: LogFacts, n_users: int, key: str) -> None:
    stories = asyncio.run(run_stories(server_url(settings), facts, pick_users(facts, n_users), api_key=key))

    def name(item: dict[str, Any] | None, genre: str) -> str:
        if item is None:
            return ""
        info = facts.titles.get(item["item_id"])
        text = info.title if info else item["item_id"]
        return f"[bold green]{text}[/]" if info and genre in info.genres else text

    for story in stories:
        played = ", ".join(t.title for t in story.played)
        out.print(f"\n[bold]user {story.user_id}[/] plays and completes {len(story.played)} "
                  f"[bold green]{story.genre}[/] titles: {played}")
        before, after = story.before.get("items", []), story.after.get("items", [])
        table = Table(show_header=True, header_style="bold", expand=False)
        for column in ("#", "before", "after", "why (after)"):
            table.add_column(column, overflow="fold")
        for rank in range(max(len(before), len(after))):
            b = before[rank] if rank < len(before) else None
            a = after[rank] if rank < len(after) else None
            table.add_row(str(rank + 1), name(b, story.genre), name(a, story.genre), a.get("reason", "") if a else "")
        out.print(table)
        visible = f"{story.seconds_to_visible:.2f} s" if story.seconds_to_visible is not None else "not within 20 s"
        out.print(f"{story.genre} titles in the top {len(after)}: {story.genre_share(story.before, facts.titles)} -> "
                  f"{story.genre_share(story.after, facts.titles)}; the new answer was visible {visible} after "
                  "POST /v1/events")


def register(app: typer.Typer) -> None:
    app.command()(demo)
