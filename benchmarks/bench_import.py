"""Time of ``streamrec import movielens`` beside the floor of merely reading the same CSVs.

    python benchmarks/bench_import.py [--path ../shared/data/ml-latest-small] [--repeats 5]

Floor: ``csv.reader`` over movies/ratings/tags with no conversion, sorting or writing: what any
importer in pure Python has to pay. The importer additionally converts, sorts, aggregates tags and
writes two JSONL files. Prints a table and one JSON line with medians and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.settings import get_settings
from tools.datasets.movielens import import_movielens


def _floor(path: Path) -> int:
    rows = 0
    for name in ("movies.csv", "ratings.csv", "tags.csv"):
        if (path / name).is_file():
            with (path / name).open(encoding="utf-8", newline="") as fh:
                for _ in csv.reader(fh):
                    rows += 1
    return rows


def _median_seconds(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", type=Path, default=get_settings().movielens_path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (args.path / "ratings.csv").is_file():
        sys.exit(f"no ml-latest layout at {args.path} (use --path or STREAMREC_MOVIELENS_PATH)")

    with tempfile.TemporaryDirectory() as tmp:
        ratings = import_movielens(args.path, Path(tmp)).ratings  # warm the page cache
        floor = _median_seconds(lambda: _floor(args.path), args.repeats)
        full = _median_seconds(lambda: import_movielens(args.path, Path(tmp)), args.repeats)

    print(f"{'step':<28}{'median s':>10}{'ratings/s':>14}")
    print(f"{'csv.reader floor':<28}{floor:>10.3f}{ratings / floor:>14,.0f}")
    print(f"{'import_movielens':<28}{full:>10.3f}{ratings / full:>14,.0f}")
    print(json.dumps({
        "bench": "import_movielens", "source": str(args.path), "ratings": ratings, "repeats": args.repeats,
        "floor_s": round(floor, 4), "import_s": round(full, 4), "ratio_to_floor": round(full / floor, 2),
        "python": platform.python_version(), "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
