"""Fit the whole two-stage model from an event log, and recommend with it offline.

Training (``fit_two_stage``):
1. An inner user-last split of the log: the earlier 80% of each user's item events fit the
   retrieval models, the later 20% label the ranker's examples. The ranker so learns to order what
   retrieval returns for a user *at the moment* of the split, from features built point-in-time
   by the shared feature code (``models.features``), against what the user did next.
2. The label of a (request, candidate) is :func:`models.feedback.engagement`, maxed over the
   user's held-out events with that title (0 when untouched).
3. Retrieval (CF, content, projection, HNSW, popularity) is then refitted on the whole log for
   the bundle, and the ranker trained in step 1 is kept.

Recommending offline (``TwoStageRecommender``) runs the same stages as the server: candidates
from every source, feature rows for them, ONNX Runtime scores, post-processing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.ann import IndexParams, ItemIndex
from models.candidates import (
    CandidateConfig,
    Candidates,
    Histories,
    Retriever,
    popularity_scores,
    user_content_profile,
    user_histories,
)
from models.cf import CFModel, fit_cf
from models.content import ContentModel, ContentProjection, fit_content, fit_projection
from models.dataset import EventLog
from models.features.batch import FeatureBatch, FeatureLayout
from models.features.offline import Request, build_rows, context_at
from models.features.spec import FEATURE_SPEC_VERSION, feature_layout
from models.features.state import ItemStatic
from models.feedback import engagement
from models.postprocess import PostConfig, apply_rules, mmr

Progress = Callable[[str], None]
SOURCE_COLUMNS = {"ann_cf": "src_ann", "content": "src_content", "popular": "src_popular",
                  "new_releases": "src_new", "byw": "src_byw"}


@dataclass(frozen=True)
class TwoStageConfig:
    dim: int = 64
    seed: int = 0
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rank_users: int = 2000  # users whose split point becomes a ranker training request (at most)
    valid_share: float = 0.15  # of those requests, held out for early stopping
    ranker_epochs: int = 12
    ranker_loss: str = "listwise"
    post: PostConfig = field(default_factory=PostConfig)


@dataclass
class Retrieval:
    """The fitted first stage: CF and content models and the indexes over them."""

    cf: CFModel
    content: ContentModel
    content_vectors: NDArray[np.float32]
    projection: ContentProjection
    item_vectors: NDArray[np.float32]  # CF vectors, content-projected for titles without CF data
    retriever: Retriever
    popularity: NDArray[np.float32]
    metrics: dict[str, Any]


def fit_retrieval(log: EventLog, config: TwoStageConfig, progress: Progress | None = None) -> Retrieval:
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    say("collaborative filtering")
    cf = fit_cf(log, dim=config.dim, seed=config.seed)
    say("content vectors")
    content = fit_content(log.catalog, dim=config.dim, seed=config.seed)
    content_vectors = content.embed_catalog(log.catalog)
    projection = fit_projection(content_vectors, cf.item_vectors, cf.trained_items, seed=config.seed)
    cold = np.flatnonzero(~cf.trained_items)
    if len(cold):
        cf = cf.with_item_vectors(cold, projection.project(content_vectors[cold]))
    say("HNSW indexes")
    cf_index = ItemIndex.build(cf.item_vectors, IndexParams(space="ip", seed=config.seed))
    neighbour_index = ItemIndex.build(cf.item_vectors, IndexParams(space="cosine", seed=config.seed))
    recall = cf_index.measure_recall(cf.user_vectors[cf.trained_users], n_queries=500)
    popularity = popularity_scores(log)
    available = log.catalog.available.copy()
    release = np.maximum(log.catalog.release_ts, log.catalog.first_seen_ts)
    retriever = Retriever(config=config.candidates, cf_index=cf_index, neighbour_index=neighbour_index,
                          content=content_vectors, popularity=popularity, release_ts=release, available=available,
                          n_items=log.catalog.n_items)
    metrics = {"hnsw": recall, "projection": projection.report, "cf_seconds": cf.seconds,
               "retrieval_seconds": time.perf_counter() - started}
    return Retrieval(cf, content, content_vectors, projection, cf.item_vectors, retriever, popularity, metrics)


def _extra_dense(retrieval: Retrieval, cands: Candidates, user_vector: NDArray[np.float32] | None,
                 profile: NDArray[np.float32] | None) -> dict[str, NDArray[np.float32]]:
    items = cands.items.astype(np.int64)
    out: dict[str, NDArray[np.float32]] = {}
    out["cf_score"] = (retrieval.item_vectors[items] @ user_vector).astype(np.float32) if user_vector is not None \
        else np.zeros(len(items), np.float32)
    out["content_score"] = (retrieval.content_vectors[items] @ profile).astype(np.float32) if profile is not None \
        else np.zeros(len(items), np.float32)
    filled = cands.score_matrix(0.0)
    for col, name in enumerate(cands.source_names):
        out[SOURCE_COLUMNS[name]] = filled[:, col]
    return out


@dataclass
class _Planned:
    """One request: who, when, in which context, and the merged candidates with their extra columns."""

    user: int
    ts: int
    context_row: int
    candidates: Candidates
    extra: dict[str, NDArray[np.float32]]


def _plan(retrieval: Retrieval, histories: Histories, log: EventLog, user: int, ts: int, context_row: int,
          user_vector: NDArray[np.float32] | None) -> _Planned:
    items, weights, hts = histories.of(user)
    before = hts < ts  # point in time: only what the user did before the request
    items, weights, hts = items[before], weights[before], hts[before]
    exclude = retrieval.retriever.exclusion(items)
    cands = retrieval.retriever.generate(user_vector, items, weights, hts, ts, exclude=exclude)
    cfg = retrieval.retriever.config
    profile = user_content_profile(retrieval.content_vectors, items, weights, hts, ts,
                                   max_items=cfg.profile_items, half_life_days=cfg.profile_half_life_days)
    return _Planned(user, ts, context_row, cands, _extra_dense(retrieval, cands, user_vector, profile))


def _rows(log: EventLog, plans: list[_Planned], static: ItemStatic) -> tuple[FeatureBatch, NDArray[np.int64]]:
    """Feature rows of every plan, each from the replayed state strictly before its time."""
    requests = [Request(p.user, p.ts, p.candidates.items.astype(np.int64), context_at(log, p.context_row))
                for p in plans]
    extras = {id(request): plan.extra for request, plan in zip(requests, plans, strict=True)}
    return build_rows(log, requests, static, lambda request: extras[id(request)])


def _labels(log: EventLog, held_out: NDArray[np.bool_]) -> dict[int, tuple[NDArray[np.int32], NDArray[np.float32]]]:
    """Per user: (items sorted, max engagement) over the held-out rows."""
    rows = np.flatnonzero(held_out)
    gain = engagement(log.kind[rows], log.value[rows], log.duration[rows])
    key = log.user[rows].astype(np.int64) * log.catalog.n_items + log.item[rows]
    uniq, inv = np.unique(key, return_inverse=True)
    best = np.zeros(len(uniq), np.float32)
    np.maximum.at(best, inv, gain)
    users = (uniq // log.catalog.n_items).astype(np.int64)
    items = (uniq % log.catalog.n_items).astype(np.int32)
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], users, [-1]]))).tolist()
    return {int(users[s]): (items[s:e], best[s:e]) for s, e in itertools.pairwise(bounds)}


@dataclass
class TwoStageModel:
    retrieval: Retrieval
    ranker_onnx: bytes
    layout: FeatureLayout
    static: ItemStatic
    config: TwoStageConfig
    metrics: dict[str, Any]
    _session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            from models.ranker.scorer import RankerSession

            self._session = RankerSession(self.ranker_onnx)
        return self._session


def fit_two_stage(log: EventLog, config: TwoStageConfig | None = None,
                  progress: Progress | None = None) -> TwoStageModel:
    """Train retrieval and the ranker on ``log`` (see the module docstring for the protocol)."""
    from models.eval.split import make_split
    from models.ranker import export_onnx, train_ranker
    from models.ranker.train import grouped_ndcg

    config = config or TwoStageConfig()
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    inner = make_split(log, "user-last")
    held_out = inner.test_mask
    labels = _labels(log, held_out)
    say("retrieval on the inner training part")
    inner_retrieval = fit_retrieval(inner.train, config, progress)
    histories = user_histories(log)
    first_held = {}
    rows = np.flatnonzero(held_out)
    for row in rows[::-1].tolist():  # last write wins: the earliest held-out row of each user
        first_held[int(log.user[row])] = row
    users = np.array(sorted(first_held), np.int64)
    rng = np.random.default_rng(config.seed)
    if len(users) > config.rank_users:
        users = np.sort(rng.choice(users, config.rank_users, replace=False))
    say(f"candidates for {len(users)} ranker requests")
    plans = []
    for u in users.tolist():
        row = first_held[u]
        vec = inner_retrieval.cf.user_vectors[u] if inner_retrieval.cf.trained_users[u] else None
        plans.append(_plan(inner_retrieval, histories, log, u, int(log.ts[row]), row, vec))
    say("point-in-time feature rows")
    static = ItemStatic.from_catalog(log.catalog)
    batch, group = _rows(log, plans, static)
    label = np.zeros(len(batch), np.float32)
    for g, plan in enumerate(plans):
        items, gains = labels.get(plan.user, (np.zeros(0, np.int32), np.zeros(0, np.float32)))
        sel = np.flatnonzero(group == g)
        pos = np.searchsorted(items, plan.candidates.items)
        found = (pos < len(items)) & (items[np.minimum(pos, len(items) - 1)] == plan.candidates.items) \
            if len(items) else np.zeros(len(sel), bool)
        label[sel[found]] = gains[pos[found]]
    n_valid = max(1, int(len(plans) * config.valid_share))
    valid_groups = rng.permutation(len(plans))[:n_valid]
    is_valid = np.isin(group, valid_groups)
    layout = feature_layout(log.catalog.n_items, static.n_genres)
    say(f"Wide & Deep on {len(batch):,} rows")
    train_rows, valid_rows = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    model, history = train_ranker(
        batch.take(train_rows), label[train_rows], group[train_rows], layout, epochs=config.ranker_epochs,
        seed=config.seed, loss=config.ranker_loss,
        valid=(batch.take(valid_rows), label[valid_rows], group[valid_rows]),
    )
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, layout, Path(tmp) / "ranker.onnx")
        onnx_bytes = onnx_path.read_bytes()
    from models.ranker.scorer import RankerSession

    valid_scores = RankerSession(onnx_bytes).score(batch.take(valid_rows))
    ranker_metrics = {
        "rows": len(batch), "requests": len(plans), "positive_rows": int((label > 0).sum()),
        "valid_ndcg@10": float(grouped_ndcg(valid_scores, label[valid_rows], group[valid_rows], 10)),
        "valid_ndcg@10_retrieval_order": float(grouped_ndcg(
            batch.dense[valid_rows, layout.dense_names.index("cf_score")], label[valid_rows], group[valid_rows], 10)),
        "best_epoch": history.best_epoch, "seconds": history.seconds,
    }
    candidate_recall = float((label > 0).sum()) / max(1, sum(len(labels.get(p.user, ((), ()))[0]) for p in plans))
    say("retrieval on the whole log")
    retrieval = fit_retrieval(log, config, progress)
    metrics = {"ranker": ranker_metrics, "inner_candidate_recall": candidate_recall,
               "retrieval": retrieval.metrics, "train_seconds": time.perf_counter() - started,
               "feature_spec_version": FEATURE_SPEC_VERSION}
    return TwoStageModel(retrieval, onnx_bytes, layout, static, config, metrics)


class TwoStageRecommender:
    """The full pipeline for many users of one log, for offline evaluation."""

    def __init__(self, model: TwoStageModel, log: EventLog) -> None:
        self.model = model
        self.log = log
        self.histories = user_histories(log)

    def recommend(self, users: NDArray[np.integer], k: int, exclude: Any = None) -> NDArray[np.int32]:
        """Top ``k`` per user, asked just after the user's last event of the log."""
        model, log = self.model, self.log
        last_row = np.full(log.n_users, -1, np.int64)
        last_row[log.user] = np.arange(log.n_events)  # later rows overwrite: each user's last event
        plans = []
        for u in np.asarray(users, np.int64).tolist():
            row = int(last_row[u]) if u < len(last_row) else -1
            ts = int(log.ts[row]) + 1 if row >= 0 else int(log.ts.max()) + 1
            cf = model.retrieval.cf
            vec = cf.user_vectors[u] if u < len(cf.trained_users) and cf.trained_users[u] else None
            plans.append(_plan(model.retrieval, self.histories, log, u, ts, max(row, 0), vec))
        batch, group = _rows(log, plans, model.static)
        scores = model.session.score(batch) if len(batch) else np.zeros(0, np.float32)
        out = np.full((len(plans), k), -1, np.int32)
        catalog = log.catalog
        fallback = np.argsort(-model.retrieval.popularity, kind="stable").astype(np.int32)
        for g, plan in enumerate(plans):
            sel = np.flatnonzero(group == g)
            items = plan.candidates.items
            adjusted = apply_rules(scores[sel], is_original=catalog.is_original[items],
                                   release_ts=catalog.release_ts[items], now=plan.ts, config=model.config.post)
            picks = items[mmr(adjusted, catalog.genre_matrix[items], k, model.config.post.diversity,
                              model.config.post.mmr_pool)]
            if len(picks) < k:  # a thin candidate set is topped up with popular unseen titles
                seen = set(self.histories.of(plan.user)[0].tolist()) | set(picks.tolist())
                extra = [i for i in fallback[: k * 4 + len(seen)].tolist() if i not in seen][: k - len(picks)]
                picks = np.concatenate([picks, np.array(extra, np.int32)])
            out[g, : len(picks)] = picks
        return out
