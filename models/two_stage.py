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

The ranker's training requests and offline recommendation (``TwoStageRecommender``, what ``streamrec
eval`` measures) both go through :mod:`models.recommend.pipeline`, the functions the server calls; offline,
the feature state comes from the log replayed up to each request instead of from Redis.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.ann import IndexParams, ItemIndex
from models.candidates import Candidates, Histories, popularity_scores, user_histories
from models.cf import CFModel, fit_cf
from models.config import TwoStageConfig
from models.content import ContentModel, ContentProjection, fit_content, fit_projection
from models.dataset import DEVICES, EventLog
from models.debias import DebiasChoice, choose_debiasing
from models.features.batch import FeatureBatch, FeatureLayout
from models.features.offline import Replay, Request, build_rows, context_at
from models.features.spec import FEATURE_SPEC_VERSION, feature_layout
from models.features.state import ItemStatic
from models.feedback import engagement
from models.item_item import ItemNeighbours, fit_item_neighbours
from models.ranker.scorer import RankerSession
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RankingState, RecommendRequest, Snapshot, extra_dense, rank_and_answer, retrieve
from models.sequence import SequenceScorer, sequence_parity, train_sequence_model
from models.split import make_split

Progress = Callable[[str], None]
@dataclass
class Retrieval:
    """The fitted first stage: CF and content models and the indexes over them."""

    cf: CFModel
    content: ContentModel
    content_vectors: NDArray[np.float32]
    projection: ContentProjection
    item_vectors: NDArray[np.float32]  # CF vectors, content-projected for titles without CF data
    cf_index: ItemIndex  # "ip": user -> items
    neighbour_index: ItemIndex  # "cosine": item -> similar items
    popularity: NDArray[np.float32]
    metrics: dict[str, Any]
    item_neighbours: ItemNeighbours | None = None  # the EASE-style item-to-item source
    sequence: SequenceScorer | None = None  # the next-title model, exported to ONNX


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
    neighbours = None
    if config.item_item_max_items > 0:
        say("item-to-item (EASE) neighbours")
        ease_started = time.perf_counter()
        neighbours = fit_item_neighbours(log, log.catalog.n_items, lam=config.item_item_lambda,
                                         top_k=config.item_item_top_k,
                                         max_dense_items=config.item_item_max_items)
        ease_seconds = time.perf_counter() - ease_started
    sequence, sequence_seconds, parity = None, 0.0, {}
    if config.sequence_epochs > 0:
        say("next-title sequence model")
        seq_started = time.perf_counter()
        histories = user_histories(log)
        trained = train_sequence_model(histories, log.catalog.n_items, dim=config.sequence_dim,
                                       max_len=config.sequence_max_len, epochs=config.sequence_epochs,
                                       seed=config.seed)
        # The TorchScript exporter: 0.5 s against 13 s for the dynamo one on a small model, the same graph
        # shape, and the parity below is checked on every export either way.
        sequence = trained.to_scorer(dynamo=False)
        sequence_seconds = time.perf_counter() - seq_started
        # The export check on the training users' own inputs: what ONNX Runtime serves vs PyTorch.
        parity["sequence_onnx_max_abs_diff"] = sequence_parity(trained, sequence, histories)
    metrics = {"hnsw": recall, "projection": projection.report, "cf_seconds": cf.seconds,
               "item_item_seconds": ease_seconds if neighbours is not None else 0.0,
               "sequence_seconds": sequence_seconds, **parity, "retrieval_seconds": time.perf_counter() - started}
    return Retrieval(cf, content, content_vectors, projection, cf.item_vectors, cf_index, neighbour_index,
                     popularity_scores(log), metrics, neighbours, sequence)


def recommender(retrieval: Retrieval, log: EventLog, config: TwoStageConfig, layout: FeatureLayout,
                ranker: RankerSession | None, histories: Histories | None = None,
                exposure_prices: NDArray[np.float32] | None = None) -> RecommenderModel:
    """The fitted model as the recommend pipeline reads it (what its bundle would load as)."""
    limits = log.user_maturity_limit if len(log.user_maturity_limit) == log.n_users else None
    return RecommenderModel.from_fit(
        log.catalog, log.user_ids, config=config, cf=retrieval.cf, content_model=retrieval.content,
        content=retrieval.content_vectors, popularity=retrieval.popularity, cf_index=retrieval.cf_index,
        neighbour_index=retrieval.neighbour_index, histories=histories or user_histories(log),
        maturity_limit=limits, layout=layout, ranker=ranker, item_neighbours=retrieval.item_neighbours,
        sequence=retrieval.sequence, exposure_price=exposure_prices)


def request_at(log: EventLog, user: int, row: int, ts: int, k: int = 20) -> RecommendRequest:
    """A request of log user ``user`` at ``ts`` in the context of event ``row`` (its device, country, hour)."""
    device, country, hour = int(log.device[row]), int(log.country[row]), int(log.hour[row])  # 0 / 0 / -1: unknown
    return RecommendRequest(
        user_id=log.user_ids[user], k=k, device=DEVICES[device - 1] if device > 0 else None,
        country=log.countries[country - 1] if country > 0 else None, hour=hour if hour >= 0 else None, now_ms=ts)


@dataclass
class _Planned:
    """One request: who, when, in which context, and the merged candidates with their extra columns."""

    user: int
    ts: int
    context_row: int
    candidates: Candidates
    extra: dict[str, NDArray[np.float32]]


def _plan(model: RecommenderModel, log: EventLog, user: int, ts: int, context_row: int) -> _Planned:
    """One ranker training request: the pipeline's candidates and retrieval columns at ``ts``."""
    retrieved = retrieve(model, request_at(log, user, context_row, ts), Snapshot(), ts)
    return _Planned(user, ts, context_row, retrieved.candidates, extra_dense(model, retrieved))


def _rows(log: EventLog, plans: list[_Planned], static: ItemStatic) -> tuple[FeatureBatch, NDArray[np.int64]]:
    """Feature rows of every plan, each from the replayed state strictly before its time."""
    requests = [Request(p.user, p.ts, p.candidates.items.astype(np.int64), context_at(log, p.context_row))
                for p in plans]
    extras = {id(request): plan.extra for request, plan in zip(requests, plans, strict=True)}
    return build_rows(log, requests, static, lambda request: extras[id(request)])


def _labels(log: EventLog, rows: NDArray[np.int64]) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """(items sorted, max engagement) over one user's held-out ``rows``."""
    gain = engagement(log.kind[rows], log.value[rows], log.duration[rows])
    items, inv = np.unique(log.item[rows].astype(np.int32), return_inverse=True)
    best = np.zeros(len(items), np.float32)
    np.maximum.at(best, inv, gain)
    return items, best


def held_out_rows(log: EventLog, held_out: NDArray[np.bool_]) -> dict[int, NDArray[np.int64]]:
    """Per user: their held-out rows, in time order. The user's one ranker request is at the first of them (never
    before the cut: retrieval was fitted on the events before it, so an earlier request would ask it about titles
    it was trained on) and is labelled by all of them."""
    rows = np.flatnonzero(held_out)
    users = log.user[rows].astype(np.int64)
    order = np.argsort(users, kind="stable")  # rows are in time order: stable keeps each user's in time
    rows, users = rows[order], users[order]
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], users, [-1]]))).tolist()
    return {int(users[s]): rows[s:e] for s, e in itertools.pairwise(bounds)}


@dataclass
class TwoStageModel:
    retrieval: Retrieval
    ranker_onnx: bytes
    layout: FeatureLayout
    static: ItemStatic
    config: TwoStageConfig  # as given to the fit (the debiasing it chose is ``debias``)
    metrics: dict[str, Any]
    debias: DebiasChoice  # the popularity correction and exposure cap training chose (models.debias)
    exposure_prices: NDArray[np.float32] | None = None  # models.exposure, learned on the ranker's requests

    @property
    def stage3_config(self) -> TwoStageConfig:
        """``config`` with the chosen debiasing: what the pipeline runs with (the bundle's loader applies the
        same choice, read from the manifest)."""
        return self.config.with_debiasing(self.debias.beta, self.debias.cap)


def fit_two_stage(log: EventLog, config: TwoStageConfig | None = None,
                  progress: Progress | None = None) -> TwoStageModel:
    """Train retrieval and the ranker on ``log`` (see the module docstring for the protocol)."""
    # Lazy: the ranker's training imports torch (the optional `train` extra, seconds to import).
    from models.ranker.export import export_onnx
    from models.ranker.model import torch_scores
    from models.ranker.train import grouped_ndcg, train_ranker

    config = config or TwoStageConfig()
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    inner = make_split(log, "user-last")
    held_out = inner.test_mask
    say("retrieval on the inner training part")
    inner_retrieval = fit_retrieval(inner.train, config, progress)
    histories = user_histories(log)
    points = held_out_rows(log, held_out)
    users = np.array(sorted(points), np.int64)
    rng = np.random.default_rng(config.seed)
    if len(users) > config.rank_users:
        users = np.sort(rng.choice(users, config.rank_users, replace=False))
    asked = [(u, points[u]) for u in users.tolist()]  # one request per user (group g: users[g])
    say(f"candidates for {len(asked)} ranker requests of {len(users)} users")
    static = ItemStatic.from_catalog(log.catalog)
    layout = feature_layout(log.catalog.n_items, static.n_genres)
    inner_model = recommender(inner_retrieval, log, config, layout, None, histories)
    plans = [_plan(inner_model, log, u, int(log.ts[after[0]]), int(after[0])) for u, after in asked]
    say("point-in-time feature rows")
    batch, group = _rows(log, plans, static)
    label = np.zeros(len(batch), np.float32)
    n_positives = 0
    for g, (plan, (_, after)) in enumerate(zip(plans, asked, strict=True)):
        items, gains = _labels(log, after)
        n_positives += len(items)
        sel = np.flatnonzero(group == g)
        pos = np.searchsorted(items, plan.candidates.items)
        found = (pos < len(items)) & (items[np.minimum(pos, len(items) - 1)] == plan.candidates.items) \
            if len(items) else np.zeros(len(sel), bool)
        label[sel[found]] = gains[pos[found]]
    # Early stopping on the requests of held-out users.
    n_valid = max(1, int(len(users) * config.valid_share))
    valid_users = rng.permutation(users)[:n_valid]
    valid_groups = np.flatnonzero(np.isin(np.array([u for u, _ in asked], np.int64), valid_users))
    is_valid = np.isin(group, valid_groups)
    say(f"Wide & Deep on {len(batch):,} rows")
    train_rows, valid_rows = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    model, history = train_ranker(
        batch.take(train_rows), label[train_rows], group[train_rows], layout, epochs=config.ranker_epochs,
        seed=config.seed, loss=config.ranker_loss, negatives_per_group=config.ranker_negatives or None,
        valid=(batch.take(valid_rows), label[valid_rows], group[valid_rows]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, layout, Path(tmp) / "ranker.onnx")
        onnx_bytes = onnx_path.read_bytes()

    # Every row scored once: the validation rows' scores below and every row's for the debiasing further on. The
    # ranker scores row by row, so the validation rows' slice equals scoring them alone (the manifest's metrics
    # came out identical when this replaced a second ONNX pass over them).
    scores = RankerSession(onnx_bytes).score(batch)
    valid_scores = scores[valid_rows]
    parity = float(np.max(np.abs(torch_scores(model, batch.take(valid_rows)).astype(np.float64)
                                 - valid_scores.astype(np.float64)), initial=0.0))
    ranker_metrics = {
        "rows": len(batch), "requests": len(plans), "positive_rows": int((label > 0).sum()),
        "valid_ndcg@10": float(grouped_ndcg(valid_scores, label[valid_rows], group[valid_rows], 10)),
        "valid_ndcg@10_retrieval_order": float(grouped_ndcg(
            batch.dense[valid_rows, layout.dense_names.index("cf_score")], label[valid_rows], group[valid_rows], 10)),
        "best_epoch": history.best_epoch, "seconds": history.seconds,
        "onnx_max_abs_diff": parity,  # the export check on the validation rows (PyTorch vs ONNX Runtime)
    }
    candidate_recall = float((label > 0).sum()) / max(1, n_positives)
    # Stage 3's push against popularity (models.debias): tuned on the held-out requests, or as configured.
    say("popularity correction and exposure caps")
    items = np.concatenate([p.candidates.items for p in plans]).astype(np.int64)
    tuned = config.debias_tolerance is not None
    choice = choose_debiasing(
        scores, items, group, label, is_valid, inner_model.audience_of(items),
        log.catalog.n_items, tolerance=config.debias_tolerance if tuned else 0.0,
        **({} if tuned else {"betas": (config.post.popularity_correction,), "caps": (config.exposure_cap,)}))
    ranker_metrics["debias"] = choice.report(tuned=tuned, tolerance=config.debias_tolerance)
    say("retrieval on the whole log")
    retrieval = fit_retrieval(log, config, progress)
    metrics = {"ranker": ranker_metrics, "inner_candidate_recall": candidate_recall,
               "retrieval": retrieval.metrics, "train_seconds": time.perf_counter() - started,
               "feature_spec_version": FEATURE_SPEC_VERSION}
    return TwoStageModel(retrieval, onnx_bytes, layout, static, config, metrics, choice, choice.prices)


class TwoStageRecommender:
    """The recommend pipeline for many users of one log (offline evaluation): each user is asked just
    after their last event, with the feature state of the log replayed up to that moment."""

    def __init__(self, model: TwoStageModel, log: EventLog) -> None:
        self.model = model
        self.log = log
        self.recommender = recommender(model.retrieval, log, model.stage3_config, model.layout,
                                       RankerSession(model.ranker_onnx), exposure_prices=model.exposure_prices)

    def _requests(self, users: NDArray[np.integer], k: int) -> list[tuple[int, RecommendRequest]]:
        log = self.log
        last_row = np.full(log.n_users, -1, np.int64)
        last_row[log.user] = np.arange(log.n_events)  # later rows overwrite: each user's last event
        end = int(log.ts.max()) + 1
        out = []
        for u in np.asarray(users, np.int64).tolist():
            row = int(last_row[u]) if u < len(last_row) else -1
            ts = int(log.ts[row]) + 1 if row >= 0 else end
            out.append((u, request_at(log, u, max(row, 0), ts, k)))
        return out

    def retrieve_all(self, users: NDArray[np.integer]) -> list[Candidates]:
        """The pipeline's merged candidates of each user (for per-source candidate recall)."""
        model = self.recommender
        return [retrieve(model, request, Snapshot(), int(request.now_ms or 0)).candidates
                for _, request in self._requests(users, 1)]

    def recommend(self, users: NDArray[np.integer], k: int, exclude: Any = None) -> NDArray[np.int32]:
        """Top ``k`` per user from :mod:`models.recommend.pipeline`, as the server answers."""
        model = self.recommender
        requests = self._requests(users, k)
        replay = Replay(self.log, model.static)
        out = np.full((len(requests), k), -1, np.int32)
        for g in np.argsort([int(r.now_ms or 0) for _, r in requests], kind="stable").tolist():
            user, request = requests[g]
            now = int(request.now_ms or 0)
            replay.advance(now)  # the state of every event before the request, nothing after
            retrieved = retrieve(model, request, Snapshot(), now)
            rows = retrieved.candidates.items.astype(np.int64)
            state = RankingState(replay.store.read_user(user), replay.store.read_items(rows, now),
                                 model.static.rows(rows))
            picks = rank_and_answer(model, request, retrieved, state, now, model.config.post).answer.rows[:k]
            out[g, : len(picks)] = picks
        return out
