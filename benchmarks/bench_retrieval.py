"""Retrieval on ml-latest-small: CF quality and cost, content model, projection, HNSW, candidate sources.

    python benchmarks/bench_retrieval.py [--path ../shared/data/ml-latest-small] [--requests 300]

- CF: ALS (the default) vs BPR by pure MF retrieval under a user-last 80/20 split: for each user,
  the last 20% of their ratings (by time) are held out; positives are held-out items with a
  training interaction (MF cannot retrieve the others); the user's training items are excluded
  from the ranking. NDCG@10 (binary gain) and recall@20 (= hits / positives), averaged over
  users with a positive; popularity as the floor. Fit time on 1 and 2 threads, and whether two
  fits with the same seed are identical.
- Content model fit time; the content → CF projection's held-out quality (cosine to the true CF
  vector; recall@20 of the item's true CF neighbours found with the projected vector) beside a
  random projection and chance.
- HNSW build time and recall@10/@100 against exact search (item and user queries).
- Per-request time of each candidate source (median µs over users) beside the floor of one raw
  ``hnswlib.knn_query`` with the same k, BLAS held to one thread as on a server sharing cores.
- Per-source candidate recall of held-out positives (what the eval team measures offline).
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
from models.candidates import (
    SOURCES,
    CandidateConfig,
    Histories,
    ann_cf,
    because_you_watched,
    byw_per_seed,
    content_based,
    new_releases,
    popular,
    popularity_scores,
    recent_positives,
    user_content_profile,
    user_histories,
)
from models.cf import CFModel, fit_cf
from models.config import TwoStageConfig
from models.content import fit_content, fit_projection
from models.dataset import EventLog, load_log
from models.features.spec import feature_layout
from models.features.state import ItemStatic
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RecommendRequest, Snapshot, retrieve
from models.split import make_split
from models.two_stage import Retrieval, recommender
from tools.bench.timing import median_us
from tools.datasets.movielens import import_movielens


def pipeline_model(log: EventLog, cf: CFModel, content: Any, projection: Any, cf_index: ItemIndex,
                   neighbour_index: ItemIndex, popularity: NDArray[np.float32], config: CandidateConfig
                   ) -> RecommenderModel:
    """These parts as the recommend pipeline reads them (no ranker: retrieval only)."""
    retrieval = Retrieval(cf, content, content.vectors, projection, cf.item_vectors, cf_index, neighbour_index,
                          popularity, {})
    layout = feature_layout(log.catalog.n_items, ItemStatic.from_catalog(log.catalog).n_genres)
    return recommender(retrieval, log, TwoStageConfig(dim=cf.dim, candidates=config), layout, None)


def user_last_split(log: EventLog) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Row masks of the evaluation protocol's user-last split: training rows, held-out item rows."""
    split = make_split(log, "user-last")
    return split.train_mask, split.test_mask


def held_out_positives(train_h: Histories, test_h: Histories, known: NDArray[np.bool_]) -> list[NDArray[np.int64]]:
    out = []
    for u in range(len(train_h.ptr) - 1):
        items, weights, _ = test_h.of(u)
        pos = np.setdiff1d(items[weights > 0], train_h.of(u)[0])
        out.append(pos[known[pos]])
    return out


def mf_metrics(score_of: Callable[[int], NDArray[np.floating]], train_h: Histories,
               positives: list[NDArray[np.int64]]) -> dict[str, float]:
    disc = 1.0 / np.log2(np.arange(2, 22))
    ndcg, recall = [], []
    for u, pos in enumerate(positives):
        if len(pos) == 0:
            continue
        s = np.asarray(score_of(u), np.float64).copy()
        s[train_h.of(u)[0]] = -np.inf
        top = np.argpartition(-s, 20)[:20]
        top = top[np.argsort(-s[top], kind="stable")]
        hit = np.isin(top, pos)
        recall.append(hit.sum() / len(pos))
        ndcg.append((hit[:10] * disc[:10]).sum() / disc[: min(len(pos), 10)].sum())
    return {"ndcg@10": round(float(np.mean(ndcg)), 4), "recall@20": round(float(np.mean(recall)), 4),
            "users": len(ndcg)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=get_settings().movielens_path)
    parser.add_argument("--requests", type=int, default=300, help="users sampled for per-request timings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.path / "ratings.csv").is_file():
        sys.exit(f"no ml-latest layout at {args.path} (use --path or STREAMREC_MOVIELENS_PATH)")
    result: dict[str, Any] = {"bench": "retrieval", "source": str(args.path)}

    with tempfile.TemporaryDirectory() as tmp:
        import_movielens(args.path, Path(tmp))
        log = load_log(Path(tmp))
    train, test = user_last_split(log)
    train_log = log.select(train)
    train_h, test_h = user_histories(train_log), user_histories(log.select(test))

    # -- CF: ALS vs BPR on the split ----------------------------------------------------------------
    rows = train_log.item_events()
    known = np.bincount(train_log.item[rows], minlength=log.catalog.n_items) > 0
    positives = held_out_positives(train_h, test_h, known)
    pop = popularity_scores(train_log, half_life_days=None)
    cf_rows: dict[str, dict[str, Any]] = {"popularity": mf_metrics(lambda u: pop, train_h, positives)}
    models: dict[str, CFModel] = {}
    for name, kwargs in (("als", {"algorithm": "als"}), ("bpr", {"algorithm": "bpr"})):
        model, seconds = timed(lambda kw=kwargs: fit_cf(train_log, seed=args.seed, **kw))  # type: ignore[misc]
        models[name] = model
        cf_rows[name] = {**mf_metrics(lambda u, m=model: m.item_vectors @ m.user_vectors[u], train_h, positives),
                         "fit_s": round(seconds, 3)}
    result["cf_split"] = cf_rows

    # -- CF on the whole log: the cost of one thread vs two, and determinism ------------------------
    cf1, t1 = timed(lambda: fit_cf(log, seed=args.seed, num_threads=1))
    cf1b, _ = timed(lambda: fit_cf(log, seed=args.seed, num_threads=1))
    cf2, t2 = timed(lambda: fit_cf(log, seed=args.seed, num_threads=2))
    cf2b, _ = timed(lambda: fit_cf(log, seed=args.seed, num_threads=2))
    result["cf_fit"] = {
        "threads1_s": round(t1, 3), "threads2_s": round(t2, 3),
        "deterministic_1_thread": bool(np.array_equal(cf1.item_vectors, cf1b.item_vectors)),
        "deterministic_2_threads": bool(np.array_equal(cf2.item_vectors, cf2b.item_vectors)),
        "dim": cf1.dim, "alpha": cf1.alpha, "reg": cf1.reg,
    }
    cf = cf1

    # -- content model and projection ---------------------------------------------------------------
    content, content_s = timed(lambda: fit_content(log.catalog, seed=args.seed))
    proj, proj_s = timed(lambda: fit_projection(content.vectors, cf.item_vectors, cf.trained_items, seed=args.seed))
    counts = np.bincount(log.item[log.item_events()], minlength=log.catalog.n_items)
    proj5 = fit_projection(content.vectors, cf.item_vectors, cf.trained_items & (counts >= 5), seed=args.seed)
    result["content"] = {"fit_s": round(content_s, 3), "vocab": len(content.vocab), "dim": content.dim}
    result["projection"] = {"fit_s": round(proj_s, 3), **{k: round(v, 4) for k, v in proj.report.items()}}
    result["projection_items_ge5"] = {k: round(v, 4) for k, v in proj5.report.items()}

    # -- HNSW -----------------------------------------------------------------------------------------
    ip_index, ip_s = timed(lambda: ItemIndex.build(cf.item_vectors, IndexParams(space="ip")))
    cos_index, cos_s = timed(lambda: ItemIndex.build(cf.item_vectors, IndexParams(space="cosine")))
    result["hnsw"] = {
        "ip": {"build_s": round(ip_s, 3), **ip_index.measure_recall(cf.user_vectors, seed=args.seed)},
        "cosine": {"build_s": round(cos_s, 3), **cos_index.measure_recall(None, seed=args.seed)},
    }

    # -- per-request timings --------------------------------------------------------------------------
    # ml-latest-small's "release" is 1 January of the film's year: a one-year window finds some.
    config = CandidateConfig(new_window_days=365.0)
    now = int(log.ts.max())
    history = user_histories(log)
    popularity = popularity_scores(log, now, half_life_days=30.0)
    release = log.catalog.release_ts
    # The production path: the recommend pipeline over a model of these parts (what a bundle of them loads as).
    model = pipeline_model(log, cf, content, proj, ip_index, cos_index, popularity, config)
    rng = np.random.default_rng(args.seed)
    users = rng.choice(np.flatnonzero(cf.trained_users), size=min(args.requests, int(cf.trained_users.sum())),
                       replace=False)
    requests = {u: RecommendRequest(log.user_ids[u]) for u in users.tolist()}
    excl = {u: model.exclusion(history.of(u)[0]) for u in users.tolist()}
    seeds = {u: recent_positives(*history.of(u), max_items=config.byw_seeds)[0] for u in users.tolist()}
    raw = ip_index._index  # the floor: hnswlib itself, no wrapper
    raw_cos = cos_index._index
    timings: dict[str, dict[str, float]] = {}
    with threadpool_limits(1, "blas"):
        def row(name: str, fn: Callable[[int], Any], floor: Callable[[int], Any] | None = None, k: int = 0) -> None:
            timings[name] = {"median_us": round(median_us(fn, users), 1), "k": k}
            if floor is not None:
                timings[name]["knn_query_floor_us"] = round(median_us(floor, users), 1)

        uv = cf.user_vectors
        row("ann_cf", lambda u: ann_cf(ip_index, uv[u], config.ann_cf, excl[u]),
            lambda u: raw.knn_query(uv[u], k=config.ann_cf, num_threads=1), config.ann_cf)
        row("content_profile", lambda u: user_content_profile(content.vectors, *history.of(u), now))
        profiles = {u: user_content_profile(content.vectors, *history.of(u), now) for u in users.tolist()}
        row("content", lambda u: content_based(content.vectors, profiles[u], config.content, excl[u]),
            lambda u: raw_cos.knn_query(profiles[u], k=config.content, num_threads=1), config.content)
        row("popular", lambda u: popular(popularity, config.popular, exclude=excl[u]),
            lambda u: raw.knn_query(uv[u], k=config.popular, num_threads=1), config.popular)
        row("new_releases",
            lambda u: new_releases(release, now, config.new_releases, config.new_window_days, popularity, excl[u]),
            lambda u: raw.knn_query(uv[u], k=config.new_releases, num_threads=1), config.new_releases)
        # Floor: the same batched query the source sends (one row per seed, k = 2·per_seed + 1 with
        # the over-fetch for watched titles), without the merge by max similarity.
        def byw_floor(u: int) -> Any:
            per = byw_per_seed(config.byw, len(seeds[u]))
            return raw_cos.knn_query(cos_index.vectors[seeds[u]], k=2 * per + 1, num_threads=1)

        row("byw", lambda u: because_you_watched(cos_index, seeds[u], config.byw, exclude=excl[u]), byw_floor,
            config.byw)
        row("retrieve_all", lambda u: retrieve(model, requests[u], Snapshot(), now))
        row("fold_in", lambda u: cf.fold_in(*history.of(u)[:2]))
        row("exclusion_mask", lambda u: model.exclusion(history.of(u)[0]))
    result["per_request"] = timings
    result["candidates_per_request"] = round(float(np.mean([
        len(retrieve(model, requests[u], Snapshot(), now).candidates) for u in users[:50].tolist()])), 1)

    # -- per-source candidate recall on the split -------------------------------------------------------
    split_cf = models["als"]
    split_now = int(train_log.ts.max())
    split_model = pipeline_model(
        train_log, split_cf, content, proj, ItemIndex.build(split_cf.item_vectors),
        ItemIndex.build(split_cf.item_vectors, IndexParams(space="cosine")),
        popularity_scores(train_log, split_now, half_life_days=30.0), config)
    per_user: dict[str, list[NDArray[np.int32]]] = {name: [] for name in (*SOURCES, "merged")}
    for u in range(log.n_users):
        cands = retrieve(split_model, RecommendRequest(log.user_ids[u]), Snapshot(), split_now).candidates
        for name, items in cands.by_source().items():
            per_user[name].append(items)
    recall: dict[str, dict[str, float]] = {}
    for name, lists in per_user.items():
        r = [np.isin(pos, lists[u]).mean() for u, pos in enumerate(positives) if len(pos)]
        recall[name] = {"recall": round(float(np.mean(r)), 4),
                        "mean_size": round(float(np.mean([len(x) for x in lists])), 1)}
    result["candidate_recall"] = recall

    # -- report -----------------------------------------------------------------------------------------
    print(f"{'MF retrieval (user-last 80/20)':<34}{'NDCG@10':>9}{'recall@20':>11}{'fit s':>8}")
    for name, r in cf_rows.items():
        print(f"{name:<34}{r['ndcg@10']:>9.4f}{r['recall@20']:>11.4f}{r.get('fit_s', 0.0):>8.2f}")
    f = result["cf_fit"]
    print(f"\nALS full log: 1 thread {f['threads1_s']:.2f}s, 2 threads {f['threads2_s']:.2f}s; "
          f"deterministic 1t={f['deterministic_1_thread']} 2t={f['deterministic_2_threads']}")
    print(f"content model {content_s:.2f}s (vocab {len(content.vocab)}), projection {proj_s:.2f}s "
          f"(lambda {proj.lam:g})")
    for label, rep in (("all trained items", proj.report), ("items with >= 5 ratings", proj5.report)):
        print(f"projection, {label}: cosine {rep['cosine']:.3f} (random projection "
              f"{rep['cosine_random_projection']:.3f}); recall@20 {rep['recall@20']:.4f} (random projection "
              f"{rep['recall@20_random_projection']:.4f}, chance {rep['recall@20_random']:.4f})")
    for space, h in result["hnsw"].items():
        print(f"HNSW {space:<6} build {h['build_s']:.2f}s  recall@10 {h['recall@10']:.4f}  "
              f"recall@100 {h['recall@100']:.4f}  (M={h['M']}, ef={h['ef']}, {h['queries']} queries)")
    print(f"\n{'per request (BLAS 1 thread)':<28}{'median µs':>11}{'k':>6}{'knn_query floor µs':>20}")
    for name, t in timings.items():
        floor = f"{t['knn_query_floor_us']:>20.1f}" if "knn_query_floor_us" in t else f"{'':>20}"
        print(f"{name:<28}{t['median_us']:>11.1f}{t['k'] or '':>6}{floor}")
    print(f"\n{'candidate recall (split)':<28}{'recall':>8}{'size':>8}")
    for name, r in recall.items():
        print(f"{name:<28}{r['recall']:>8.4f}{r['mean_size']:>8.1f}")
    result.update(python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
