"""`streamrec keys create|list|revoke`: the API keys every server replica accepts (stored hashed in Redis).

``create`` prints the new key once, on stdout (``--json``: one JSON object), and how to use it on stderr; nothing else
ever shows it again, since only its SHA-256 is stored (:mod:`online_state.api_keys`). Servers pick changes up within
``STREAMREC_AUTH_KEYS_REFRESH_S`` (2 s).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.table import Table

from foundation.redis_io import redis_client
from foundation.settings import Settings, get_settings
from online_state import api_keys
from online_state.api_keys import SCOPES, KeyTableError

app = typer.Typer(
    name="keys",
    help="Create, list and revoke the API keys (with scopes) that POST /v1/events and, optionally, reads need.",
    no_args_is_help=True,
)

T = TypeVar("T")


def register(parent: typer.Typer) -> None:
    """Add the ``keys`` group to the console script (``streamrec.cli`` calls this)."""
    parent.add_typer(app, name="keys")


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code=1)


def _redis(settings: Settings) -> aioredis.Redis:
    return redis_client(settings, socket_connect_timeout=5.0, socket_timeout=5.0)


def _with_redis(action: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run ``action`` on a client of the configured Redis; an unreachable Redis or a refused operation is one line."""

    async def run() -> T:
        redis = _redis(get_settings())
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except KeyTableError as exc:
        raise _fail(str(exc)) from None
    except (OSError, ConnectionError, aioredis.RedisError) as exc:
        raise _fail(f"cannot reach Redis at {get_settings().redis_url_masked}: {exc}") from None


def _created(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command("create")
def create(
    scopes: Annotated[str, typer.Option(
        "--scopes", help=f"Comma-separated scopes: {', '.join(SCOPES)} (admin implies every other).")],
    name: Annotated[str | None, typer.Option(
        "--name", help="A unique name (1 to 64 of [A-Za-z0-9._-]); default: key-<random>.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Make a new key and print it, once: only its SHA-256 is stored."""
    chosen = name or f"key-{secrets.token_hex(4)}"
    key = _with_redis(lambda redis: api_keys.create(redis, chosen, scopes.split(",")))
    wanted = sorted(api_keys.parse_scopes(scopes.split(",")))
    if as_json:
        typer.echo(orjson.dumps({"name": chosen, "scopes": wanted, "key": key}).decode())
        return
    typer.echo(key)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    settings = get_settings()
    err.print(f"created key [bold]{chosen}[/] with scopes {', '.join(wanted)}. It is shown only this once: keep it "
              "in a secret store. Servers accept it within a few seconds.", markup=True)
    err.print(f"use it:  curl -H 'X-API-Key: {key}' -H 'Content-Type: application/json' "
              f"-d @event.json http://{settings.server_host}:{settings.server_port}/v1/events", markup=False)
    err.print(f"revoke:  streamrec keys revoke {chosen}", markup=False)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """Every key's name, scopes and creation time (never the key, nor its hash)."""
    records = _with_redis(api_keys.list_keys)
    rows: list[dict[str, Any]] = [record.as_dict() for record in records]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table(title=f"{len(rows)} API key(s)", title_justify="left")
    for column in ("name", "scopes", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], ",".join(row["scopes"]), _created(row["created_ms"]))
    Console(highlight=False).print(table)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's name (see `streamrec keys list`).")]) -> None:
    """Delete a key; every server refuses it within STREAMREC_AUTH_KEYS_REFRESH_S."""
    if not _with_redis(lambda redis: api_keys.revoke(redis, name)):
        raise _fail(f"no key named {name!r}")
    Console(stderr=True, highlight=False).print(f"revoked {name}; servers refuse it within "
                                                f"{get_settings().auth_keys_refresh_s:g} s", markup=False)
