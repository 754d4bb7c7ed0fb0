"""`streamrec simulate`: simulated users of a generated world against the HTTP API (tools/simulate)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from foundation.logs import get_logger
from foundation.progress import progress_bar
from foundation.settings import Settings, get_settings
from tools.demo.apps import server_url
from tools.simulate.driver import SimulationConfig
from tools.simulate.driver import simulate as run_simulation
from tools.simulate.truth import load_truth

log = get_logger(__name__)
DEMO_KEY_FILE = "demo-api-key"  # where `streamrec demo` keeps the key it made (tools/demo/steps.py)


def _default_key(settings: Settings) -> str | None:
    """The operator's key (STREAMREC_API_KEY), else the key `streamrec demo` made for its own writes."""
    key = settings.api_key_value()
    if key:
        return key
    demo_key = settings.state_dir / DEMO_KEY_FILE
    if demo_key.exists():
        return demo_key.read_text().strip() or None
    return None


def simulate(
    world: Annotated[Path, typer.Option(
        "--world", exists=True, file_okay=False, help="A world made by `streamrec generate` (its world.json).")],
    users: Annotated[int, typer.Option("--users", min=1, help="Simulated users (distinct users of the world).")] = 100,
    minutes: Annotated[float, typer.Option("--minutes", min=0.01, help="Wall-clock minutes to run (0.5 allowed).")]
    = 1.0,
    url: Annotated[str | None, typer.Option(
        "--url", help="The API's base URL (default: http://STREAMREC_SERVER_HOST:STREAMREC_SERVER_PORT).")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="Key for POST /v1/events (default: STREAMREC_API_KEY, else the demo's key). Never logged.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the users picked and every decision they make.")] = 0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight at most.")] = 16,
    time_scale: Annotated[float, typer.Option(
        "--time-scale", min=1.0, help="Simulated seconds per wall second (the users' clocks, on the world's time).")]
    = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Drive simulated users of a generated world through the HTTP API: fetch, play, complete or skip.

    Each user fetches lists (GET /v1/recommendations, ``now`` on the world's clock), looks at the titles with a
    position bias, clicks, plays, completes or skips them as their true (drifting) taste says, and posts the events
    (POST /v1/events, carrying the answer's ``request_id``). Ends with a summary: requests, failures, events,
    outcomes, per-experiment variants, the true affinity of what was shown, and latencies.
    """
    settings = get_settings()
    key = api_key or _default_key(settings)
    config = SimulationConfig(url=url or server_url(settings), api_key=key, users=users, minutes=minutes, seed=seed,
                              concurrency=concurrency, time_scale=time_scale)
    truth = load_truth(world)
    log.info("simulate.world", world=str(world), world_users=truth.users.n, items=truth.catalog.n,
             origin_ts=truth.origin_ts, api_key="set" if key else "none")
    with progress_bar("lists answered", None) as advance:
        summary = asyncio.run(run_simulation(truth, config, advance))
    if as_json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print(summary)
    if summary["requests"] == 0:
        raise typer.Exit(1)  # nothing answered: the server is down or refuses every request


def _print(summary: dict[str, object]) -> None:
    table = Table(title="streamrec simulate", show_header=False)
    for name, value in summary.items():
        if name in ("experiments", "http_tries", "failures_by_kind", "latency_ms"):
            continue
        table.add_row(name, str(value))
    latency = summary["latency_ms"]
    assert isinstance(latency, dict)
    table.add_row("latency p50 / p99 (ms)", f"{latency['p50']} / {latency['p99']}")
    table.add_row("failures by kind", str(summary["failures_by_kind"] or "none"))
    experiments = summary["experiments"]
    assert isinstance(experiments, dict)
    for name, variants in experiments.items():
        for variant, counts in variants.items():
            table.add_row(f"experiment {name} / {variant}", f"users {counts['users']}, requests {counts['requests']}")
    if not experiments:
        table.add_row("experiments", "none in the answers")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command()(simulate)
