"""The features' item counters of a partition batch: today's one transaction vs the per-slot idempotent calls of
``docs/cluster-exactly-once.md`` (:mod:`streams.slot_apply`), in one run on scratch servers started here.

    python benchmarks/bench_slot_apply.py [--batches 40] [--batch 1000] [--titles 10000] [--port 17300]

Three rows, same events (zipf over ``--titles``, one partition, batches of ``--batch`` in offset order):

- ``one_transaction/single``: ``MULTI``, one ``FCALL streamrec_hincr`` of every title, ``SET offset``, ``EXEC``
  on one plain redis-server (the worker's bulk path today; impossible on a cluster: ``CROSSSLOT``);
- ``per_slot/single``: one ``streamrec_slot_hincr`` per slot, one pipeline, on the same server;
- ``per_slot/cluster``: the same on a three-master cluster (``port+1..port+3``; one pipeline per node).

Per row: events/s (client and servers on this machine), ms per batch, and per batch: slot units (markers gated),
Redis commands and round trips (on a cluster: one pipeline per node, in parallel). The
client's time includes computing the deltas, which both paths do. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from models.features.state import EventBatch, ItemStatic
from online_state.keys import KeyLayout
from online_state.redis_functions import hincr_many, load_functions
from online_state.slot_markers import load_slot_functions
from schemas.events import Click, Complete, Impression, Play
from streams.slot_apply import apply_item_counts, item_entries
from tools.stack.scratch_cluster import scratch_cluster, scratch_server

TOPIC = "interactions"


def make_events(n: int, titles: int, seed: int = 7) -> list[Any]:
    rng = np.random.default_rng(seed)
    t0 = 1_767_225_600_000
    ts = np.sort(rng.integers(t0, t0 + 7 * 86_400_000, n)).tolist()
    items = (rng.zipf(1.3, n) % titles).tolist()
    out: list[Any] = []
    for k, (t, i) in enumerate(zip(ts, items, strict=True)):
        common = {"event_id": f"e{k}", "ts": t, "schema_version": 1, "user_id": f"u{k % 5000}"}
        kind = k % 4
        if kind == 0:
            out.append(Impression(**common, item_ids=[f"t{(i + j) % titles}" for j in range(10)], request_id=f"r{k}"))
        elif kind == 1:
            out.append(Play(**common, item_id=f"t{i}"))
        elif kind == 2:
            out.append(Click(**common, item_id=f"t{i}"))
        else:
            out.append(Complete(**common, item_id=f"t{i}", watched_seconds=600.0))
    return out


def static(titles: int) -> ItemStatic:
    ids = [f"t{i}" for i in range(titles)]
    return ItemStatic.build(ids, [["drama"]] * titles, np.zeros(titles, np.int64), np.zeros(titles, np.int64),
                            np.zeros(titles, np.int8), np.zeros(titles, np.bool_))


async def one_transaction(redis: Any, keys: KeyLayout, batches: list[list[Any]], rows: ItemStatic) -> dict[str, float]:
    calls = 0
    started = time.perf_counter()
    for batch in batches:
        entries = item_entries(EventBatch.from_events([r.event for r in batch], rows))
        pipe = redis.pipeline(transaction=True)
        calls += hincr_many(pipe, [keys.item_state(i) for i in entries], list(entries.values()))
        pipe.set(keys.offset(TOPIC, 0), batch[-1].offset)
        await pipe.execute()
    return {"seconds": time.perf_counter() - started, "units": len(batches), "commands": calls,
            "round_trips": len(batches)}


async def per_slot(redis: Any, keys: KeyLayout, batches: list[list[Any]], rows: ItemStatic) -> dict[str, float]:
    units = trips = 0
    started = time.perf_counter()
    for batch in batches:
        out = await apply_item_counts(redis, keys, TOPIC, 0, batch, rows)
        units += out.calls
        trips += out.round_trips
    # On a cluster each slot unit is its own FCALL; on one server a round trip is one FCALL of every unit.
    commands = units if isinstance(redis, RedisCluster) else trips
    return {"seconds": time.perf_counter() - started, "units": units, "commands": commands, "round_trips": trips}


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = static(args.titles)
    events = make_events(args.batches * args.batch, args.titles)
    records = [SimpleNamespace(offset=k, event=e) for k, e in enumerate(events)]
    batches = [records[k:k + args.batch] for k in range(0, len(records), args.batch)]
    results: list[dict[str, Any]] = []

    def row(name: str, r: dict[str, float]) -> None:
        n = len(batches)
        results.append({"path": name, "events_per_s": round(len(events) / r["seconds"]),
                        "ms_per_batch": round(1000 * r["seconds"] / n, 2),
                        "slot_units_per_batch": round(r["units"] / n, 1),
                        "commands_per_batch": round(r["commands"] / n, 1),
                        "round_trips_per_batch": round(r["round_trips"] / n, 2)})

    with tempfile.TemporaryDirectory() as tmp:
        with scratch_server(Path(tmp), args.port) as port:
            single = Redis(host="127.0.0.1", port=port)
            await load_functions(single)
            await load_slot_functions(single)
            await one_transaction(single, KeyLayout("warm-a"), batches[:2], rows)
            await per_slot(single, KeyLayout("warm-b"), batches[:2], rows)
            row("one_transaction/single", await one_transaction(single, KeyLayout("a"), batches, rows))
            row("per_slot/single", await per_slot(single, KeyLayout("b"), batches, rows))
            await single.aclose()
        with scratch_cluster(Path(tmp), [args.port + k for k in (1, 2, 3)]) as ports:
            cluster = RedisCluster(host="127.0.0.1", port=ports[0])
            await cluster.initialize()
            await load_slot_functions(cluster)
            await per_slot(cluster, KeyLayout("warm-c"), batches[:2], rows)
            row("per_slot/cluster", await per_slot(cluster, KeyLayout("c"), batches, rows))
            await cluster.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--titles", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=17300, help="the plain server; the cluster uses port+1..+3")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(f"{'path':<24}{'events/s':>10}{'ms/batch':>10}{'slot units':>12}{'commands':>10}{'round trips':>13}")
    for r in results:
        print(f"{r['path']:<24}{r['events_per_s']:>10}{r['ms_per_batch']:>10}{r['slot_units_per_batch']:>12}"
              f"{r['commands_per_batch']:>10}{r['round_trips_per_batch']:>13}")
    print(json.dumps({"bench": "slot_apply", "batch": args.batch, "titles": args.titles, "results": results}))


if __name__ == "__main__":
    main()
