"""Sustained throughput of the whole stream worker, beside the raw aiokafka consume rate of the same
topic measured in the same run, and freshness (produce -> state visible in Redis) at half that rate.

    streamrec stack up
    python benchmarks/bench_worker.py [--events 200000] [--users 3000] [--items 3000] [--log DIR]
                                      [--concurrency 4] [--max-records 2000] [--no-freshness] [--faust-floor]
                                      [--artifacts DIR | --no-bundle] [--profile FILE]

- the worker runs with a bundle (``--artifacts``, default: a small one trained on the generated
  world first, not timed), so every effect is on: features, trending, sessions, online user
  vectors (needs the bundle's CF item vectors) and the item-vector catalog effect.

- ``raw``: one aiokafka consumer, ``getmany(max_records=2000)`` over the 8 partitions from the
  beginning, nothing done with the records (the floor of any consumer in Python).
- ``worker``: ``python -m streamrec.commands.worker`` (a separate process, as deployed) on the pre-filled
  topics: decode, every effect of the list, dead letters, offsets, one MULTI per partition
  batch. Timed from the first applied batch to the last record's offset stored in Redis.
- ``worker_cpu_us_per_event``: the worker process' CPU time (user + system) over the same span, per
  event: less sensitive than the rate to other load on a shared machine.
- ``freshness``: with the worker caught up, records are produced at half the measured worker rate;
  for every 20th record, the time from ``send`` until its offset is stored in Redis (the state and
  the offset commit in one EXEC, so that is when its effects become visible); p50 / p99.
- ``item_state_staleness``: a server's copy of the item state (:mod:`serving.item_state_tail`) runs in this
  process during the full-rate run; per applied item-state record, the time from the worker's ``EXEC`` to the
  row being in the table's arrays; p50 / p99 over every record.
- ``--faust-floor``: a Faust agent on the same topic that only counts, through
  ``stream.take_events(2000, within=0.2)`` (why :mod:`streams.app` does not consume through Faust).

The state goes under its own Redis prefix and topics are fresh per run; both are deleted at the end.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from rich.console import Console
from rich.table import Table

from foundation.child_env import settings_env
from foundation.kafka_io import make_consumer, make_producer
from foundation.logs import configure_logging
from foundation.redis_io import mget_any, redis_client
from foundation.settings import Settings, get_settings
from foundation.topics import delete_topics, ensure_topics_retrying
from models.config import TwoStageConfig
from models.train import train_bundle
from online_state.item_state import ItemStateTable
from online_state.keys import KeyLayout
from serving.item_state_tail import ItemStateTail
from streams.rebuild import delete_state
from tools.catch_up import end_offsets
from tools.datasets.world import generate_world
from tools.replay import replay_log
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 8


def _faust_floor_app(topic_name: str, n: int) -> None:
    """``python bench_worker.py _faust_floor TOPIC N worker -l warn``: counts N records of TOPIC."""
    # Lazy: only --faust-floor runs Faust, in a child process of its own; the rest never needs it.
    import faust

    bootstrap = get_settings().kafka_bootstrap.split(",")[0]
    app = faust.App(f"bench-faust-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", value_serializer="raw",
                    topic_disable_leader=True, web_enabled=False, consumer_auto_offset_reset="earliest",
                    broker_max_poll_records=2000, stream_buffer_maxsize=20000)
    topic = app.topic(topic_name, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw")
    state: dict[str, float] = {"n": 0, "t0": 0.0}

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(2000, within=0.2):
            if not state["t0"]:
                state["t0"] = time.perf_counter()
            state["n"] += len(events)
            if state["n"] >= n:
                seconds = time.perf_counter() - state["t0"]
                print(json.dumps({"faust_events_per_s": state["n"] / seconds}), flush=True)
                os._exit(0)

    sys.argv = [sys.argv[0], *sys.argv[4:]]  # what follows `_faust_floor TOPIC N` is Faust's command line
    app.main()


def _spawn_worker(env: dict[str, str], prefix: str, concurrency: int, max_records: int,
                  artifacts: Path | None, profile: Path | None) -> subprocess.Popen[bytes]:
    # --profile: the worker under cProfile (written when it stops on SIGTERM).
    runner = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    return subprocess.Popen(
        [*runner, "-m", "streamrec.commands.worker", "--metrics-port", "0", "--prefix", prefix,
         "--concurrency", str(concurrency), "--max-records", str(max_records),
         *(["--artifacts", str(artifacts)] if artifacts else [])],
        cwd=REPO, env=env,
    )


def _run_faust_floor(settings: Settings, topic: str, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "_faust_floor", topic, str(n), "worker", "-l", "warn"], cwd=REPO,
        capture_output=True, text=True, timeout=600, check=False, env=settings_env(settings),
    )
    # Faust redirects print() into its logging (stderr).
    found = re.search(r'\{"faust_events_per_s": [0-9.e+]+\}', done.stdout + done.stderr)
    return json.loads(found.group(0)) if found else {}


def _train_small_bundle(world: Path, artifacts: Path) -> Path:
    """A quick bundle of the world (the worker needs its CF item vectors for the online user vectors and
    its content model for the item-vector hook); the worker's cost does not depend on its quality."""
    train_bundle(world, artifacts, TwoStageConfig(dim=64, rank_users=200, ranker_epochs=1))
    return artifacts


async def _raw_rate(settings, topic: str, n: int) -> float:  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started = 0, 0.0
        while seen < n:
            fetched = await consumer.getmany(timeout_ms=500, max_records=2000)
            if fetched and not started:
                started = time.perf_counter()
            seen += sum(len(records) for records in fetched.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): a figure the other load on a shared
    machine inflates far less than wall-clock throughput."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _applied(client, prefix: str, topic: str) -> dict[int, int]:  # type: ignore[no-untyped-def]
    keys = KeyLayout(prefix)
    values = await mget_any(client, [keys.offset(topic, p) for p in range(PARTITIONS)])
    return {p: int(v) for p, v in enumerate(values) if v is not None}


async def _freshness(settings, client, prefix: str, topic: str, values: list[tuple[bytes, bytes]],  # type: ignore[no-untyped-def]
                     rate: float, seconds: float) -> tuple[float, float, int]:
    producer = make_producer(settings, linger_ms=1)
    await producer.start()
    pending: list[tuple[float, asyncio.Future]] = []  # type: ignore[type-arg]
    latencies: list[float] = []
    waiting: list[tuple[float, int, int]] = []  # (sent at, partition, offset)

    async def poll() -> None:
        while pending or waiting or not done.is_set():
            for sent, future in [p for p in pending if p[1].done()]:
                meta = future.result()
                waiting.append((sent, meta.partition, meta.offset))
            pending[:] = [p for p in pending if not p[1].done()]
            if waiting:
                stored = await _applied(client, prefix, topic)
                now = time.perf_counter()
                still = []
                for sent, partition, offset in waiting:
                    if stored.get(partition, -1) >= offset:
                        latencies.append(now - sent)
                    else:
                        still.append((sent, partition, offset))
                waiting[:] = still
            await asyncio.sleep(0.002)

    done = asyncio.Event()
    poller = asyncio.create_task(poll())
    try:
        start = time.perf_counter()
        k = 0
        while time.perf_counter() - start < seconds:
            due = int((time.perf_counter() - start) * rate)
            while k < due:
                key, value = values[k % len(values)]
                future = await producer.send(topic, value, key=key)
                if k % 20 == 0:
                    pending.append((time.perf_counter(), future))
                k += 1
            await asyncio.sleep(0.005)
        await producer.flush()
        done.set()
        await asyncio.wait_for(poller, 60)
    finally:
        await producer.stop()
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], k


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--log", type=Path, help="an existing world folder (default: generate one)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-records", type=int, default=2000)
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--freshness-seconds", type=float, default=10.0)
    parser.add_argument("--freshness-share", type=float, default=0.5, help="produce at this share of the worker rate")
    parser.add_argument("--faust-floor", action="store_true")
    parser.add_argument("--artifacts", type=Path, help="a bundle root for the worker (default: train a small one on "
                                                       "the world, so the user-vector and item-vector effects run)")
    parser.add_argument("--no-bundle", action="store_true", help="run the worker without a bundle (fewer effects)")
    parser.add_argument("--profile", type=Path, help="write the worker's cProfile stats here")
    args = parser.parse_args()

    configure_logging("WARNING")
    settings = get_settings()
    tmp = tempfile.TemporaryDirectory(prefix="bench-worker-")
    world = args.log
    if world is None:
        world = Path(tmp.name) / "world"
        generate_world(world, users=args.users, items=args.items, events=args.events, seed=1)
    artifacts = args.artifacts
    if artifacts is None and not args.no_bundle:
        artifacts = _train_small_bundle(world, Path(tmp.name) / "artifacts")
    tag = uuid.uuid4().hex[:8]
    scoped = settings.with_topic_prefix(f"bench-{tag}").model_copy(update={"interactions_partitions": PARTITIONS})
    prefix = f"bench{tag}"
    topic = scoped.topic_interactions
    await ensure_topics_retrying(scoped)
    await replay_log(world, scoped)
    ends = await end_offsets(scoped, [topic])
    total = sum(ends.values())
    raw = await _raw_rate(scoped, topic, total)
    result: dict[str, object] = {"events": total, "raw_events_per_s": round(raw)}

    env = settings_env(scoped.model_copy(update={"log_level": "WARNING"}))
    client = redis_client(settings)
    # A server's copy of the item state, fed by the worker's item-state records while it runs at full rate.
    table = ItemStateTable()
    tail = ItemStateTail(scoped, table, client, KeyLayout(prefix), resync_s=3600)
    tail.staleness_s = []
    tail.start()
    await asyncio.wait_for(tail.loaded.wait(), 60)
    proc = _spawn_worker(env, prefix, args.concurrency, args.max_records, artifacts, args.profile)
    try:
        first_at, first_count, first_cpu = 0.0, 0, 0.0
        while True:
            applied = sum(v + 1 for v in (await _applied(client, prefix, topic)).values())
            if applied and not first_at:
                first_at, first_count, first_cpu = time.perf_counter(), applied, _cpu_seconds(proc.pid)
            if applied >= total:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited with {proc.returncode}")
            await asyncio.sleep(0.01)
        worker_rate = (total - first_count) / (time.perf_counter() - first_at)
        cpu = _cpu_seconds(proc.pid) - first_cpu
        result["worker_events_per_s"] = round(worker_rate)
        result["worker_cpu_us_per_event"] = round(cpu / max(1, total - first_count) * 1e6, 1)
        result["worker_vs_raw"] = round(worker_rate / raw, 3)
        await asyncio.sleep(1.0)  # the last batches' records
        stale = sorted(tail.staleness_s)
        if stale:
            result.update(item_state_records=len(stale), item_state_titles=len(table),
                          item_state_staleness_p50_ms=round(1000 * stale[len(stale) // 2], 1),
                          item_state_staleness_p99_ms=round(1000 * stale[min(len(stale) - 1, int(len(stale) * 0.99))],
                                                            1))
        tail.staleness_s = None
        if not args.no_freshness:
            lines = (world / "events.jsonl").read_bytes().splitlines()[:50_000]
            values = [(orjson.loads(line)["user_id"].encode(), line) for line in lines]
            rate = worker_rate * args.freshness_share
            p50, p99, sent = await _freshness(scoped, client, prefix, topic, values, rate, args.freshness_seconds)
            result.update(freshness_rate=round(rate), freshness_sent=sent,
                          freshness_p50_ms=round(p50 * 1000, 1), freshness_p99_ms=round(p99 * 1000, 1))
    finally:
        await tail.close()
        terminate(proc, timeout_s=30)
        await delete_state(client, KeyLayout(prefix))
        await client.aclose()

    if args.faust_floor:
        floor = _run_faust_floor(settings, topic, total)
        result.update({k: round(v) for k, v in floor.items()})

    await delete_topics(scoped)
    tmp.cleanup()

    table = Table(title=f"stream worker, {total:,} events, {os.cpu_count()} cores")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console(stderr=True).print(table)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "_faust_floor":
        _faust_floor_app(sys.argv[2], int(sys.argv[3]))
    else:
        asyncio.run(main())
