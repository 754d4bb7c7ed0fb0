"""`streamrec train` on MovieLens ml-latest-small, beside the raw library floor, in one run.

    python benchmarks/bench_train.py [--path ../shared/data/ml-latest-small] [--repeats 1]

- train: ``models.train.train_bundle`` end to end (read the log, CF + content + HNSW on the inner
  split, candidates and point-in-time feature rows for every user, Wide & Deep, ONNX export,
  retrieval refit on the whole log, bundle publish).
- floor: one ``implicit`` ALS fit on the same user x item matrix (the library call that every
  recommender pipeline of this kind makes at least once).
Goal: under 180 s on the 2-core reference machine. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from foundation.logs import configure_logging
from foundation.settings import get_settings
from models.cf import fit_cf
from models.dataset import load_log
from models.train import train_bundle
from tools.datasets.movielens import import_movielens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=get_settings().movielens_path)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not args.path.exists():
        raise SystemExit(f"ml-latest-small not found at {args.path} (set STREAMREC_MOVIELENS_PATH)")

    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    import_movielens(args.path, work / "data")
    log = load_log(work / "data")
    train_times: list[float] = []
    floor_times: list[float] = []
    stages: list[tuple[str, float]] = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        fit_cf(log, dim=64, seed=repeat)
        floor_times.append(time.perf_counter() - start)
        marks: list[tuple[str, float]] = []
        start = time.perf_counter()
        _, metrics = train_bundle(work / "data", work / f"artifacts-{repeat}",
                                  progress=lambda m, marks=marks: marks.append((m, time.perf_counter())))
        train_times.append(time.perf_counter() - start)
        # A list, not a dict: stages such as "collaborative filtering" run twice (inner split, whole log).
        stages = [(name, round(t - start, 1)) for name, t in marks]
    train_s, floor_s = statistics.median(train_times), statistics.median(floor_times)
    print(f"train_bundle on ml-latest-small: {train_s:.1f} s (goal < 180 s); ALS fit floor {floor_s:.2f} s; "
          f"ratio {train_s / floor_s:.0f}x")
    print("stage start times (s):", ", ".join(f"{name} {t}" for name, t in stages))
    print(json.dumps({"benchmark": "train", "data": "ml-latest-small", "repeats": args.repeats, "train_s": train_s,
                      "floor_als_fit_s": floor_s, "ratio_to_floor": train_s / floor_s, "stages": stages,
                      "ranker": metrics["ranker"]}))


if __name__ == "__main__":
    main()
