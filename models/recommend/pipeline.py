"""THE recommend pipeline: candidates -> extra dense columns -> feature rows -> rank -> rules and
diversity -> top-up. The server (:mod:`serving.service`), ``streamrec eval`` and ``eval-stream`` all run
these functions; none does I/O. The caller hands in the model and a :class:`Snapshot` of the online
state, then (after retrieval) the candidates' feature state, from Redis or from a replayed log.

Everything is numpy over the candidate arrays; loops run over the sources (5), the context scopes
(<= 4) or the K picks, never over the ~1,000 candidates. The sources run one after another: each is
in-memory numpy or one hnswlib query, and threads would only add hand-offs on a small machine.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.candidates import (
    NO_SEED,
    CandidateConfig,
    Candidates,
    SourceResult,
    ann_cf,
    because_you_watched,
    content_based,
    merge_candidates,
    most_recent,
    new_releases,
    popular_scores,
    recent_positives,
    top_k,
    user_content_profile,
)
from models.dataset import DEVICE_CODE, MATURITY_ORDER
from models.features.batch import FeatureBatch
from models.features.hashing import hash_str, hash_strs
from models.features.rows import RequestContext, feature_batch
from models.features.spec import country_code
from models.features.state import ITEM_COUNT_NAMES, ItemStates, StaticRows, UserStates
from models.item_item import top_positive
from models.postprocess import PostConfig, apply_rules, mmr
from models.recommend.model import RecommenderModel
from models.sequence import sequence_scores

DAY_MS: Final = 86_400_000
# The ranker's dense column of each retrieval source's score.
SOURCE_COLUMNS: Final[dict[str, str]] = {
    "ann_cf": "src_ann", "content": "src_content", "popular": "src_popular", "new_releases": "src_new",
    "byw": "src_byw", "item_item": "src_item_item", "sequence": "src_sequence",
}
# The names the API shows for the retriever's sources.
PUBLIC_SOURCE: Final[dict[str, str]] = {
    "ann_cf": "collaborative", "content": "content", "popular": "trending", "new_releases": "new_releases",
    "byw": "because_you_watched", "item_item": "similar_to_history", "sequence": "watch_next",
}
TOP_UP_REASON: Final = "Popular on streamrec"
BYW_REASON_PRIVATE: Final = "Because of what you watched recently"  # PostConfig.reason_titles off


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """One request, as the HTTP handler validated it, all the way to the pipeline."""

    user_id: str
    request_id: str = ""
    k: int = 20  # 1..200, validated by the HTTP layer
    device: str | None = None  # as in schemas (tv, mobile, web, tablet, ...)
    country: str | None = None  # ISO 3166 alpha-2
    hour: int | None = None  # local hour 0..23
    maturity_limit: str | None = None  # the profile's limit (MATURITY_ORDER); None: the bundle's, else none
    # The request's time (epoch ms); None: the wall clock. Replays and backtests of a recorded log ask
    # "as of" the log's time, so decays, recency and the new-release window read the state as the
    # workers wrote it (event time), not months later.
    now_ms: int | None = None

    def context(self) -> RequestContext:
        """The features' codes of the request's context (each unknown part: the user's last known one)."""
        return RequestContext(device=DEVICE_CODE.get(self.device or "", 0), country=country_code(self.country),
                              hour=self.hour if self.hour is not None else -1)

    def maturity_position(self) -> int | None:
        return MATURITY_ORDER.index(self.maturity_limit) if self.maturity_limit in MATURITY_ORDER else None


class RankedIds:
    """A list of ``(item_id, score)`` shared by many requests (a trending list, new releases).

    Its dense form over a model's item rows is built once per list and model state and kept here, so
    requests that share the list (the reader hands out the same object until it refreshes) share it.
    """

    __slots__ = ("_dense", "_known", "_popular", "pairs")

    def __init__(self, pairs: Sequence[tuple[str, float]]) -> None:
        self.pairs = list(pairs)
        self._dense: tuple[tuple[str, int, int], tuple[NDArray[np.float32], NDArray[np.int64]]] | None = None
        self._known: tuple[tuple[str, int, int], NDArray[np.int64], list[Any], dict[Any, NDArray[Any]]] | None = None
        # On the global list: the popular source's scores per set of context lists (see popular_source_scores).
        self._popular: dict[tuple[Any, ...], tuple[tuple[RankedIds | None, ...], NDArray[np.float32],
                                                    NDArray[np.int64]]] = {}

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def known(self, model: RecommenderModel, dtype: Any) -> tuple[NDArray[np.int64], NDArray[Any]]:
        """(item rows, values as ``dtype``) of the pairs whose id ``model`` knows, in list order; kept per
        model state (and dtype), so requests sharing the list convert it once."""
        items = model.items
        key = (model.version, items.generation, len(items))
        hit = self._known
        if hit is None or hit[0] != key:
            index = items.index
            known = [(index[i], s) for i, s in self.pairs if i in index]
            hit = self._known = (key, np.array([r for r, _ in known], np.int64), [s for _, s in known], {})
        arrays = hit[3]
        if dtype not in arrays:
            arrays[dtype] = np.array(hit[2], dtype)
        return hit[1], arrays[dtype]

    def dense(self, model: RecommenderModel) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """(score per item row, max over duplicates; the rows present), for ``model``'s current rows."""
        items = model.items
        key = (model.version, items.generation, len(items))
        hit = self._dense
        if hit is not None and hit[0] == key:
            return hit[1]
        rows, values = self.known(model, np.float32)
        out = np.zeros(len(items), np.float32)
        if len(rows):
            np.maximum.at(out, rows, values)
        self._dense = (key, (out, rows))
        return out, rows


@dataclass(slots=True)
class Snapshot:
    """The online state one request sees: read from Redis by the server, or built from a replayed log."""

    vector: NDArray[np.float32] | None = None  # the online user vector (None: the bundle's)
    recent: Sequence[tuple[str, int]] = ()  # recently engaged titles (id, ts), positive by construction
    trending: Mapping[str, RankedIds] = field(default_factory=dict)  # "all", "country", "device", "hour"
    new_releases: RankedIds | None = None  # (id, release ts); None or empty: the model's own arrays


@dataclass(slots=True)
class RankingState:
    """The feature state ranking reads (after retrieval): the user's, and the candidates' (aligned)."""

    user: UserStates | None  # one row; None: a new user
    items: ItemStates
    static: StaticRows


@dataclass(slots=True)
class UserContext:
    """What retrieval knows about the user: the bundle's history plus recent titles, and a vector."""

    history_items: NDArray[np.int32]
    history_weights: NDArray[np.float32]
    history_ts: NDArray[np.int64]
    vector: NDArray[np.float32] | None
    maturity_limit: int | None  # index into MATURITY_ORDER; None: no limit


@dataclass(slots=True)
class Retrieved:
    """The merged candidates of one request and what ranking and the reasons need of retrieval."""

    candidates: Candidates
    profile: NDArray[np.float32]
    user: UserContext
    country_trending: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))  # rows
    # The item-to-item (EASE) and next-title scores of every title of the model (None: no such model,
    # or nothing in the history it knows): sources and ranking features both read them.
    item_item_scores: NDArray[np.float32] | None = None
    sequence_scores: NDArray[np.float32] | None = None
    # Per item row: left out of every source (watched, unavailable, above the maturity limit); the homepage's
    # rows apply the same rules to the titles they add.
    exclude: NDArray[np.bool_] | None = None

    def item_ids(self, model: RecommenderModel) -> list[str]:
        return model.items.ids[self.candidates.items].tolist()  # type: ignore[no-any-return]

    def static_lookup(self, model: RecommenderModel) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """``model.static.lookup(self.item_ids(model))`` from the candidates' rows, without a string per
        candidate: the static table holds the bundle's titles, the model's first rows in the same order (see
        ``RecommenderModel.assemble``); a title added since (-1) is hashed from its id as ``lookup`` does."""
        rows = self.candidates.items.astype(np.int64)
        static = model.static
        index = np.where(rows < min(static.n_items, model.n_bundle_items), rows, -1)
        hashes = static.item_hash[index]
        unknown = np.flatnonzero(index < 0)
        if len(unknown):
            hashes[unknown] = hash_strs(model.items.ids[rows[unknown]].tolist())
        return index, hashes


@dataclass(frozen=True, slots=True)
class Answer:
    """The picks of one request, best first: item rows, scores, public source names, reasons."""

    rows: NDArray[np.int64]
    scores: NDArray[np.float64]
    sources: list[list[str]]
    reasons: list[str]

    def items(self, model: RecommenderModel) -> list[dict[str, Any]]:
        ids = model.items.ids[self.rows].tolist() if len(self.rows) else []
        return [{"item_id": i, "score": round(float(s), 6), "sources": src, "reason": r}
                for i, s, src, r in zip(ids, self.scores.tolist(), self.sources, self.reasons, strict=True)]


# -- stage 1: candidates ---------------------------------------------------------------------------


def user_context(model: RecommenderModel, request: RecommendRequest, snap: Snapshot, now: int) -> UserContext:
    """The bundle's history of the user before ``now`` plus recent titles; the online vector, else the bundle's."""
    row = model.user_row(request.user_id)
    items, weights, ts = model.bundle_history(row)
    before = ts < now  # point in time: a backtest asks before some of the history happened
    if not before.all():
        items, weights, ts = items[before], weights[before], ts[before]
    vector = snap.vector if snap.vector is not None else model.bundle_vector(row)
    if snap.recent:
        get = model.items.index.get
        pairs = [(r, t) for r, t in ((get(i), t) for i, t in snap.recent) if r is not None]
        if pairs:
            # Recent engagements (positive by construction of both lists) count like a play.
            items = np.concatenate([items, np.array([p[0] for p in pairs], np.int32)])
            weights = np.concatenate([weights, np.ones(len(pairs), np.float32)])
            ts = np.concatenate([ts, np.array([p[1] for p in pairs], np.int64)])
    limit = request.maturity_position()
    return UserContext(items, weights, ts, vector, limit if limit is not None else model.user_maturity_limit(row))


def trending_arrays(model: RecommenderModel, snap: Snapshot
                    ) -> tuple[NDArray[np.float32], NDArray[np.float32] | None, NDArray[np.int64]]:
    """(global popularity, context popularity or None, rows trending in the request's country).

    Global: the live trending counters when there are any, else the bundle's training popularity.
    Context: each known dimension's counters scaled to max 1 and averaged.
    """
    everyone = snap.trending.get("all")
    if not everyone:
        return model.items.popularity, None, np.zeros(0, np.int64)
    pop, _ = everyone.dense(model)
    parts = []
    country_rows = np.zeros(0, np.int64)
    for label in ("country", "device", "hour"):
        ranked = snap.trending.get(label)
        if not ranked:
            continue
        arr, rows = ranked.dense(model)
        top = float(arr.max()) if len(arr) else 0.0
        if top > 0:
            parts.append(arr / top)
        if label == "country":
            country_rows = rows
    return pop, (np.mean(parts, axis=0).astype(np.float32) if parts else None), country_rows


POPULAR_CACHE_SIZE: Final = 64  # context-list combinations kept per global trending list


def popular_source_scores(model: RecommenderModel, snap: Snapshot, context_weight: float
                          ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(:func:`~models.candidates.popular_scores` of :func:`trending_arrays`, rows trending in the country).

    Request-independent given the trending lists, which requests share until they are read again: kept on
    the global list per combination of context lists (identity; the entry holds them, so no id is reused
    while it lives), at most ``POPULAR_CACHE_SIZE`` of them.
    """
    everyone = snap.trending.get("all")
    if not everyone:
        pop, ctx, country_rows = trending_arrays(model, snap)
        return popular_scores(pop, ctx, context_weight), country_rows
    items = model.items
    lists = tuple(snap.trending.get(label) or None for label in ("country", "device", "hour"))
    key = (model.version, items.generation, len(items), context_weight, *(id(x) for x in lists))
    cache = everyone._popular
    hit = cache.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], lists, strict=True)):
        return hit[1], hit[2]
    pop, ctx, country_rows = trending_arrays(model, snap)
    scores = popular_scores(pop, ctx, context_weight)
    if len(cache) >= POPULAR_CACHE_SIZE:
        cache.clear()
    cache[key] = (lists, scores, country_rows)
    return scores, country_rows


def release_candidates(model: RecommenderModel, snap: Snapshot, now: int, budget: int,
                       exclude: NDArray[np.bool_]) -> SourceResult:
    """New releases: the online list when there is one, else the model's arrays. Either way ranked and scored as
    :func:`models.candidates.new_releases` does (by the model's popularity, ties by recency): the ranker learned its
    ``src_new`` column from the offline branch, so the served one must mean the same (issue 13: a recency score
    here alone took the served lists' overlap with the offline ones from 1.0 to 0.38 on a generated world)."""
    cfg = model.config.candidates
    if not snap.new_releases:
        return new_releases(model.items.new_since, now, budget, cfg.new_window_days, model.items.popularity,
                            exclude)
    window = cfg.new_window_days * DAY_MS
    rows, release_ts = snap.new_releases.known(model, np.int64)  # kept on the shared list: no loop per request
    if not len(rows):
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    age = now - release_ts
    keep = (age >= 0) & (age < window) & ~exclude[rows]
    rows, age = rows[keep], age[keep]
    popularity = model.items.popularity[rows]
    order = np.lexsort((rows, age, -popularity))[:budget]
    return rows[order].astype(np.int32), popularity[order].astype(np.float32)


def retrieve(model: RecommenderModel, request: RecommendRequest, snap: Snapshot, now: int,
             candidates: CandidateConfig | None = None) -> Retrieved:
    """Every source for one request, merged (exclusions: history, unavailable, above the maturity limit);
    ``candidates``: other budgets than the model's (an experiment's variant)."""
    cfg = candidates if candidates is not None else model.config.candidates
    items = model.items
    user = user_context(model, request, snap, now)
    extra = items.maturity > user.maturity_limit if user.maturity_limit is not None else None
    exclude = model.exclusion(user.history_items, extra)
    found: dict[str, SourceResult] = {}
    if user.vector is not None:
        found["ann_cf"] = ann_cf(model.cf_index, user.vector, cfg.ann_cf, exclude)
    # The user's recent positive titles, once for both the content profile and the seeds (each its own cut).
    positives = recent_positives(user.history_items, user.history_weights, user.history_ts)
    profile = user_content_profile(items.content, user.history_items, user.history_weights, user.history_ts, now,
                                   max_items=cfg.profile_items, half_life_days=cfg.profile_half_life_days,
                                   positives=positives)
    found["content"] = content_based(items.content, profile, cfg.content, exclude)
    popularity, country_rows = popular_source_scores(model, snap, cfg.context_weight)
    found["popular"] = top_k(popularity, cfg.popular, exclude)  # = popular(*trending_arrays(...), ...)
    found["new_releases"] = release_candidates(model, snap, now, cfg.new_releases, exclude)
    seeds, _, _ = most_recent(positives, cfg.byw_seeds)
    found["byw"] = because_you_watched(model.neighbour_index, seeds, cfg.byw, exclude=exclude)
    ii = seq = None
    if model.item_neighbours is not None:
        # The whole positive history, each title once (EASE's binary rows).
        ii = model.item_neighbours.scores(positives[0], np.ones(len(positives[0]), np.float32))
        if cfg.item_item > 0:
            found["item_item"] = top_positive(ii, cfg.item_item, exclude)
    if model.sequence is not None:
        seq = sequence_scores(model.sequence, most_recent(positives, model.sequence.max_len)[0])
        if seq is not None and cfg.sequence > 0:
            found["sequence"] = top_k(seq, cfg.sequence, exclude)
    cands = merge_candidates(found, exclude=exclude, available=items.available[: len(items)])
    return Retrieved(cands, profile, user, country_rows, ii, seq, exclude)


# -- stage 2: ranking ------------------------------------------------------------------------------


def extra_dense(model: RecommenderModel, retrieved: Retrieved) -> dict[str, NDArray[np.float32]]:
    """The ranker's retrieval columns: CF and content similarity, and each source's score."""
    cands = retrieved.candidates
    rows = cands.items.astype(np.int64)
    out: dict[str, NDArray[np.float32]] = {}
    vec = retrieved.user.vector
    cf = np.zeros(len(rows), np.float32)
    if vec is not None:
        vectors = model.cf_index.vectors
        inside = rows < len(vectors)
        cf[inside] = vectors[rows[inside]] @ vec
    out["cf_score"] = cf
    out["content_score"] = (model.items.content[rows] @ retrieved.profile).astype(np.float32)
    filled = cands.score_matrix(0.0)
    for col, name in enumerate(cands.source_names):
        out[SOURCE_COLUMNS[name]] = filled[:, col]
    out["ii_score"] = _relative(retrieved.item_item_scores, rows, _ii_scale, 0.0)
    out["seq_score"] = _relative(retrieved.sequence_scores, rows, _seq_scale, SEQ_FLOOR)
    return out


SEQ_LOGIT_SPAN: Final = 10.0  # next-title logits this far below the user's best one read as -1
SEQ_FLOOR: Final = -3.0  # ... and never below this (titles the sequence model never saw)


def _ii_scale(scores: NDArray[np.float32], best: float) -> NDArray[np.float32]:
    """EASE scores over the user's best one: 1 for the best title, about 0 for unrelated ones."""
    return np.clip(scores / best, -1.0, 1.0) if best > 0 else np.zeros(len(scores), np.float32)


def _seq_scale(scores: NDArray[np.float32], best: float) -> NDArray[np.float32]:
    """Next-title logits below the user's best one, in units of SEQ_LOGIT_SPAN: 0 best, SEQ_FLOOR at worst."""
    return np.clip((scores - best) / SEQ_LOGIT_SPAN, SEQ_FLOOR, 0.0)


def _relative(scores: NDArray[np.float32] | None, rows: NDArray[np.int64], scale: Any,
              missing: float) -> NDArray[np.float32]:
    """Each candidate's catalogue-wide score, scaled against the user's best one over the catalogue (unit-range
    columns for the ranker; what tells candidates apart is how they compare with the user's best title).
    ``missing``: no model, a title it cannot score (-inf) or one newer than the model."""
    out = np.full(len(rows), missing, np.float32)
    if scores is None or not len(scores):
        return out
    finite = np.isfinite(scores)
    if not finite.any():
        return out
    best = float(scores[finite].max())
    inside = np.flatnonzero(rows < len(scores))
    vals = scores[rows[inside]]
    ok = np.isfinite(vals)
    out[inside[ok]] = scale(vals[ok], best)
    return out


def unknown_state(model: RecommenderModel, item_ids: Sequence[str], now: int) -> RankingState:
    """The features' own defaults for a new user and unseen items (when the state cannot be read)."""
    n = len(item_ids)
    epochs = ItemStates.epochs_at(now)
    states = ItemStates(counts=np.zeros((n, len(ITEM_COUNT_NAMES)), np.int64),
                        pop=np.zeros((n, len(epochs), 2), np.int64), epoch=epochs)
    return RankingState(None, states, model.static.rows(*model.static.lookup(list(item_ids))))


def feature_rows(model: RecommenderModel, request: RecommendRequest, retrieved: Retrieved, state: RankingState,
                 now: int) -> FeatureBatch:
    """The ranker's input rows (:func:`models.features.rows.feature_batch`, the one feature definition)."""
    user = state.user if state.user is not None else UserStates.empty(1, model.static.n_genres)
    return feature_batch(hash_str(request.user_id), user, state.items, state.static, request.context(), now,
                         extra_dense(model, retrieved))


def fallback_scores(cands: Candidates) -> NDArray[np.float32]:
    """Scores without the ranker (it failed): the best rank over the sources, higher is better."""
    ranks = np.where(cands.ranks >= 0, cands.ranks, np.iinfo(np.int32).max).min(axis=1) if len(cands) else \
        np.zeros(0, np.int64)
    return (-ranks.astype(np.float64)).astype(np.float32)


def score(model: RecommenderModel, batch: FeatureBatch, retrieved: Retrieved
          ) -> tuple[NDArray[np.float32], Exception | None]:
    """Ranker scores of the rows; source-rank scores and the error when the ranker fails (or is missing)."""
    if model.ranker is None:
        return fallback_scores(retrieved.candidates), RuntimeError("the model has no ranker")
    try:
        return model.ranker.score(batch), None
    except Exception as exc:  # a broken ranker must not cost the answer: retrieval order still is one
        return fallback_scores(retrieved.candidates), exc


@dataclass(frozen=True, slots=True)
class Ranked:
    """What :func:`rank_and_answer` returns: the answer, the ranker's error if it failed, stage seconds."""

    answer: Answer
    ranker_error: Exception | None
    seconds: dict[str, float]  # "features", "ranking", "postprocess"


def rank(model: RecommenderModel, request: RecommendRequest, retrieved: Retrieved, state: RankingState, now: int
         ) -> tuple[NDArray[np.float32], Exception | None, dict[str, float]]:
    """Stage 2 for one request: the ranker's score of every candidate, its error if it failed, stage seconds."""
    t0 = time.perf_counter()
    batch = feature_rows(model, request, retrieved, state, now)
    t1 = time.perf_counter()
    scores, error = score(model, batch, retrieved)
    return scores, error, {"features": t1 - t0, "ranking": time.perf_counter() - t1}


def rank_and_answer(model: RecommenderModel, request: RecommendRequest, retrieved: Retrieved, state: RankingState,
                    now: int, post: PostConfig) -> Ranked:
    """Stages 2 and 3 for one request: feature rows, ranker scores, rules, diversity, reasons, top-up."""
    scores, error, seconds = rank(model, request, retrieved, state, now)
    t0 = time.perf_counter()
    picked = answer(model, request, retrieved, scores, now, post)
    return Ranked(picked, error, {**seconds, "postprocess": time.perf_counter() - t0})


# -- stage 3: post-processing ----------------------------------------------------------------------


def answer(model: RecommenderModel, request: RecommendRequest, retrieved: Retrieved, scores: NDArray[np.floating],
           now: int, post: PostConfig) -> Answer:
    """Business boosts and freshness, MMR over genres for the top ``k``, reasons; topped up when thin."""
    cands = retrieved.candidates
    rows = cands.items.astype(np.int64)
    t = model.items
    if len(rows):
        adjusted = apply_rules(scores, is_original=t.is_original[rows], release_ts=t.release_ts[rows], now=now,
                               config=post, penalty=model.penalty_of(rows, post))
        positions = mmr(adjusted, t.genre_matrix[rows], request.k, post.diversity, post.mmr_pool)
        picked = Answer(rows[positions], adjusted[positions].astype(np.float64), source_names(cands, positions),
                        reasons(model, retrieved, rows[positions], positions, now, post))
    else:
        picked = Answer(rows, np.zeros(0), [], [])
    if len(picked.rows) >= request.k:
        return picked
    extra = top_up(model, retrieved.user.history_items, picked.rows, request.k - len(picked.rows))
    return Answer(np.concatenate([picked.rows, extra.rows]), np.concatenate([picked.scores, extra.scores]),
                  picked.sources + extra.sources, picked.reasons + extra.reasons)


def top_up(model: RecommenderModel, history: NDArray[np.integer], have: NDArray[np.integer], n: int) -> Answer:
    """The ``n`` most popular available titles outside ``history`` and ``have``: a thin candidate set's
    top-up, and the whole answer when nothing else can be computed."""
    t = model.items
    order = np.argsort(-t.popularity, kind="stable")
    skip = np.zeros(len(t), bool)
    skip[np.asarray(history, np.int64)] = True
    skip[np.asarray(have, np.int64)] = True
    rows = order[t.available[order] & ~skip[order]][:n].astype(np.int64)
    return Answer(rows, np.zeros(len(rows)), [["popular"] for _ in range(len(rows))], [TOP_UP_REASON] * len(rows))


def reasons(model: RecommenderModel, retrieved: Retrieved, rows: NDArray[np.int64], positions: NDArray[np.int64],
            now: int, post: PostConfig) -> list[str]:
    """A short reason per pick, from its strongest source (see the order below)."""
    cands = retrieved.candidates
    names = cands.source_names
    bits = cands.sources[positions]
    seeds = cands.seed[positions]
    in_country = _isin(rows, retrieved.country_trending)
    age_days = (now - model.items.release_ts[rows]) / DAY_MS
    original = model.items.is_original[rows]

    def has(name: str) -> NDArray[np.bool_]:
        if name not in names:
            return np.zeros(len(rows), bool)
        return (bits & np.uint32(1 << names.index(name))) != 0

    # The first rule that holds, per pick (np.select takes the first true condition).
    rule = np.select([has("byw") & (seeds != NO_SEED), has("popular") & in_country,
                      has("new_releases") | ((age_days >= 0) & (age_days <= post.new_window_days)),
                      has("ann_cf"), has("content"), has("popular")], [0, 1, 2, 3, 4, 5], 6)
    titles = model.items.titles
    fixed = ("", "Trending in your country", "", "Picked for you from viewers with similar taste",
             "Similar to titles you enjoy", "Trending now", TOP_UP_REASON)
    out = []
    for r, seed, orig in zip(rule.tolist(), seeds.tolist(), original.tolist(), strict=True):  # the K picks
        if r == 0:
            out.append(f"Because you watched {titles[seed]}" if post.reason_titles else BYW_REASON_PRIVATE)
        elif r == 2:
            out.append("New on streamrec" if not orig else "New streamrec original")
        else:
            out.append(fixed[r])
    return out


def _isin(values: NDArray[np.int64], among: NDArray[np.int64]) -> NDArray[np.bool_]:
    """``np.isin(values, among)`` for integer arrays by one binary search (np.isin's setup costs more here)."""
    if len(among) == 0 or len(values) == 0:
        return np.zeros(len(values), bool)
    keys = np.sort(among)
    return keys[np.minimum(np.searchsorted(keys, values), len(keys) - 1)] == values


_SOURCE_LISTS: dict[tuple[tuple[str, ...], int], tuple[str, ...]] = {}


def source_names(cands: Candidates, positions: NDArray[np.int64]) -> list[list[str]]:
    """The public source names of each pick (a fresh list each; the lists per bitmask are kept)."""
    out = []
    for b in cands.sources[positions].tolist():
        names = _SOURCE_LISTS.get((cands.source_names, b))
        if names is None:
            if len(_SOURCE_LISTS) > 4096:  # (source tuple, bitmask): a few dozen in practice
                _SOURCE_LISTS.clear()
            names = _SOURCE_LISTS[(cands.source_names, b)] = tuple(
                PUBLIC_SOURCE.get(n, n) for s, n in enumerate(cands.source_names) if b & (1 << s))
        out.append(list(names))
    return out


def source_counts(cands: Candidates) -> Mapping[str, int]:
    """Candidates per source after the merge's exclusions (for the metrics)."""
    counts = {PUBLIC_SOURCE.get(n, n): int(cands.from_source(n).sum()) for n in cands.source_names}
    counts["merged"] = len(cands)
    return counts
