"""Redis memory per active user and per title, measured: a real worker applies a generated world, then every
key family of the online state is weighed with ``MEMORY USAGE`` (the capacity plan's inputs, docs/capacity.md).

    streamrec stack up
    python benchmarks/bench_memory.py [--users 5000] [--items 2000] [--events 100000] [--log DIR]
                                      [--artifacts DIR | --no-bundle] [--out memory.json]

- the world is replayed into fresh topics and ``python -m streamrec.commands.worker`` (every effect; with a bundle
  trained on the first half of the log, so the online user vectors run and titles first engaged later learn
  online, as in production between two trainings) applies it under a Redis prefix of its own; the worker is
  stopped (its connections' buffers gone) before anything is weighed.
- per key family (user state ``u``, user vector ``uv``, session ``s``, event window ``ew``, item state ``i``,
  item learning ``il``, trending ``trend``, new releases, offsets): keys, ``MEMORY USAGE key SAMPLES 0``
  (exact for hashes and sorted sets too) summed, and the median per key beside its **floor**, the payload bytes
  of the same key in the same run (string length; hash fields + values; sorted-set members + 8 bytes per
  score): what Redis adds around the data.
- ``INFO memory`` ``used_memory`` before and after: the delta covers what ``MEMORY USAGE`` leaves out (the
  expiry table of the users' TTLs, the main dictionary's buckets), so ``all-in`` figures scale the per-key sums
  by ``delta / sum``.
- per active user (a user with a state key): the user families' bytes / users; per title (an item with a
  state key): the item families' bytes / titles, with and without the trending sets (shared, one member per
  title per window and scope).
- Kafka: the average event's JSON bytes in the log, and the interactions topic's bytes on disk per record
  (``*.log`` segments under the stack's state folder, one replica; no compression: the producers send none).
- ``redis_cpu_us_per_event``: the redis-server's CPU (``INFO cpu``) over the apply, per event: what a shard spends
  on the writes (with this run's offset polling, every 50 ms; a small share).

Redis Cluster: not handled here (``INFO`` and ``SCAN`` per node); the key sizes are the same on a cluster.
Prints a table and one JSON line (``--out`` writes it too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from foundation.child_env import settings_env
from foundation.logs import configure_logging
from foundation.redis_io import redis_client
from foundation.settings import Settings, get_settings
from foundation.topics import delete_topics, ensure_topics_retrying
from models.config import TwoStageConfig
from models.train import train_bundle
from online_state.keys import KeyLayout
from streams.rebuild import delete_state
from tools.catch_up import end_offsets
from tools.datasets.world import generate_world
from tools.replay import replay_log
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 8


@dataclass(frozen=True)
class Family:
    name: str
    owner: str  # "user", "title" or "shared": whose count it is divided by
    pattern: str  # SCAN pattern under the run's prefix


def families(keys: KeyLayout) -> list[Family]:
    return [
        Family("user state (u)", "user", keys.user_state("*")),
        Family("user vector (uv)", "user", keys.user_vector("*")),
        Family("session (s)", "user", keys.session("*")),
        Family("event window (ew)", "user", keys.event_window("*")),
        Family("item state (i)", "title", keys.item_state("*")),
        Family("item learning (il)", "title", f"{keys.prefix}:il:*"),
        Family("trending (trend)", "shared", keys.trending("*", "*", "*")),
        Family("new releases", "shared", keys.new_releases),
        Family("offsets", "shared", keys.offset("*", "*")),
    ]


@dataclass
class Weighed:
    keys: int
    bytes: int  # MEMORY USAGE, summed
    median: float  # MEMORY USAGE per key
    payload_median: float  # the floor: the data itself, per key
    payload: int
    entries: int  # hash fields / sorted-set members / 1 per string


def _queue_payload(pipe: Any, key: bytes, kind: bytes) -> None:
    """Queue the read of ``key``'s data (its floor: the bytes without Redis' structures)."""
    if kind == b"string":
        pipe.strlen(key)
    elif kind == b"hash":
        pipe.hgetall(key)
    elif kind == b"zset":
        pipe.zrange(key, 0, -1, withscores=True)
    else:
        pipe.exists(key)


def _payload_bytes(kind: bytes, reply: Any) -> tuple[int, int]:
    """(payload bytes, entries) of one key."""
    if kind == b"string":
        return int(reply), 1
    if kind == b"hash":
        return sum(len(f) + len(v) for f, v in reply.items()), len(reply)
    if kind == b"zset":
        return sum(len(m) + 8 for m, _ in reply), len(reply)
    return 0, 0


async def weigh(client: Any, pattern: str, batch: int = 500) -> Weighed:
    """Every key of ``pattern``: ``MEMORY USAGE`` (exact: ``SAMPLES 0``) and payload bytes, pipelined."""
    keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
    usages: list[int] = []
    payloads: list[int] = []
    entries = 0
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
            pipe.type(key)
        replies = await pipe.execute()
        usages += [int(r or 0) for r in replies[0::2]]
        kinds = [k if isinstance(k, bytes) else str(k).encode() for k in replies[1::2]]
        pipe = client.pipeline(transaction=False)
        for key, kind in zip(chunk, kinds, strict=True):
            _queue_payload(pipe, key, kind)
        for kind, reply in zip(kinds, await pipe.execute(), strict=True):
            size, count = _payload_bytes(kind, reply)
            payloads.append(size)
            entries += count
    return Weighed(len(keys), sum(usages), statistics.median(usages) if usages else 0.0,
                   statistics.median(payloads) if payloads else 0.0, sum(payloads), entries)


async def redis_cpu_s(client: Any) -> float:
    """The redis-server's CPU seconds so far (user + system, every thread)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def used_memory(client: Any) -> dict[str, float]:
    info = await client.info("memory")
    return {k: info[k] for k in ("used_memory", "used_memory_dataset", "mem_fragmentation_ratio") if k in info}


def _train(world: Path, artifacts: Path) -> Path:
    """A small bundle on the first half of the log (the worker's costs, not its quality, matter here)."""
    half = artifacts.parent / "train-half"
    half.mkdir(parents=True, exist_ok=True)
    (half / "catalog.jsonl").write_bytes((world / "catalog.jsonl").read_bytes())
    lines = (world / "events.jsonl").read_bytes().splitlines()
    (half / "events.jsonl").write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    train_bundle(half, artifacts, TwoStageConfig(dim=64, rank_users=200, ranker_epochs=1))
    return artifacts


def kafka_disk_bytes(state_dir: Path, topic: str) -> tuple[int, int]:
    """Bytes of the ``*.log`` segments of ``topic`` under the stack's state folder, and the replicas found
    (folders per partition: more than one on a multi-broker stack)."""
    dirs = [d for d in state_dir.rglob(f"{topic}-*") if d.is_dir() and d.name[len(topic) + 1:].isdigit()]
    size = sum(f.stat().st_size for d in dirs for f in d.glob("*.log"))
    partitions = {d.name for d in dirs}
    return size, (len(dirs) // len(partitions)) if partitions else 0


def _spawn_worker(env: dict[str, str], prefix: str, artifacts: Path | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamrec.commands.worker", "--metrics-port", "0", "--prefix", prefix,
         *(["--artifacts", str(artifacts)] if artifacts else [])], cwd=REPO, env=env)


async def _wait_applied(client: Any, keys: KeyLayout, ends: dict[tuple[str, int], int],
                        proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    wanted = {(t, p): end - 1 for (t, p), end in ends.items() if end > 0}
    started = time.perf_counter()
    while True:
        stored = await client.mget([keys.offset(t, p) for t, p in wanted])
        if all(v is not None and int(v) >= end for v, end in zip(stored, wanted.values(), strict=True)):
            return time.perf_counter() - started
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}")
        if time.perf_counter() - started > timeout_s:
            raise SystemExit(f"the worker did not apply the log in {timeout_s} s")
        await asyncio.sleep(0.05)


async def measure(settings: Settings, world: Path, artifacts: Path | None, timeout_s: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    scoped = settings.with_topic_prefix(f"bench-mem-{tag}").model_copy(
        update={"interactions_partitions": PARTITIONS, "log_level": "WARNING"})
    keys = KeyLayout(f"benchmem{tag}")
    client = redis_client(settings)
    result: dict[str, Any] = {}
    try:
        await ensure_topics_retrying(scoped)
        await replay_log(world, scoped)
        ends = await end_offsets(scoped)
        events = sum(end for (topic, _), end in ends.items() if topic == scoped.topic_interactions)
        before = await used_memory(client)
        cpu_before = await redis_cpu_s(client)
        proc = _spawn_worker(settings_env(scoped), keys.prefix, artifacts)
        try:
            seconds = await _wait_applied(client, keys, ends, proc, timeout_s)
            # Redis' CPU for the whole apply (the worker's start-up reads included; this run's polling too).
            redis_cpu = await redis_cpu_s(client) - cpu_before
        finally:
            terminate(proc, timeout_s=30)
        await asyncio.sleep(0.5)  # the closed connections' buffers freed
        after = await used_memory(client)
        weighed = {f.name: (f, await weigh(client, f.pattern)) for f in families(keys)}
        users = weighed["user state (u)"][1].keys
        titles = weighed["item state (i)"][1].keys
        by_owner = {owner: sum(w.bytes for f, w in weighed.values() if f.owner == owner)
                    for owner in ("user", "title", "shared")}
        measured = sum(by_owner.values())
        delta = after["used_memory"] - before["used_memory"]
        all_in = delta / measured if measured else 1.0
        trending = weighed["trending (trend)"][1].bytes + weighed["new releases"][1].bytes
        lines = (world / "events.jsonl").read_bytes().splitlines()
        disk, replicas = kafka_disk_bytes(Path(settings.state_dir), scoped.topic_interactions)
        result = {
            "events": events, "users": users, "titles": titles, "apply_seconds": round(seconds, 1),
            "families": {name: {"owner": f.owner, "keys": w.keys, "bytes": w.bytes, "median_bytes": w.median,
                                "payload_median_bytes": w.payload_median, "payload_bytes": w.payload,
                                "entries": w.entries, "bytes_per_entry": round(w.bytes / max(1, w.entries), 1),
                                "overhead_ratio": round(w.bytes / w.payload, 2) if w.payload else None}
                         for name, (f, w) in weighed.items()},
            "memory_usage_sum": measured, "used_memory_before": before["used_memory"],
            "used_memory_after": after["used_memory"], "used_memory_delta": delta,
            "all_in_factor": round(all_in, 3), "mem_fragmentation_ratio": after.get("mem_fragmentation_ratio"),
            "bytes_per_user": round(by_owner["user"] / max(1, users), 1),
            "bytes_per_user_all_in": round(by_owner["user"] / max(1, users) * all_in, 1),
            "bytes_per_title": round(by_owner["title"] / max(1, titles), 1),
            "bytes_per_title_with_trending": round((by_owner["title"] + trending) / max(1, titles), 1),
            "bytes_per_title_all_in": round((by_owner["title"] + trending) / max(1, titles) * all_in, 1),
            "shared_bytes": by_owner["shared"],
            "event_json_bytes_mean": round(sum(len(line) for line in lines) / max(1, len(lines)), 1),
            "event_json_bytes_median": statistics.median(len(line) for line in lines) if lines else 0,
            "kafka_disk_bytes_per_event": round(disk / max(1, events) / max(1, replicas), 1) if disk else None,
            "kafka_replicas_seen": replicas,
            "redis_cpu_us_per_event": round(redis_cpu / max(1, events) * 1e6, 1),
        }
    finally:
        await delete_state(client, keys)
        await client.aclose()
        await delete_topics(scoped)
    return result


def _print(result: dict[str, Any], cores: int | None) -> None:
    console = Console(stderr=True)
    table = Table(title=f"Redis memory, {result['events']:,} events, {result['users']:,} users, "
                        f"{result['titles']:,} titles, {cores} cores")
    for column in ("family", "owner", "keys", "entries", "MEMORY USAGE", "median / key", "floor: payload / key",
                   "× payload"):
        table.add_column(column, justify="left" if column in ("family", "owner") else "right")
    for name, f in result["families"].items():
        table.add_row(name, f["owner"], f"{f['keys']:,}", f"{f['entries']:,}", f"{f['bytes']:,}",
                      f"{f['median_bytes']:,.0f}", f"{f['payload_median_bytes']:,.0f}", str(f["overhead_ratio"] or "-"))
    console.print(table)
    summary = Table(title="per active user / per title")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    for key in ("bytes_per_user", "bytes_per_user_all_in", "bytes_per_title", "bytes_per_title_with_trending",
                "bytes_per_title_all_in", "shared_bytes", "memory_usage_sum", "used_memory_delta", "all_in_factor",
                "mem_fragmentation_ratio", "event_json_bytes_mean", "event_json_bytes_median",
                "kafka_disk_bytes_per_event", "redis_cpu_us_per_event", "apply_seconds"):
        value = result.get(key)
        summary.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(summary)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--log", type=Path, help="an existing world folder (default: generate one)")
    parser.add_argument("--artifacts", type=Path, help="a bundle root (default: train a small one on half the log)")
    parser.add_argument("--no-bundle", action="store_true", help="no bundle: no user vectors nor item learning")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the worker may take")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)

    configure_logging("WARNING")
    settings = get_settings()
    if settings.redis_cluster:
        raise SystemExit("bench_memory weighs one redis-server (INFO and SCAN per node are not summed)")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        world = args.log
        if world is None:
            world = Path(tmp) / "world"
            generate_world(world, users=args.users, items=args.items, events=args.events, seed=1)
        artifacts = args.artifacts
        if artifacts is None and not args.no_bundle:
            artifacts = _train(world, Path(tmp) / "artifacts")
        result = await measure(settings, world, artifacts, args.timeout)
    _print(result, os.cpu_count())
    line = json.dumps(result)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    asyncio.run(main())
