"""Trending and session effects against the real redis-server, applied the way the worker does
(all reads in one pipeline, all writes inside one MULTI), plus the `inspect` commands."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import typer
from typer.testing import CliRunner

from foundation.redis_io import redis_client_sync
from foundation.settings import Settings
from online_state.keys import DEFAULT_KEYS
from online_state.sessions import read_session
from online_state.trending import WINDOWS, generation, read_new_releases, read_trending
from online_state.user_vectors import pack_user_vector
from schemas.events import (
    AddToList,
    Click,
    Complete,
    Context,
    Impression,
    InteractionEvent,
    ItemRemove,
    ItemUpsert,
    Play,
    Progress,
    Rating,
    Skip,
    UserUpsert,
)
from streams.effects import Batch, BatchInfo, Effect, Reads
from streams.session import CONTINUE_TTL_S, SESSION_GAP_MS, SESSION_TTL_S, SessionEffect
from streams.trending import (
    TrendingEffect,
    catalog_writes,
    decayed_naive,
    event_weights,
    ttl_seconds,
)

T0 = 1_700_000_000_000
HOUR = 3_600_000
GENRES = {f"i{n}": (["Drama", "Comedy"] if n % 3 == 0 else ["Action"]) for n in range(40)}


def item_genres(item_id: str) -> list[str]:
    return GENRES.get(item_id, [])


async def apply_batch(client: aioredis.Redis, effects: Sequence[Effect[Any]], events: Sequence[InteractionEvent],
                      info: BatchInfo) -> None:
    """What the worker does with one batch: one read round trip, then one MULTI with every write."""
    batch = Batch(info, events)
    read = client.pipeline(transaction=False)
    reads = [effect.read(read, batch) for effect in effects]
    replies = await read.execute() if sum(r.queued for r in reads) else []
    write = client.pipeline(transaction=True)
    write.multi()
    start = 0
    for effect, r in zip(effects, reads, strict=True):
        r.replies = replies[start:start + r.queued]
        start += r.queued
        effect.write(write, batch, r)
    write.set(DEFAULT_KEYS.offset(info.topic, info.partition), info.last_offset)
    await write.execute()


def random_events(seed: int, n: int = 400) -> list[InteractionEvent]:
    rng = random.Random(seed)
    contexts = [Context(country="US", device="tv", local_hour=20), Context(country="FR", device="mobile"),
                Context(local_hour=8), None]
    kinds = [Play, Complete, Click, AddToList, Skip, Rating, Progress]
    out: list[InteractionEvent] = []
    for i in range(n):
        cls = rng.choice(kinds)
        extra: dict[str, Any] = {}
        if cls is Rating:
            extra["value"] = rng.choice([1.0, 3.5, 5.0])
        elif cls in (Complete, Progress):
            extra["watched_seconds"] = 60.0
        out.append(cls(event_id=f"e{i}", ts=T0 + rng.randrange(0, 48 * HOUR), schema_version=1,
                       user_id=f"u{rng.randrange(20)}", item_id=f"i{int(rng.paretovariate(1.2)) % 40}",
                       context=rng.choice(contexts), **extra))
    return out


async def trending_snapshot(client: aioredis.Redis, now: int) -> dict[tuple[str, str], list[tuple[str, float]]]:
    scopes: list[dict[str, Any] | None] = [None, {"country": "US"}, {"device": "mobile"}, {"hour": 8}]
    return {(window, json.dumps(scope)): await read_trending(client, window, scope, now, 10)
            for window in WINDOWS for scope in scopes}


def assert_same(a: dict[Any, list[tuple[str, float]]], b: dict[Any, list[tuple[str, float]]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert [item for item, _ in a[key]] == [item for item, _ in b[key]], key
        for (_, x), (_, y) in zip(a[key], b[key], strict=True):
            assert x == pytest.approx(y, rel=1e-12)


async def test_trending_same_whatever_the_batching_and_order(redis_client: aioredis.Redis) -> None:
    events = random_events(1)
    effect = TrendingEffect()
    now = T0 + 48 * HOUR
    # One batch in log order.
    await apply_batch(redis_client, [effect], events, BatchInfo("interactions", 0, 0, len(events) - 1))
    whole = await trending_snapshot(redis_client, now)
    assert whole[("24h", "null")], "trending is empty"

    # Shuffled, split over "two partitions" interleaved in small uneven batches.
    await redis_client.flushdb()
    shuffled = events[:]
    random.Random(2).shuffle(shuffled)
    cut, pos = 0, 0
    rng = random.Random(3)
    while cut < len(shuffled):
        size = rng.randrange(1, 40)
        await apply_batch(redis_client, [effect], shuffled[cut:cut + size], BatchInfo("interactions", pos % 2, 0, 0))
        cut, pos = cut + size, pos + 1
    assert_same(whole, await trending_snapshot(redis_client, now))

    # The scores are the naive decayed counts of the positive events.
    weights = event_weights(events)
    for window, half_life in WINDOWS.items():
        top = whole[(window, "null")]
        for item, score in top[:3]:
            pairs = [(w, e.ts) for e, w in zip(events, weights, strict=True) if e.item_id == item and w > 0]
            assert score == pytest.approx(decayed_naive(pairs, now, half_life), rel=1e-9)
    # Skips alone never enter trending.
    skipped_only = {e.item_id for e in events} - {e.item_id for e, w in zip(events, weights, strict=True) if w > 0}
    assert not skipped_only & {item for rows in whole.values() for item, _ in rows}


async def test_trending_keys_have_ttls_and_generations(redis_client: aioredis.Redis) -> None:
    span = 60 * HOUR  # one 1-hour-half-life generation
    base = (T0 // span + 1) * span  # a generation boundary
    ctx = Context(country="DE", device="web", local_hour=3)
    events = [Play(event_id="a", ts=base - 1, schema_version=1, user_id="u", item_id="old", context=ctx),
              Play(event_id="b", ts=base + HOUR, schema_version=1, user_id="u", item_id="new", context=ctx)]
    await apply_batch(redis_client, [TrendingEffect()], events, BatchInfo("interactions", 0, 0, 1))
    gen = generation(base, WINDOWS["1h"])
    for scope in ("all", "country:DE", "device:web", "hour:3"):
        for g in (gen - 1, gen):
            key = DEFAULT_KEYS.trending("1h", scope, g)
            ttl = await redis_client.ttl(key)
            assert ttl_seconds(WINDOWS["1h"]) - 5 <= ttl <= ttl_seconds(WINDOWS["1h"]), key
    assert await redis_client.ttl(DEFAULT_KEYS.trending("7d", "all", generation(base, WINDOWS["7d"]))) > 200 * 86_400
    # Read at base + 1 h: both generations are combined, each decayed from its own landmark.
    top = await read_trending(redis_client, "1h", {"device": "web"}, base + HOUR, 5)
    assert [item for item, _ in top] == ["new", "old"]
    assert top[0][1] == pytest.approx(1.0, rel=1e-12)
    assert top[1][1] == pytest.approx(0.5, rel=1e-6)  # 1 h + 1 ms old
    with pytest.raises(ValueError):
        await read_trending(redis_client, "1h", {"device": "web", "hour": 3}, base, 5)


async def test_new_releases(redis_client: aioredis.Redis) -> None:
    def upsert(item: str, release: int, **extra: Any) -> ItemUpsert:
        return ItemUpsert(event_id=f"c{item}", ts=T0, schema_version=1, item_id=item, title=item, genres=[],
                          release_ts=release, **extra)

    catalog = [upsert("a", T0 - 10), upsert("b", T0 - 5), upsert("c", T0 + 1_000), upsert("d", -1_000_000),
               upsert("a", T0 - 10), upsert("e", T0, available=False),
               ItemRemove(event_id="rb", ts=T0, schema_version=1, item_id="b")]
    for _ in range(2):  # idempotent: a replay of the catalog changes nothing
        pipe = redis_client.pipeline(transaction=True)
        assert catalog_writes(pipe, catalog) == len(catalog)
        await pipe.execute()
    assert await read_new_releases(redis_client, 10) == [("c", T0 + 1_000), ("a", T0 - 10), ("d", -1_000_000)]
    assert await read_new_releases(redis_client, 1, now_ms=T0) == [("a", T0 - 10)]


def session_events() -> list[InteractionEvent]:
    tv, phone = Context(device="tv", session_id="s1"), Context(device="mobile", session_id="s1")

    def ev(cls: Any, i: int, item: str, ts: int, ctx: Context | None, **extra: Any) -> InteractionEvent:
        return cls(event_id=f"s{i}", ts=ts, schema_version=1, user_id="alice", item_id=item, context=ctx, **extra)

    return [
        ev(Play, 0, "i0", T0, tv),
        ev(Progress, 1, "i0", T0 + 60_000, tv, watched_seconds=60.0),
        ev(Complete, 2, "i0", T0 + 120_000, tv, watched_seconds=600.0),
        ev(Skip, 3, "i1", T0 + 130_000, tv),
        ev(Click, 4, "i2", T0 + 140_000, phone),
        Impression(event_id="s5", ts=T0 + 150_000, schema_version=1, user_id="alice", item_ids=["i3", "i4"],
                   request_id="r", context=phone),
        UserUpsert(event_id="s6", ts=T0 + 155_000, schema_version=1, user_id="alice", country="US"),
        ev(Play, 7, "i0", T0 + 160_000, phone),  # moves i0 back to the front, no duplicate
        ev(Play, 8, "i5", T0 + 170_000, None),  # no session id: continues (within 30 min)
        ev(Play, 9, "i6", T0 + 100, None, ),  # late event: does not move `last` back
        Play(event_id="bob", ts=T0, schema_version=1, user_id="bob", item_id="i9"),
    ]


async def test_session_features(redis_client: aioredis.Redis) -> None:
    events = session_events()
    effect = SessionEffect(item_genres=item_genres)
    await apply_batch(redis_client, [effect], events, BatchInfo("interactions", 0, 0, 10))
    session = await read_session(redis_client, "alice")
    assert session["session_id"] == "s1"
    assert session["start_ts"] == T0 and session["last_ts"] == T0 + 170_000
    assert session["device"] == "mobile"
    assert session["counts"] == {"click": 1, "complete": 1, "impression": 1, "play": 4, "progress": 1, "skip": 1}
    assert [r["item_id"] for r in session["recent"]] == ["i6", "i5", "i0", "i2"]
    # Drama/Comedy (split in halves): i0 play 1 + complete 2 + play 1, i6 play 1; Action: i2 click 0.25, i5 play 1.
    assert session["genre_weights"] == pytest.approx({"Drama": 2.5, "Comedy": 2.5, "Action": 1.25})
    assert sum(session["genre_mix"].values()) == pytest.approx(1.0)
    # Started and not finished (i0's complete came before its second play; i1 was skipped), latest applied first;
    # a key holding such titles lives 30 days, a session without them the session's 4 h.
    assert [c["item_id"] for c in session["continue_watching"]] == ["i6", "i5", "i0"]
    assert CONTINUE_TTL_S - 5 <= session["ttl_s"] <= CONTINUE_TTL_S
    carol = Click(event_id="c1", ts=T0, schema_version=1, user_id="carol", item_id="i2")
    await apply_batch(redis_client, [effect], [carol], BatchInfo("interactions", 1, 0, 0))
    assert SESSION_TTL_S - 5 <= (await read_session(redis_client, "carol"))["ttl_s"] <= SESSION_TTL_S
    await redis_client.delete(DEFAULT_KEYS.session("carol"))
    assert await read_session(redis_client, "nobody") == {}
    one_batch = await redis_client.get(DEFAULT_KEYS.session("alice"))

    # Event by event (many batches) gives the same bytes.
    await redis_client.flushdb()
    for i, event in enumerate(events):
        await apply_batch(redis_client, [effect], [event], BatchInfo("interactions", 0, i, i))
    assert await redis_client.get(DEFAULT_KEYS.session("alice")) == one_batch

    # A new session id, or a 30-minute gap without one, starts over.
    later = Play(event_id="n1", ts=T0 + 170_000 + SESSION_GAP_MS + 1, schema_version=1, user_id="alice",
                 item_id="i7")
    await apply_batch(redis_client, [effect], [later], BatchInfo("interactions", 0, 20, 20))
    fresh = await read_session(redis_client, "alice")
    assert fresh["session_id"] is None and fresh["counts"] == {"play": 1} and fresh["start_ts"] == later.ts
    switched = Play(event_id="n2", ts=later.ts + 1, schema_version=1, user_id="alice", item_id="i8",
                    context=Context(session_id="s2"))
    await apply_batch(redis_client, [effect], [switched], BatchInfo("interactions", 0, 21, 21))
    assert (await read_session(redis_client, "alice"))["session_id"] == "s2"

    # Without item_genres there is no genre mix.
    await redis_client.flushdb()
    await apply_batch(redis_client, [SessionEffect()], events, BatchInfo("interactions", 0, 0, 10))
    assert (await read_session(redis_client, "alice"))["genre_mix"] == {}


async def test_both_effects_in_one_transaction(redis_client: aioredis.Redis) -> None:
    events = random_events(4, 200)
    effects: list[Effect[Any]] = [TrendingEffect(), SessionEffect(item_genres=item_genres)]
    await apply_batch(redis_client, effects, events, BatchInfo("interactions", 3, 0, 199))
    assert await redis_client.get(DEFAULT_KEYS.offset("interactions", 3)) == b"199"
    assert await read_trending(redis_client, "7d", None, T0 + 48 * HOUR, 5)
    users_with_activity = {e.user_id for e in events}
    for user in users_with_activity:
        assert (await read_session(redis_client, user))["counts"]


async def test_memory_usage_per_member(redis_client: aioredis.Redis) -> None:
    """Bytes per trend member and per session: the sizes the uncapped trend keys and packed sessions rely on."""
    key = DEFAULT_KEYS.trending("24h", "all", 0)
    small: dict[str, float] = {f"i{n}": 1.5 * 2.0 ** (n % 60) for n in range(100)}
    await redis_client.zadd(key, small)
    small_bytes = await redis_client.memory_usage(key)
    await redis_client.zadd(key, {f"i{n}": float(n) for n in range(100, 1_000)})
    large_bytes = await redis_client.memory_usage(key)
    assert small_bytes / 100 < 30, small_bytes  # listpack
    assert 40 < large_bytes / 1_000 < 150, large_bytes  # skiplist + dict
    effect = SessionEffect(item_genres=item_genres)
    full = [Play(event_id=f"m{i}", ts=T0 + i, schema_version=1, user_id="m", item_id=f"i{i}",
                 context=Context(device="tv", session_id="x" * 20)) for i in range(40)]
    await apply_batch(redis_client, [effect], full, BatchInfo("interactions", 0, 0, 39))
    session_bytes = await redis_client.memory_usage(DEFAULT_KEYS.session("m"))
    assert session_bytes < 1_000, session_bytes
    print(f"trend: {small_bytes / 100:.1f} B/member (listpack), {large_bytes / 1_000:.1f} B/member (skiplist); "
          f"full session {session_bytes} B")


# --- inspect (through typer's CliRunner: `inspect` is not registered in streamrec.cli yet) ---------


def invoke(args: list[str], env: dict[str, str]) -> Any:
    from foundation.settings import get_settings
    from streamrec.commands import inspect as inspect_cmd

    root = typer.Typer()

    @root.callback()
    def _root() -> None: ...

    inspect_cmd.register(root)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(root, args, env=env, catch_exceptions=False)
    finally:
        get_settings.cache_clear()


def test_inspect_trending_and_user(stack: Settings, stack_env: dict[str, str]) -> None:
    url = stack.redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own (others flush db 0)
    env = {**stack_env, "STREAMREC_REDIS_URL": url}
    client = redis_client_sync(stack, url)
    client.flushdb()
    try:
        events = session_events()
        pipe = client.pipeline(transaction=True)
        batch = Batch(BatchInfo("interactions", 0, 0, 0), events)
        TrendingEffect().write(pipe, batch, Reads())
        session = SessionEffect(item_genres=item_genres)
        session.write(pipe, batch, Reads(replies=[None, None], state=session.users(events)))
        pipe.execute()
        result = invoke(["inspect", "trending", "--window", "1h", "--k", "3", "--at", str(T0 + 170_000), "--json"],
                        env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["scope"] == "all" and report["items"][0]["item_id"] == "i0"
        result = invoke(["inspect", "trending", "--device", "mobile", "--at", str(T0 + 170_000), "--json"], env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["scope"] == "device:mobile"
        result = invoke(["inspect", "trending", "--device", "tv", "--country", "US"], env)
        assert result.exit_code == 1

        result = invoke(["inspect", "user", "alice", "--json"], env)
        assert result.exit_code == 0, result.output
        state = json.loads(result.stdout)
        assert state["features"] is None and state["vector"] is None
        assert state["session"]["session_id"] == "s1"
        assert state["keys"]["session"]["bytes"] > 0
        vector = pack_user_vector(np.ones(4, np.float32), version=7, space=1)  # norm 2
        client.set(DEFAULT_KEYS.user_vector("alice"), vector)
        result = invoke(["inspect", "user", "alice", "--json"], env)
        assert json.loads(result.stdout)["vector"] == {"dim": 4, "norm": pytest.approx(2.0), "version": 7}
        assert invoke(["inspect", "user", "alice"], env).exit_code == 0
        assert invoke(["inspect", "trending", "--at", str(T0)], env).exit_code == 0
    finally:
        client.flushdb()
        client.close()


def test_inspect_dead_letters(stack: Settings, stack_env: dict[str, str]) -> None:
    from foundation.kafka_io import make_producer
    from foundation.topics import TopicSetupError, ensure_topics
    from schemas.topics import dead_letter_headers

    topic = f"dead-inspect-{random.Random().randrange(10**9)}"
    settings = stack.model_copy(update={"topic_dead_letters": topic})

    async def produce() -> None:
        # A broker that has just started may briefly report itself fenced: retry the creation.
        for attempt in range(20):
            try:
                await ensure_topics(settings)
                break
            except TopicSetupError:
                if attempt == 19:
                    raise
                await asyncio.sleep(1.0)
        producer = make_producer(settings)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(
                    topic, value=b'{"type":"play","bad":' + str(i).encode(), key=f"u{i}".encode(),
                    headers=dead_letter_headers("ts", f"reason {i}", "interactions", i % 2, 100 + i))
        finally:
            await producer.stop()

    asyncio.run(produce())
    env = {**stack_env, "STREAMREC_TOPIC_DEAD_LETTERS": topic}
    result = invoke(["inspect", "dead-letters", "--limit", "3", "--json"], env)
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["records"]
    assert len(records) == 3
    assert {r["source_offset"] for r in records} == {102, 103, 104}
    newest = max(records, key=lambda r: r["source_offset"])
    assert newest["error_field"] == "ts" and newest["error_reason"] == "reason 4"
    assert newest["source_topic"] == "interactions" and newest["source_partition"] == 0
    assert newest["value"] == '{"type":"play","bad":4' and newest["key"] == "u4"
    assert invoke(["inspect", "dead-letters"], env).exit_code == 0
    missing = invoke(["inspect", "dead-letters"], {**stack_env, "STREAMREC_TOPIC_DEAD_LETTERS": "no-such-topic-x"})
    assert missing.exit_code == 1
