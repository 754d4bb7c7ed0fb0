"""How fast does ``streamrec generate`` write a world, against the raw cost of writing its bytes?

    python benchmarks/bench_generate.py --events 1000000 [--repeats 3] [--users 2000] [--items 10000]

Each repeat times :func:`tools.datasets.world.generate_world` end to end (catalogue included)
into a fresh folder, then times the *I/O floor*: writing the same number of pre-encoded lines of
the same average size into the same folder, in chunks of the size the generator writes, with the
same buffering. The ratio says how much of the time is simulation and encoding rather than disk.
The catalogue alone (``events=0``) is timed once so its fixed cost can be told apart.

Prints a human summary, then one JSON line with the figures (the last line of output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.datasets.world import generate_world

# The generator writes about this many lines per write() call at the default density.
_LINES_PER_WRITE = 1400


def io_floor(path: Path, lines: int, line_bytes: int) -> float:
    """Seconds to write ``lines`` ready-made lines of ``line_bytes`` bytes (newline included)."""
    line = b"x" * (line_bytes - 1) + b"\n"
    chunk = line * _LINES_PER_WRITE
    t0 = time.perf_counter()
    with path.open("wb", buffering=1 << 20) as f:
        left = lines
        while left >= _LINES_PER_WRITE:
            f.write(chunk)
            left -= _LINES_PER_WRITE
        f.write(line * left)
    elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="Scratch folder (default: a temp folder).")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench_generate_", dir=args.dir))
    gen_s: list[float] = []
    floor_s: list[float] = []
    line_bytes = 0
    try:
        t0 = time.perf_counter()
        generate_world(scratch / "catalog_only", users=args.users, items=args.items, events=0, seed=args.seed,
                       days=args.days)
        catalog_s = time.perf_counter() - t0
        for r in range(args.repeats):
            out = scratch / f"run{r}"
            t0 = time.perf_counter()
            summary = generate_world(out, users=args.users, items=args.items, events=args.events,
                                     seed=args.seed, days=args.days)
            gen_s.append(time.perf_counter() - t0)
            size = summary.events_path.stat().st_size
            line_bytes = max(1, round(size / max(1, summary.events)))
            shutil.rmtree(out)
            floor_s.append(io_floor(scratch / "floor.jsonl", args.events, line_bytes))
            print(f"repeat {r + 1}: generate {gen_s[-1]:.2f} s, I/O floor {floor_s[-1]:.3f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    median = statistics.median(gen_s)
    floor = statistics.median(floor_s)
    figures = {
        "bench": "generate_world",
        "events": args.events,
        "users": args.users,
        "items": args.items,
        "days": args.days,
        "repeats": args.repeats,
        "median_s": round(median, 3),
        "min_s": round(min(gen_s), 3),
        "events_per_s": round(args.events / median),
        "s_per_1m_events": round(median * 1_000_000 / max(1, args.events), 3),
        "catalog_only_s": round(catalog_s, 3),
        "avg_line_bytes": line_bytes,
        "io_floor_median_s": round(floor, 4),
        "ratio_to_floor": round(median / floor, 1) if floor > 0 else None,
        "cpus": os.cpu_count(),
    }
    print(
        f"median {median:.2f} s for {args.events:,} events ({figures['events_per_s']:,} events/s, "
        f"{figures['s_per_1m_events']} s per 1M); catalogue alone {catalog_s:.2f} s; "
        f"I/O floor {floor:.3f} s ({line_bytes} B/line); ratio {figures['ratio_to_floor']}x"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
