"""The sparse EASE item-to-item source (``models/item_item.py``) on ml-latest-small, user-last split.

    python benchmarks/bench_item_item.py [--path ../shared/data/ml-latest-small] [--requests 300]

- λ and top_k chosen on the validation split (the same protocol cut from the training part, as
  ``streamrec eval`` chooses EASE's λ), by the pooled recall of validation positives at ``--tune-budget``.
- On the test users: recall of test positives (pooled over users, as ``streamrec eval``'s candidate
  recall) by the item_item source at budgets 100/200/400/600, beside full EASE's top N at the same λ
  (what the pruned, head-only model approximates), the dense-limit fit (every interacted title, no
  head cut) and the existing sources' union as the recommend pipeline retrieves it (no ranker), alone
  and with item_item added.
- Fit time, CSR bytes and the ``.npz`` size; per-request time (median µs, BLAS on one thread) of the
  source beside the floors of a dense ``x @ B`` (one gemv over an n x n float32 ``B``) and of the dense
  row gather ``w @ B[history]``.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.settings import get_settings
from models.candidates import SOURCES
from models.config import TwoStageConfig
from models.dataset import load_log
from models.eval.baselines import EASE, EASE_LAMBDAS
from models.eval.metrics import candidate_recall
from models.features.spec import feature_layout
from models.features.state import ItemStatic
from models.item_item import ItemNeighbours, fit_item_neighbours, item_item
from models.recommend.pipeline import Snapshot, retrieve
from models.split import Split, make_split
from models.two_stage import fit_retrieval, recommender, request_at
from tools.bench.timing import median_us
from tools.datasets.movielens import import_movielens

BUDGETS = (100, 200, 400, 600)
TOP_KS = (50, 100, 200, 400)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def keep_top(weights: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries (what a fit with ``top_k=k`` keeps), without refitting."""
    rows = np.repeat(np.arange(weights.shape[0]), np.diff(weights.indptr))
    order = np.lexsort((-weights.data, rows))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - weights.indptr[rows[order]]
    keep = rank < k
    out = sp.csr_matrix((weights.data[keep], (rows[keep], weights.indices[keep])), shape=weights.shape,
                        dtype=np.float32)
    return sp.csr_matrix((out.data, out.indices.astype(np.int32), out.indptr.astype(np.int32)), shape=out.shape)


def source_lists(nb: ItemNeighbours, split: Split, budget: int) -> list[NDArray[np.int32]]:
    """The source's candidates for every test user of ``split``, history = the user's training titles."""
    x = split.train_items
    out = []
    for u in split.test_users.tolist():
        history = x.indices[x.indptr[u]:x.indptr[u + 1]]
        exclude = np.zeros(split.n_items, bool)
        exclude[history] = True
        out.append(item_item(nb, history, np.ones(len(history), np.float32), budget, exclude)[0])
    return out


def recall_at(split: Split, lists: Sequence[NDArray[np.integer]], budgets: Sequence[int]) -> dict[int, float]:
    """Pooled recall of ``split``'s positives by the first ``b`` of each list (lists are best first)."""
    return {b: candidate_recall(split.positives, {"s": [lst[:b] for lst in lists]})["s"] for b in budgets}


def ease_lists(split: Split, lam: float, n: int) -> list[NDArray[np.int32]]:
    """Full EASE's top ``n`` (training titles excluded) for every test user."""
    scores = EASE(lam).fit(split.train).scores(split.test_users)
    scores[split.exclude(split.test_users).nonzero()] = -np.inf
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return list(np.take_along_axis(top, order, axis=1).astype(np.int32))


def pipeline_union(split: Split) -> dict[str, list[NDArray[np.int32]]]:
    """Each existing source's candidates per test user as the recommend pipeline merges them (no ranker),
    each user asked just after their last training event, as ``streamrec eval``'s two_stage is."""
    train = split.train
    config = TwoStageConfig()
    layout = feature_layout(train.catalog.n_items, ItemStatic.from_catalog(train.catalog).n_genres)
    model = recommender(fit_retrieval(train, config), train, config, layout, None)
    last_row = np.full(train.n_users, -1, np.int64)
    last_row[train.user] = np.arange(train.n_events)
    out: dict[str, list[NDArray[np.int32]]] = {name: [] for name in (*SOURCES, "merged")}
    for u in split.test_users.tolist():
        row = int(last_row[u])
        request = request_at(train, u, row, int(train.ts[row]) + 1)
        cands = retrieve(model, request, Snapshot(), int(request.now_ms or 0)).candidates
        for name, items in cands.by_source().items():
            out[name].append(items)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=get_settings().movielens_path)
    parser.add_argument("--requests", type=int, default=300, help="users sampled for per-request timings")
    parser.add_argument("--tune-budget", type=int, default=400, help="budget whose validation recall picks λ, top_k")
    parser.add_argument("--max-dense-items", type=int, default=6000)
    parser.add_argument("--no-union", action="store_true", help="skip fitting the existing sources")
    args = parser.parse_args()
    if not (args.path / "ratings.csv").is_file():
        sys.exit(f"no ml-latest layout at {args.path} (use --path or STREAMREC_MOVIELENS_PATH)")
    result: dict[str, Any] = {"bench": "item_item", "source": str(args.path), "max_dense_items": args.max_dense_items}
    with tempfile.TemporaryDirectory() as tmp:
        import_movielens(args.path, Path(tmp))
        log = load_log(Path(tmp))
    split = make_split(log, "user-last")
    validation = make_split(split.train, split.name)  # what EvalContext.validation() cuts
    n_items = log.catalog.n_items
    interacted = int((np.diff(split.train_items.tocsc().indptr) > 0).sum())
    result["items"] = {"catalogue": n_items, "interacted_in_train": interacted}

    # -- λ and top_k on the validation split ---------------------------------------------------------
    tuning: dict[str, dict[str, float]] = {}
    best = (-1.0, 0.0, 0)
    for lam in EASE_LAMBDAS:
        nb, seconds = timed(lambda lam=lam: fit_item_neighbours(validation.train, n_items, lam=lam, top_k=max(TOP_KS),
                                                                max_dense_items=args.max_dense_items))
        for k in TOP_KS:
            pruned = ItemNeighbours(keep_top(nb.weights, k), nb.fitted, lam, k)
            value = recall_at(validation, source_lists(pruned, validation, args.tune_budget),
                              [args.tune_budget])[args.tune_budget]
            tuning.setdefault(f"{lam:g}", {"fit_s": round(seconds, 2)})[f"top_k={k}"] = round(value, 4)
            if value > best[0]:
                best = (value, lam, k)
    _, lam, top_k = best
    result["validation_recall@budget"] = {"budget": args.tune_budget, "by_lambda": tuning, "lambda": lam,
                                          "top_k": top_k}

    # -- test: the tuned source, the dense limit, full EASE, the existing union ----------------------
    nb, fit_s = timed(lambda: fit_item_neighbours(split.train, n_items, lam=lam, top_k=top_k,
                                                  max_dense_items=args.max_dense_items))
    dense_nb, dense_s = timed(lambda: fit_item_neighbours(split.train, n_items, lam=lam, top_k=top_k,
                                                          max_dense_items=n_items))
    lists = source_lists(nb, split, max(BUDGETS))
    head_share = float(split.train_items[:, nb.fitted].nnz / max(split.train_items.nnz, 1))
    with tempfile.TemporaryDirectory() as tmp:
        npz_bytes = nb.save(Path(tmp)).stat().st_size
    w = nb.weights
    rows: dict[str, dict[int, float]] = {
        f"item_item (λ={lam:g}, k={top_k}, head {len(nb.fitted)})": recall_at(split, lists, BUDGETS),
        f"item_item dense limit (all {len(dense_nb.fitted)} titles)":
            recall_at(split, source_lists(dense_nb, split, max(BUDGETS)), BUDGETS),
        f"full EASE top N (λ={lam:g})": recall_at(split, ease_lists(split, lam, max(BUDGETS)), BUDGETS),
    }
    result["fit"] = {"seconds": round(fit_s, 2), "dense_limit_seconds": round(dense_s, 2),
                     "fitted_items": len(nb.fitted), "train_interactions_in_head": round(head_share, 4),
                     "nnz": int(w.nnz),
                     "csr_bytes": int(w.data.nbytes + w.indices.nbytes + w.indptr.nbytes), "npz_bytes": int(npz_bytes)}
    if not args.no_union:
        union, union_s = timed(lambda: pipeline_union(split))
        recall = candidate_recall(split.positives, union)
        result["existing_sources"] = {"recall": {k: round(v, 4) for k, v in recall.items()},
                                      "mean_merged": round(float(np.mean([len(m) for m in union["merged"]])), 1),
                                      "fit_and_retrieve_s": round(union_s, 1)}
        with_ii = {b: [np.union1d(m, lst[:b]) for m, lst in zip(union["merged"], lists, strict=True)] for b in BUDGETS}
        rows["existing union + item_item"] = {b: candidate_recall(split.positives, {"u": with_ii[b]})["u"]
                                              for b in BUDGETS}
        result["existing_sources"]["union_plus_item_item_size"] = {
            b: round(float(np.mean([len(x) for x in with_ii[b]])), 1) for b in BUDGETS}
    result["test_recall"] = {name: {str(b): round(v, 4) for b, v in r.items()} for name, r in rows.items()}

    # -- per-request cost -----------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    users = rng.choice(split.test_users, size=min(args.requests, split.n_test_users), replace=False).tolist()
    x = split.train_items
    history = {u: x.indices[x.indptr[u]:x.indptr[u + 1]] for u in users}
    ones = {u: np.ones(len(history[u]), np.float32) for u in users}
    excl = {u: np.isin(np.arange(n_items), history[u]) for u in users}
    dense_b = w.toarray()  # only the shape matters to the floors: n x n float32, as a dense EASE B
    x_dense = {u: x[u].toarray().ravel().astype(np.float32) for u in users}
    with threadpool_limits(1, "blas"):
        timings = {
            "item_item source (budget 400)":
                median_us(lambda u: item_item(nb, history[u], ones[u], 400, excl[u]), users),
            "ItemNeighbours.scores": median_us(lambda u: nb.scores(history[u], ones[u]), users),
            "floor: dense x @ B (gemv)": median_us(lambda u: x_dense[u] @ dense_b, users),
            "floor: dense w @ B[history]": median_us(lambda u: ones[u] @ dense_b[history[u]], users),
        }
    result["per_request_us"] = {k: round(v, 1) for k, v in timings.items()}
    result["median_history"] = float(np.median([len(h) for h in history.values()]))

    # -- report ---------------------------------------------------------------------------------------
    print(f"validation recall@{args.tune_budget} (rows λ, columns top_k; max_dense_items {args.max_dense_items})")
    for lam_name, r in tuning.items():
        cells = "  ".join(f"k={k}: {r[f'top_k={k}']:.4f}" for k in TOP_KS)
        print(f"  λ={lam_name:<6} {cells}  fit {r['fit_s']}s")
    print(f"chosen: λ={lam:g}, top_k={top_k}\n")
    print(f"{'test recall of positives':<52}" + "".join(f"{'@' + str(b):>9}" for b in BUDGETS))
    for name, r in rows.items():
        print(f"{name:<52}" + "".join(f"{r[b]:>9.4f}" for b in BUDGETS))
    if "existing_sources" in result:
        e = result["existing_sources"]
        print(f"existing sources alone (mean {e['mean_merged']} merged): "
              + ", ".join(f"{k} {v:.4f}" for k, v in e["recall"].items()))
        sizes = e["union_plus_item_item_size"]
        print("union + item_item mean size: " + ", ".join(f"@{b} {v}" for b, v in sizes.items()))
    f = result["fit"]
    print(f"\nfit {f['seconds']}s (dense limit {f['dense_limit_seconds']}s); head {f['fitted_items']} of {interacted} "
          f"interacted titles holds {f['train_interactions_in_head']:.1%} of training interactions; "
          f"nnz {f['nnz']}, CSR {f['csr_bytes'] / 1e6:.2f} MB, npz {f['npz_bytes'] / 1e6:.2f} MB")
    print(f"\n{'per request (BLAS 1 thread), median history ' + str(result['median_history']):<52}{'median µs':>10}")
    for name, us in result["per_request_us"].items():
        print(f"{name:<52}{us:>10.1f}")
    result.update(python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
