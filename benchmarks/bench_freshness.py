"""End-to-end freshness: produce an interaction -> its effect visible through the HTTP API, beside the floor.

    streamrec stack up
    python benchmarks/bench_freshness.py [--quick] [--probes 50] [--rate 300] [--log DIR] [--artifacts DIR]
                                         [--users 500] [--items 1000] [--events 30000] [--k 20]
                                         [--poll-ms 10] [--timeout-s 10] [--redis-db 15]

Set-up (not timed): a small generated world (or ``--log``), a small bundle trained on it (or
``--artifacts``), fresh topics, the world replayed into them, a stream worker (``python -m
streamrec.commands.worker``) caught up on it and ``streamrec serve`` on a free port, ready (``/readyz`` 200).
Both are subprocesses, as deployed, and use their own Redis database (``--redis-db``, emptied of
``sr:*`` before and after) so the benchmark neither reads nor spoils the state of the stack's users.

Measured, with a steady background load of ``--rate`` events/s (the world's events of every other
user, cycled) going through the same worker: each probe picks a user (reserved: the background never
touches them), asks ``GET /v1/recommendations/{user}?k=K`` twice and takes the best title present in
both answers, produces a ``complete`` of that title (key = user id) and polls the endpoint every
``--poll-ms`` until the title is gone (the server excludes what the user engaged with recently, read
from the session and feature state in Redis). A probe not visible after ``--timeout-s`` is counted
as a timeout and left out of the percentiles.

- ``e2e``: ``send`` -> the first answer without the title.
- floor, measured in the same probes: ``redis``: ``send`` -> the worker's offset commit covering the
  record lands in Redis (state and offset are one ``EXEC``, as in ``bench_worker.py``'s freshness),
  plus ``http``: one round trip of the same endpoint (median of every poll). ``ratio_p50`` = e2e p50 /
  (redis p50 + http p50), ``ratio_p99`` = e2e p99 / (redis p99 + http p50).

Prints a table and one JSON line; ``main(argv)`` returns the same dict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
from rich.console import Console
from rich.table import Table

from foundation.child_env import settings_env
from foundation.kafka_io import make_producer
from foundation.logs import configure_logging
from foundation.redis_io import redis_client
from foundation.settings import get_settings
from foundation.topics import delete_topics, ensure_topics_retrying
from models.config import TwoStageConfig
from models.train import train_bundle
from online_state.keys import DEFAULT_KEYS
from schemas.events import Complete, Context
from streams.rebuild import delete_state
from tools.catch_up import end_offsets, wait_applied
from tools.datasets.world import generate_world
from tools.replay import replay_log
from tools.stack.probes import free_port
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 8
KEYS = DEFAULT_KEYS  # the server reads the worker's default key layout


@dataclass
class Probe:
    user_id: str
    item_id: str
    e2e_s: float | None = None  # None: timed out
    redis_s: float | None = None
    rtts_s: list[float] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 probes, 200 events/s, a smaller world")
    parser.add_argument("--probes", type=int, help="probes (default 50, --quick 15)")
    parser.add_argument("--rate", type=float, help="background events/s (default 300, --quick 200)")
    parser.add_argument("--log", type=Path, help="an existing world folder (default: generate one)")
    parser.add_argument("--artifacts", type=Path, help="a bundle root (default: train a small one on the world)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--events", type=int, help="events of the generated world (default 30000, --quick 15000)")
    parser.add_argument("--k", type=int, default=20, help="recommendations asked for")
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database of the benchmark's state")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.probes = args.probes or (15 if args.quick else 50)
    args.rate = args.rate or (200.0 if args.quick else 300.0)
    args.events = args.events or (15_000 if args.quick else 30_000)
    return args


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]


def summarize(probes: Sequence[Probe]) -> dict[str, Any]:
    """The figures of a run: e2e and floor percentiles in ms, timeouts, ratios (e2e / floor)."""
    e2e = [p.e2e_s * 1000 for p in probes if p.e2e_s is not None]
    redis = [p.redis_s * 1000 for p in probes if p.redis_s is not None]
    rtts = [r * 1000 for p in probes for r in p.rtts_s]
    # A title gone before the worker committed the probe's record left for another reason: a sanity count, 0 expected.
    early = sum(1 for p in probes if p.e2e_s is not None and p.redis_s is not None and p.e2e_s < p.redis_s)
    out: dict[str, Any] = {"probes": len(probes), "visible": len(e2e), "timeouts": len(probes) - len(e2e),
                           "visible_before_commit": early}
    if not e2e or not redis or not rtts:
        return out
    http_p50, http_p99 = statistics.median(rtts), percentile(rtts, 99)
    floor_p50 = statistics.median(redis) + http_p50
    # One median round trip on top of the worker's commit: the p99 of a sum of two p99s would overstate the floor.
    floor_p99 = percentile(redis, 99) + http_p50
    out.update(
        e2e_p50_ms=round(statistics.median(e2e), 1), e2e_p99_ms=round(percentile(e2e, 99), 1),
        e2e_max_ms=round(max(e2e), 1),
        redis_p50_ms=round(statistics.median(redis), 1), redis_p99_ms=round(percentile(redis, 99), 1),
        http_rtt_p50_ms=round(http_p50, 2), http_rtt_p99_ms=round(http_p99, 2),
        floor_p50_ms=round(floor_p50, 1), floor_p99_ms=round(floor_p99, 1),
        ratio_p50=round(statistics.median(e2e) / floor_p50, 2), ratio_p99=round(percentile(e2e, 99) / floor_p99, 2),
        samples_ms=[round(v, 1) for v in e2e], floor_samples_ms=[round(v, 1) for v in redis],
    )
    return out


def _train_small_bundle(world: Path, artifacts: Path) -> Path:
    """A quick bundle (the server needs one; freshness does not depend on its quality)."""
    train_bundle(world, artifacts, TwoStageConfig(dim=32, rank_users=200, ranker_epochs=1))
    return artifacts


def _split_users(events_path: Path, n_probe: int) -> tuple[list[str], list[tuple[bytes, bytes]]]:
    """(probe users: the most active ones, so they have a history the bundle knows; the background load:
    (key, line) of every other user's interaction)."""
    lines = events_path.read_bytes().splitlines()
    counts: dict[str, int] = {}
    parsed: list[tuple[str, bytes]] = []
    for line in lines:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        user = doc.get("user_id") if isinstance(doc, dict) else None
        if isinstance(user, str):
            counts[user] = counts.get(user, 0) + 1
            parsed.append((user, line))
    probe_users = sorted(counts, key=lambda u: (-counts[u], u))[:n_probe]
    reserved = set(probe_users)
    background = [(u.encode(), line) for u, line in parsed if u not in reserved]
    return probe_users, background


async def _wait_ready(http: Any, base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the server was not ready in time")
        await asyncio.sleep(0.1)


async def _recommended(http: Any, url: str) -> tuple[list[str], float]:
    """The item ids of one answer and the round trip in seconds."""
    started = time.perf_counter()
    async with http.get(url) as resp:
        body = await resp.json(content_type=None)
    rtt = time.perf_counter() - started
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {body}")
    return [str(item["item_id"]) for item in body.get("items", [])], rtt


async def _background(producer: Any, topic: str, records: list[tuple[bytes, bytes]], rate: float,
                      stop: asyncio.Event, sent: list[int]) -> None:
    """Send ``rate`` records/s (cycling through ``records``) until ``stop``; ``sent[0]`` counts them."""
    start = time.perf_counter()
    k = 0
    while not stop.is_set():
        due = int((time.perf_counter() - start) * rate)
        while k < due:
            key, value = records[k % len(records)]
            await producer.send(topic, value, key=key)
            k += 1
        sent[0] = k
        await asyncio.sleep(0.005)


def _probe_event(user_id: str, item_id: str) -> bytes:
    event = Complete(event_id=f"fresh-{uuid.uuid4().hex}", ts=int(time.time() * 1000), schema_version=1,
                     user_id=user_id, item_id=item_id, watched_seconds=3600.0, duration_seconds=3600.0,
                     context=Context(device="tv", session_id=f"fresh-{uuid.uuid4().hex[:12]}"))
    return msgspec.json.encode(event)


async def _run_probe(http: Any, base: str, producer: Any, client: Any, topic: str, user_id: str, k: int,
                     poll_s: float, timeout_s: float) -> Probe | None:
    """One probe (``None`` when the user has no title stable across two answers to probe with)."""
    url = f"{base}/v1/recommendations/{user_id}?k={k}"
    first, rtt1 = await _recommended(http, url)
    second, rtt2 = await _recommended(http, url)
    # A title in both answers: one that leaves for another reason between two polls would fake a result.
    stable = [item for item in first if item in set(second)]
    if not stable:
        return None
    probe = Probe(user_id, stable[0], rtts_s=[rtt1, rtt2])
    sent_at = time.perf_counter()
    future = await producer.send(topic, _probe_event(user_id, probe.item_id), key=user_id.encode())
    deadline = sent_at + timeout_s

    async def redis_visible() -> None:
        meta = await future
        key = KEYS.offset(topic, meta.partition)
        while time.perf_counter() < deadline:
            stored = await client.get(key)
            if stored is not None and int(stored) >= meta.offset:
                probe.redis_s = time.perf_counter() - sent_at
                return
            await asyncio.sleep(0.002)

    async def http_visible() -> None:
        while time.perf_counter() < deadline:
            items, rtt = await _recommended(http, url)
            probe.rtts_s.append(rtt)
            if probe.item_id not in items:
                probe.e2e_s = time.perf_counter() - sent_at
                return
            await asyncio.sleep(poll_s)

    await asyncio.gather(redis_visible(), http_visible())
    return probe


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("WARNING")
    settings = get_settings()
    tmp = tempfile.TemporaryDirectory(prefix="bench-freshness-")
    work = Path(tmp.name)
    world = args.log
    if world is None:
        world = work / "world"
        generate_world(world, users=args.users, items=args.items, events=args.events, seed=3)
    artifacts = args.artifacts or _train_small_bundle(world, work / "artifacts")
    probe_users, background = _split_users(world / "events.jsonl", args.probes)
    if not background:
        raise SystemExit("the world has no events left for the background load")

    tag = uuid.uuid4().hex[:8]
    scoped = settings.with_topic_prefix(f"fresh-{tag}").with_redis_db(args.redis_db).model_copy(
        update={"interactions_partitions": PARTITIONS})
    topic = scoped.topic_interactions
    env = settings_env(scoped.model_copy(update={"log_level": "WARNING"}))
    client = redis_client(scoped)
    await delete_state(client, KEYS)
    await ensure_topics_retrying(scoped)
    await replay_log(world, scoped)
    ends = await end_offsets(scoped, [topic])

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = _spawn([sys.executable, "-m", "streamrec.commands.worker", "--metrics-port", "0",
                     "--artifacts", str(artifacts)], env, work / "worker.log")
    server: subprocess.Popen[bytes] | None = None
    producer = make_producer(scoped, linger_ms=0)
    load_producer = make_producer(scoped, linger_ms=5)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    stop = asyncio.Event()
    sent = [0]
    probes: list[Probe] = []
    result: dict[str, Any] = {"benchmark": "freshness", "signal": "watched title excluded", "rate": args.rate,
                              "k": args.k, "poll_ms": args.poll_ms, "timeout_s": args.timeout_s,
                              "world_events": sum(ends.values())}
    try:
        await wait_applied(client, ends, args.startup_timeout_s, worker, keys=KEYS)
        server = _spawn([sys.executable, "-m", "streamrec.cli", "serve", "--artifacts", str(artifacts),
                         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env, work / "server.log")
        await _wait_ready(http, base, server, args.startup_timeout_s)
        await producer.start()
        await load_producer.start()
        loader = asyncio.create_task(_background(load_producer, topic, background, args.rate, stop, sent))
        await asyncio.sleep(2.0)  # let the load reach its steady state before the first probe
        load_started = time.perf_counter()
        for user in probe_users:
            probe = await _run_probe(http, base, producer, client, topic, user, args.k, args.poll_ms / 1000,
                                     args.timeout_s)
            if probe is not None:
                probes.append(probe)
            if loader.done():
                loader.result()  # raise what stopped the load
        load_seconds = time.perf_counter() - load_started
        stop.set()
        await loader
        result.update(background_sent=sent[0], background_rate_measured=round(sent[0] / (load_seconds + 2.0), 1),
                      skipped_users=len(probe_users) - len(probes))
    except BaseException as exc:
        for name, path in (("worker", work / "worker.log"), ("server", work / "server.log")):
            if path.exists():
                print(f"--- {name} log tail ---\n{_tail(path)}", file=sys.stderr)
        if isinstance(exc, Exception):
            raise RuntimeError(f"freshness benchmark failed: {exc}") from exc
        raise
    finally:
        stop.set()
        await http.close()
        for p in (producer, load_producer):
            with contextlib.suppress(Exception):
                await p.stop()
        if server is not None:
            terminate(server, timeout_s=30)
        terminate(worker, timeout_s=30)
        await delete_state(client, KEYS)
        await client.aclose()
        with contextlib.suppress(Exception):  # cleaning up must not hide the error that got us here
            await delete_topics(scoped)
        tmp.cleanup()
    result.update(summarize(probes))
    return result


def print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"freshness: produce -> visible through GET /v1/recommendations, {os.cpu_count()} cores")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if not key.endswith("samples_ms"):
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result = asyncio.run(run(parse_args(argv)))
    print_table(result)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
