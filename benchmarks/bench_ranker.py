"""Ranker latency for one request (~1,000 candidates) beside the raw ONNX Runtime floor; training time.

    python benchmarks/bench_ranker.py [--rows 1000] [--calls 2000] [--threads 1] [--train]

Candidates, all scoring the same pre-built ``FeatureBatch`` with the same exported model
(``synthetic_layout()``: 8 dense, 3 wide columns over 2^16 buckets, 4 categorical columns up to
10,001 ids; emb_dim 16, hidden (128, 64)):
- floor: ``InferenceSession.run`` on a pre-built feed dict, same session and options as ``RankerSession``;
- ``RankerSession.score(batch)``: what the server calls (dtype/shape checks, feed dict, reshape);
- ``IO binding``: ``run_with_iobinding`` with inputs bound once and a pre-allocated output (for reference);
- ``torch eager``: the same model in PyTorch, ``no_grad``, eval mode, same thread count.
Calls are interleaved in blocks of 50 per candidate so that noise from the shared machine lands on all
of them alike; every call is timed on its own for the median and p99.

``--train`` also times ``train_ranker`` on 600 requests × 1,000 candidates (600k rows, the size of
ml-latest-small × retrieval's output) with the default settings (listwise, 128 negatives per request,
early stopping on 150 validation requests), after a warm-up that pays torch's one-off imports.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.features.batch import FeatureBatch, FeatureLayout
from models.ranker import (
    RankerSession,
    WideAndDeep,
    batch_tensors,
    export_onnx,
    grouped_ndcg,
    synthetic_examples,
    synthetic_layout,
    torch_scores,
    train_ranker,
)

BLOCK = 50


def _random_batch(layout: FeatureLayout, n: int, seed: int) -> FeatureBatch:
    rng = np.random.default_rng(seed)
    return FeatureBatch(rng.normal(0.0, 1.0, (n, len(layout.dense_names))).astype(np.float32),
                        rng.integers(0, layout.wide_buckets, (n, len(layout.wide_names)), dtype=np.int64),
                        np.stack([rng.integers(0, c, n) for c in layout.cat_cardinalities], axis=1).astype(np.int64))


def _time_interleaved(candidates: dict[str, Callable[[], Any]], calls: int, warmup: int) -> dict[str, list[float]]:
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    clock = time.perf_counter
    for _ in range(max(1, calls // BLOCK)):
        for name, fn in candidates.items():
            out = times[name]
            for _ in range(BLOCK):
                start = clock()
                fn()
                out.append(clock() - start)
    return times


def bench_latency(rows: int, calls: int, threads: int, model: WideAndDeep, layout: FeatureLayout,
                  path: Path) -> dict[str, dict[str, float]]:
    batch = _random_batch(layout, rows, seed=1)
    session = RankerSession(path, intra_op_threads=threads, inter_op_threads=1)
    raw = session.session  # same InferenceSession: the floor differs from score() only by the wrapper
    feeds = {"dense": batch.dense, "wide": batch.wide, "cats": batch.cats}
    binding = raw.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    out = np.empty(rows, np.float32)
    binding.bind_output("score", "cpu", 0, np.float32, [rows], out.ctypes.data)
    tensors = batch_tensors(batch)
    model.eval()

    def torch_eager() -> Any:
        with torch.no_grad():
            return model(*tensors)

    # All candidates must agree before they are timed.
    reference = torch_scores(model, batch)
    raw.run_with_iobinding(binding)
    for name, got in (("score", session.score(batch)), ("raw", raw.run(["score"], feeds)[0]), ("iobinding", out)):
        diff = float(np.max(np.abs(got - reference)))
        if diff > 1e-5:
            raise SystemExit(f"{name} disagrees with torch by {diff}")

    candidates: dict[str, Callable[[], Any]] = {
        "floor: InferenceSession.run (pre-built feeds)": lambda: raw.run(["score"], feeds),
        "RankerSession.score(batch)": lambda: session.score(batch),
        "IO binding (pre-bound, pre-allocated)": lambda: raw.run_with_iobinding(binding),
        "torch eager (no_grad)": torch_eager,
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = _time_interleaved(candidates, calls, warmup=max(20, calls // 20))
    finally:
        torch.set_num_threads(previous)
    results: dict[str, dict[str, float]] = {}
    for name, samples in times.items():
        ordered = sorted(samples)
        results[name] = {"median_us": statistics.median(ordered) * 1e6,
                         "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6,
                         "mean_us": statistics.fmean(ordered) * 1e6, "calls": len(ordered)}
    floor = results["floor: InferenceSession.run (pre-built feeds)"]
    for row in results.values():
        row["median_x_floor"] = row["median_us"] / floor["median_us"]
        row["p99_x_floor"] = row["p99_us"] / floor["p99_us"]
    return results


def bench_train(layout: FeatureLayout) -> dict[str, Any]:
    train = synthetic_examples(layout, n_groups=600, group_size=1000, seed=1)
    valid = synthetic_examples(layout, n_groups=150, group_size=1000, seed=2)
    start = time.perf_counter()
    # Warm-up: the first torch.optim construction in a process imports torch._dynamo (seconds when
    # bytecode is not cached); that is process start-up, not training.
    train_ranker(*synthetic_examples(layout, 4, 50, seed=3), layout, epochs=1)
    warmup_s = time.perf_counter() - start
    model, history = train_ranker(*train, layout, valid=valid,
                                  progress=lambda e: print(f"  epoch {e.epoch}: loss {e.loss:.4f} rows {e.rows:,} "
                                                           f"{e.seconds:.2f}s valid NDCG@10 {e.valid_ndcg10:.4f}"))
    rng = np.random.default_rng(0)
    return {"rows": len(train[1]), "requests": 600, "seconds": history.seconds, "warmup_s": warmup_s,
            "epochs_run": len(history.epochs), "best_epoch": history.best_epoch,
            "rows_per_epoch": history.epochs[0].rows,
            "epoch_seconds": [round(e.seconds, 3) for e in history.epochs],
            "valid_ndcg10": history.best_valid_ndcg10,
            "valid_ndcg10_random": grouped_ndcg(rng.random(len(valid[1])), valid[1], valid[2]),
            "params": history.params, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads and torch threads")
    parser.add_argument("--train", action="store_true", help="also time training on 600k rows")
    args = parser.parse_args()
    torch.set_num_threads(2)

    layout = synthetic_layout()
    training = None
    if args.train:
        training = bench_train(layout)
        model = training.pop("model")
    else:
        torch.manual_seed(0)
        model = WideAndDeep(layout).eval()  # latency does not depend on the weights' values

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, layout, Path(tmp) / "ranker.onnx")
        export_s = time.perf_counter() - start
        size = path.stat().st_size
        results = bench_latency(args.rows, args.calls, args.threads, model, layout, path)

    print(f"{args.rows} rows per call, {args.calls} calls each, intra-op threads {args.threads}, "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"export (dynamo, first in process): {export_s:.2f}s, {size / 1e6:.2f} MB, single file")
    if training is not None:
        print(f"training: {training['rows']:,} rows ({training['rows_per_epoch']:,} per epoch after subsampling), "
              f"{training['seconds']:.2f}s for {training['epochs_run']} epochs (best {training['best_epoch']}), "
              f"warm-up {training['warmup_s']:.2f}s; valid NDCG@10 {training['valid_ndcg10']:.3f} "
              f"(random {training['valid_ndcg10_random']:.3f})")
    print(f"{'candidate':48s} {'median us':>10s} {'p99 us':>9s} {'x floor':>8s} {'p99 x fl':>9s}")
    for name, row in results.items():
        print(f"{name:48s} {row['median_us']:10.1f} {row['p99_us']:9.1f} {row['median_x_floor']:8.2f} "
              f"{row['p99_x_floor']:9.2f}")
    print(json.dumps({"benchmark": "ranker", "rows": args.rows, "calls": args.calls, "threads": args.threads,
                      "export_s": export_s, "onnx_bytes": size, "results": results, "train": training}))


if __name__ == "__main__":
    main()
