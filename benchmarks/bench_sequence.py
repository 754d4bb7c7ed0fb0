"""The sequence model on ml-latest-small: candidate recall beside popularity and ALS, training and serving cost.

    python benchmarks/bench_sequence.py [--path ../shared/data/ml-latest-small] [--epochs 40] [--dim 64]
        [--max-len 20] [--neg-power 0.75] [--no-logq] [--requests 300] [--seed 0]

- Split: ``streamrec eval``'s default (``models.split.make_split(log, "user-last")``); every system is fitted
  on its training part. A test user's input is their last ``max_len`` positive training titles
  (``models.sequence.positive_sequences``: what the workers hold at the cut).
- Candidate recall at budgets 50/100/200 with the user's training titles excluded, pooled over all test
  positives as ``streamrec eval`` pools it (``models.eval.metrics.candidate_recall``), for the sequence source
  alone, popularity (all-time counts) and the ALS ``ann_cf`` source (HNSW, as ``bench_retrieval.py`` fits it),
  and the union of the sequence and ALS sources at the same budget each.
- Cost: training seconds, ONNX export seconds and file size; per request (one user, BLAS and ORT on one
  thread as on a server): ``session.run`` alone, the whole ``sequence_next`` (run + catalogue matmul +
  ``top_k`` with the exclusion mask) at budget 200, and the floor of a bare ``np.argpartition`` over the same
  catalogue scores; median and p99 µs.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.settings import get_settings
from models.ann import IndexParams, ItemIndex
from models.candidates import ann_cf, as_mask, popularity_scores, top_k, user_histories
from models.cf import fit_cf
from models.dataset import load_log
from models.eval.metrics import candidate_recall
from models.sequence import SequenceScorer, positive_sequences, sequence_next, train_sequence_model
from models.split import make_split
from tools.bench.timing import per_call_us
from tools.datasets.movielens import import_movielens

BUDGETS = (50, 100, 200)


def latency_us(fn: Callable[[int], Any], users: NDArray[np.int64]) -> dict[str, float]:
    t = per_call_us(fn, users)
    return {"median_us": round(float(np.median(t)), 1), "p99_us": round(float(np.percentile(t, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=get_settings().movielens_path)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--neg-power", type=float, default=0.75)
    parser.add_argument("--no-logq", dest="logq", action="store_false",
                        help="train without the log-Q correction (popularity-debiased scores)")
    parser.add_argument("--requests", type=int, default=300, help="users sampled for per-request timings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.path / "ratings.csv").is_file():
        sys.exit(f"no ml-latest layout at {args.path} (use --path or STREAMREC_MOVIELENS_PATH)")

    with tempfile.TemporaryDirectory() as tmp:
        import_movielens(args.path, Path(tmp))
        log = load_log(Path(tmp))
    split = make_split(log, "user-last")
    train_log, n_items, users = split.train, split.n_items, split.test_users
    sequences = positive_sequences(user_histories(train_log))

    started = time.perf_counter()
    model = train_sequence_model(sequences, n_items, dim=args.dim, max_len=args.max_len, epochs=args.epochs,
                                 seed=args.seed, blocks=args.blocks, neg_power=args.neg_power, logq=args.logq)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    scorer: SequenceScorer = model.to_scorer()
    export_s = time.perf_counter() - started

    cf = fit_cf(train_log, seed=args.seed)
    index = ItemIndex.build(cf.item_vectors, IndexParams(space="ip"))
    pop = popularity_scores(train_log, half_life_days=None)
    exclude = split.exclude(users)
    masks = {int(u): as_mask(exclude[r].indices, n_items) for r, u in enumerate(users)}
    top = max(BUDGETS)
    lists: dict[str, list[NDArray[np.int32]]] = {"sequence": [], "popularity": [], "ann_cf (ALS)": []}
    for u in users.tolist():
        lists["sequence"].append(sequence_next(scorer, sequences[u], top, masks[u])[0])
        lists["popularity"].append(top_k(pop, top, masks[u])[0])
        lists["ann_cf (ALS)"].append(ann_cf(index, cf.user_vectors[u], top, masks[u])[0])
    recall: dict[str, dict[int, float]] = {name: {} for name in (*lists, "sequence ∪ ann_cf")}
    for b in BUDGETS:
        cut = {name: [items[:b] for items in per_user] for name, per_user in lists.items()}
        pooled = candidate_recall(split.positives, cut)
        for name in lists:
            recall[name][b] = round(pooled[name], 4)
        pair = {"sequence": cut["sequence"], "ann_cf": cut["ann_cf (ALS)"]}
        recall["sequence ∪ ann_cf"][b] = round(candidate_recall(split.positives, pair)["union"], 4)

    rng = np.random.default_rng(args.seed)
    sample = rng.choice(users, size=min(args.requests, len(users)), replace=False).astype(np.int64)
    inputs = {u: scorer.encode(sequences[u]) for u in sample.tolist()}
    scores = {u: scorer.scores(sequences[u]) for u in sample.tolist()}
    with threadpool_limits(1, "blas"):
        cost = {
            "session_run": latency_us(lambda u: scorer.user_states(inputs[u]), sample),
            "sequence_next@200": latency_us(lambda u: sequence_next(scorer, sequences[u], top, masks[u]), sample),
            "argpartition_floor@200": latency_us(lambda u: np.argpartition(-scores[u], top - 1)[:top], sample),
        }

    result: dict[str, Any] = {
        "bench": "sequence", "source": str(args.path), "split": split.summary(), "n_items": n_items,
        "params": model.config, "train_s": round(train_s, 2), "export_s": round(export_s, 2),
        "onnx_bytes": len(scorer.onnx_model), "item_table_bytes": scorer.item_embeddings.nbytes,
        "final_loss": round(model.history[-1].loss, 4), "recall": recall, "per_request": cost,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    print(f"ml-latest-small user-last: {split.n_test_users} test users, {split.n_positives} positives, "
          f"{n_items} titles")
    print(f"sequence model: dim {args.dim}, max_len {args.max_len}, {args.blocks} blocks, {args.epochs} epochs; "
          f"train {train_s:.1f} s, export {export_s:.1f} s, ONNX {len(scorer.onnx_model) / 1e6:.2f} MB "
          f"(+ item table {scorer.item_embeddings.nbytes / 1e6:.2f} MB npz)")
    print(f"\n{'candidate recall (pooled)':<26}" + "".join(f"{'@' + str(b):>9}" for b in BUDGETS))
    for name, row in recall.items():
        print(f"{name:<26}" + "".join(f"{row[b]:>9.4f}" for b in BUDGETS))
    print(f"\n{'per request (1 thread)':<26}{'median µs':>11}{'p99 µs':>10}")
    for name, t in cost.items():
        print(f"{name:<26}{t['median_us']:>11.1f}{t['p99_us']:>10.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
