"""`streamrec inspect user|trending|dead-letters`: read the online state the workers maintain.

Read-only: nothing here writes to Redis or commits Kafka offsets (the dead-letters reader has no
consumer group). Results go to stdout (``--json``: one JSON document); errors go to stderr.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import orjson
import redis.asyncio as aioredis
import typer
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.pretty import Pretty
from rich.table import Table

from foundation.kafka_io import make_admin, make_consumer
from foundation.redis_io import redis_client
from foundation.settings import Settings, get_settings
from models.dataset import DEVICE_CODE
from online_state.feature_codec import UserBlob
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.reads import read_user_record
from online_state.trending import WINDOWS, read_trending, scope_from_dict
from online_state.user_vectors import unpack_user_vector
from schemas.topics import DLQ_HEADERS

app = typer.Typer(
    name="inspect",
    help="Inspect online state: a user's features and session, trending titles, dead letters.",
    no_args_is_help=True,
)

# Names of the counts in the user's feature state's ``n`` array (see online_state.feature_codec).
USER_COUNT_NAMES = ("events", "play", "complete", "skip", "rating", "click", "add_to_list")


def register(parent: typer.Typer) -> None:
    """Add the ``inspect`` group to the console script (``streamrec.cli`` calls this)."""
    parent.add_typer(app, name="inspect")


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code=1)


def _redis(settings: Settings) -> aioredis.Redis:
    return redis_client(settings)


T = TypeVar("T")


def _query_redis(query: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run ``query`` on a client of the configured Redis; an unreachable Redis is a clear error."""

    async def run() -> T:
        redis = _redis(get_settings())
        try:
            return await query(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except (OSError, ConnectionError) as exc:
        raise _fail(f"cannot reach Redis: {exc}") from None


def _emit_json(payload: Any) -> None:
    typer.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


# --- user ---------------------------------------------------------------------------------------


def _user_features(blob: UserBlob | None) -> dict[str, Any] | None:
    """The user's feature state as readable data (codes decoded), ``None`` when absent."""
    if blob is None:
        return None
    device = {code: name for name, code in DEVICE_CODE.items()}.get(blob.dev)
    country = None
    if blob.cty > 0:  # models.features.spec.country_code: 1 + 26 * letter1 + letter2
        first, second = divmod(blob.cty - 1, 26)
        country = chr(65 + first) + chr(65 + second)
    never = -(2**63)
    return {
        "counts": dict(zip(USER_COUNT_NAMES, blob.n, strict=False)),
        "rating_sum": blob.rsum / 1000,
        "last_ts": None if blob.last == never else blob.last,
        "device": device,
        "country": country,
        "local_hour": None if blob.hr < 0 else blob.hr,
        "genre_epoch": None if blob.ge == never else blob.ge,
        "genre_sums": {genre: list(pair) for genre, pair in sorted(blob.g.items())},
        "recent": [{"item_id": item, "ts": ts} for item, ts in blob.rec],
    }


def _user_vector(value: bytes | None) -> dict[str, Any] | None:
    """The user's online vector (online_state.user_vectors) summarised as dimension, norm and version."""
    if value is None:
        return None
    vector, version = unpack_user_vector(value)
    if vector is None:
        return {"layout": "unreadable", "bytes": len(value)}
    return {"dim": int(vector.size), "norm": float(np.linalg.norm(vector)), "version": version}


async def user_state(redis: aioredis.Redis, user_id: str, keys: KeyLayout = DEFAULT_KEYS) -> dict[str, Any]:
    """Everything online about a user: features, session, vector, and the keys' TTLs and bytes."""
    record = await read_user_record(redis, keys, user_id)
    return {
        "user_id": user_id,
        "features": _user_features(record.features),
        "session": record.session,
        "vector": _user_vector(record.vector),
        "keys": {name: {"key": info.key, "ttl_s": info.ttl_s, "bytes": info.bytes}
                 for name, info in record.keys.items()},
    }


@app.command("user")
def user(
    user_id: str = typer.Argument(..., help="The user id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """A user's online state: ranking features, session, online vector, and their keys' TTLs and sizes."""
    state = _query_redis(lambda redis: user_state(redis, user_id))
    if as_json:
        _emit_json(state)
        return
    out = Console(highlight=False, soft_wrap=True)
    for section in ("features", "session", "vector", "keys"):
        out.rule(section)
        value = state[section]
        out.print(Pretty(value) if value else "[dim](none)[/]")


# --- trending -----------------------------------------------------------------------------------


@app.command("trending")
def trending(
    window: str = typer.Option("24h", "--window", help="Half-life window: 1h, 24h or 7d."),
    country: str | None = typer.Option(None, "--country", help="Trending in one country (ISO code)."),
    device: str | None = typer.Option(None, "--device", help="Trending on one device (tv, mobile, ...)."),
    hour: int | None = typer.Option(None, "--hour", min=0, max=23, help="Trending at one local hour."),
    k: int = typer.Option(20, "--k", min=1, help="How many titles."),
    at: int | None = typer.Option(None, "--at", help="Read as of this event time (epoch ms); default now. "
                                  "Use the replayed data's time when inspecting a historical replay."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Top trending titles of a window, globally or in one scope (one of --country/--device/--hour)."""
    if window not in WINDOWS:
        raise _fail(f"unknown window {window!r}; expected one of {', '.join(WINDOWS)}")
    scope = {"country": country, "device": device, "hour": hour}
    try:
        scope_name = scope_from_dict(scope)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    now_ms = int(time.time() * 1000) if at is None else at
    rows = _query_redis(lambda redis: read_trending(redis, window, scope, now_ms, k))
    if as_json:
        _emit_json({"window": window, "scope": scope_name, "now_ms": now_ms,
                    "items": [{"item_id": item, "score": score} for item, score in rows]})
        return
    table = Table(title=f"trending {window} {scope_name} at {now_ms}", title_justify="left")
    for column in ("#", "item", "score"):
        table.add_column(column, justify="right" if column != "item" else "left")
    for rank, (item, score) in enumerate(rows, 1):
        table.add_row(str(rank), item, f"{score:.4g}")
    Console(highlight=False).print(table)


# --- dead letters -------------------------------------------------------------------------------


async def _partitions(settings: Settings, topic: str) -> list[int]:
    """The partition ids of ``topic`` (``LookupError`` when it does not exist).

    Asked through the admin client: a consumer without a subscription keeps no metadata for the
    topic, so its ``partitions_for_topic`` answers ``None`` even for an existing topic.
    """
    admin = make_admin(settings, client_id="streamrec-inspect")
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [t for t in described if t.get("topic") == topic and not t.get("error_code")]
    if not found or not found[0].get("partitions"):
        raise LookupError(f"topic {topic!r} does not exist")
    return sorted(p["partition"] for p in found[0]["partitions"])


async def latest_dead_letters(settings: Settings, limit: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The newest ``limit`` records of the dead-letters topic (all partitions), newest first.

    No consumer group: assign every partition, seek to ``end - limit`` (or its start), read up to
    the end offsets taken at the start, keep the newest ``limit`` by timestamp.
    """
    topic = settings.topic_dead_letters
    ids = await _partitions(settings, topic)
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in ids]
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        for tp in tps:
            consumer.seek(tp, max(begin[tp], end[tp] - limit))
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, batch in batches.items():
                records.extend(r for r in batch if r.offset < end[tp])
                if batch and batch[-1].offset >= end[tp] - 1:
                    pending.discard(tp)
            for tp in list(pending):  # transaction markers / compaction leave gaps: trust position
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=True)
    out = []
    for r in records[:limit]:
        headers = {name: value.decode(errors="replace") for name, value in (r.headers or ())}
        out.append({
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "key": None if r.key is None else r.key.decode(errors="replace"),
            "error_field": headers.get(DLQ_HEADERS[0]),
            "error_reason": headers.get(DLQ_HEADERS[1]),
            "source_topic": headers.get(DLQ_HEADERS[2]),
            "source_partition": int(headers[DLQ_HEADERS[3]]) if DLQ_HEADERS[3] in headers else None,
            "source_offset": int(headers[DLQ_HEADERS[4]]) if DLQ_HEADERS[4] in headers else None,
            "value": None if r.value is None else r.value.decode(errors="replace"),
        })
    return out


@app.command("dead-letters")
def dead_letters(
    limit: int = typer.Option(20, "--limit", min=1, help="How many of the newest dead letters."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """The newest dead letters: why each record was refused, where it came from, its original bytes."""
    settings = get_settings()
    try:
        rows = asyncio.run(latest_dead_letters(settings, limit))
    except (LookupError, KafkaError, OSError) as exc:
        raise _fail(f"cannot read {settings.topic_dead_letters!r}: {exc}") from None
    if as_json:
        _emit_json({"topic": settings.topic_dead_letters, "records": rows})
        return
    table = Table(title=f"{settings.topic_dead_letters}: newest {len(rows)}", title_justify="left")
    for column in ("partition:offset", "source", "field", "reason", "value"):
        table.add_column(column, overflow="fold")
    for row in rows:
        source = f"{row['source_topic']}/{row['source_partition']}@{row['source_offset']}"
        table.add_row(f"{row['partition']}:{row['offset']}", source, row["error_field"] or "",
                      row["error_reason"] or "", row["value"] or "")
    Console(highlight=False).print(table)
