"""Memory and speed of a server's in-process copy of every title's feature state (online_state/item_state.py).

    python benchmarks/bench_item_state.py [--titles 10000,100000,1000000] [--redis-titles 10000,100000]

Per catalogue size, in a fresh child process each (so that RSS deltas are this table's alone):

- ``rss_mb``: the process' RSS growth from filling the table with one record per title (8 counts and two
  popularity epochs of each half-life, the shape the worker publishes), id index included; ``array_mb``: the
  numpy arrays alone; ``bytes_per_title``.
- ``apply_us``: median time to apply one item-state record (what a server spends per record it tails).
- ``gather_us`` for 1,000 random candidates (the serving model's rows -> the table's rows -> the feature columns,
  as a request does), beside the floor measured in the same run: numpy's gather of the same 1,000 rows of a
  prebuilt int64 matrix by row number (``floor_us``); ``gather_by_id_us``: the same from the candidates' id strings.

With ``--redis-titles`` (needs ``streamrec stack up``): the snapshot read at a server's start, for that many item
hashes written under a scratch prefix (deleted after): seconds and titles per second.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from foundation.settings import get_settings
from models.features.state import ITEM_COUNT_NAMES, ItemStates
from online_state.item_state import ItemStateRecord, ItemStateTable, load_item_states
from online_state.keys import KeyLayout

NOW = 1_767_225_600_000
CANDIDATES = 1000


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _records(n: int, rng: np.random.Generator) -> list[tuple[str, ItemStateRecord]]:
    d, w = ItemStates.epochs_at(NOW)
    counts = rng.integers(0, 10_000, size=(n, len(ITEM_COUNT_NAMES)))
    pops = rng.integers(1, 1 << 40, size=(n, 4))
    out = []
    for i in range(n):
        fields: list[str | int] = []
        for name, value in zip(ITEM_COUNT_NAMES, counts[i].tolist(), strict=True):
            fields += [name, value]
        fields += [f"d:{d - 1}", int(pops[i, 0]), f"d:{d}", int(pops[i, 1]),
                   f"w:{w - 1}", int(pops[i, 2]), f"w:{w}", int(pops[i, 3])]
        out.append((f"title-{i:08d}", ItemStateRecord(v=1, t=NOW, f=fields)))
    return out


def measure_table(n: int) -> dict[str, Any]:
    """One catalogue size (run in a child process: see the module docstring)."""
    rng = np.random.default_rng(0)
    records = _records(n, rng)
    before = _rss_kb()
    table = ItemStateTable()
    started = time.perf_counter()
    # Ids decoded afresh, as a server's are from the records' keys (the index holds its own strings).
    table.apply_many((item_id.encode().decode(), record) for item_id, record in records)
    apply_s = time.perf_counter() - started
    table.loaded = True
    rss_kb = _rss_kb() - before
    epochs = ItemStates.epochs_at(NOW)
    # A serving model numbers the titles its own way: its rows -> the table's, kept by the table (row_map).
    universe = [item_id for item_id, _ in records][::-1]
    universe_index = {item_id: r for r, item_id in enumerate(universe)}
    table.row_map(universe, universe_index)
    rows = rng.integers(0, n, CANDIDATES)
    ids = [universe[r] for r in rows.tolist()]
    matrix = np.zeros((n, len(ITEM_COUNT_NAMES) + 4), np.int64)
    gather, by_id, floor = [], [], []
    for _ in range(200):
        t0 = time.perf_counter()
        table.values_at(table.row_map(universe, universe_index)[rows], epochs)
        t1 = time.perf_counter()
        matrix[rows]
        t2 = time.perf_counter()
        table.values(ids, epochs)
        t3 = time.perf_counter()
        gather.append(t1 - t0)
        floor.append(t2 - t1)
        by_id.append(t3 - t2)
    return {"titles": n, "rss_mb": round(rss_kb / 1024, 1), "array_mb": round(table.nbytes / 2**20, 1),
            "bytes_per_title": round(rss_kb * 1024 / n), "apply_us": round(apply_s / n * 1e6, 2),
            "gather_us": round(statistics.median(gather) * 1e6, 1),
            "gather_by_id_us": round(statistics.median(by_id) * 1e6, 1),
            "floor_us": round(statistics.median(floor) * 1e6, 1)}


async def measure_snapshot(n: int) -> dict[str, Any]:
    from foundation.redis_io import redis_client  # only this part needs a server

    client = redis_client(get_settings())
    keys = KeyLayout(f"benchitem{uuid.uuid4().hex[:8]}")
    rng = np.random.default_rng(1)
    try:
        pipe = client.pipeline(transaction=False)
        for item_id, record in _records(n, rng):
            flat = record.f
            pipe.hset(keys.item_state(item_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)) | {"v": 1})
            if len(pipe) >= 5000:
                await pipe.execute()
        await pipe.execute()
        table = ItemStateTable()
        started = time.perf_counter()
        read = await load_item_states(client, keys, table)
        seconds = time.perf_counter() - started
        return {"titles": n, "snapshot_s": round(seconds, 2), "titles_per_s": round(read / seconds)}
    finally:
        cursor: Any = 0
        while True:
            cursor, names = await client.scan(cursor=cursor, match=keys.everything, count=5000)
            if names:
                await client.delete(*names)
            if int(cursor) == 0:
                break
        await client.aclose()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--titles", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--redis-titles", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_table(args.child)))
        return {}
    tables = []
    for n in args.titles:
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True, capture_output=True, text=True)
        tables.append(json.loads(out.stdout.strip().splitlines()[-1]))
    snapshots = [asyncio.run(measure_snapshot(n)) for n in args.redis_titles]
    print(f"{'titles':>10} {'rss MB':>8} {'arrays MB':>9} {'B/title':>8} {'apply us':>9} {'gather us':>10} "
          f"{'floor us':>9} {'by id us':>9}", file=sys.stderr)
    for t in tables:
        print(f"{t['titles']:>10,} {t['rss_mb']:>8} {t['array_mb']:>9} {t['bytes_per_title']:>8} {t['apply_us']:>9} "
              f"{t['gather_us']:>10} {t['floor_us']:>9} {t['gather_by_id_us']:>9}", file=sys.stderr)
    for s in snapshots:
        print(f"snapshot of {s['titles']:,} titles from Redis: {s['snapshot_s']} s ({s['titles_per_s']:,}/s)",
              file=sys.stderr)
    result = {"tables": tables, "snapshots": snapshots}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
