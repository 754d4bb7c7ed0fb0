"""The pure stages of one recommendation: candidates, ranking inputs, post-processing, reasons.

No I/O here: :mod:`serving.service` reads Redis and hands the results in, so these functions are
unit-tested without servers. Everything is numpy over the candidate arrays; loops run over the
sources (5), the context scopes (≤ 4) or the K picks, never over the ~1,000 candidates.

Why the sources run one after another rather than as concurrent tasks: once stage 1's single Redis
round trip is back, every source is in-memory numpy or one hnswlib query (tens to hundreds of µs
each, holding the GIL for most of it); threads would only add hand-offs on a 2-core box. The
concurrency that matters, overlapping the Redis wait with other requests, is the event loop's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.candidates import (
    NO_SEED,
    Candidates,
    SourceResult,
    ann_cf,
    because_you_watched,
    content_based,
    merge_candidates,
    new_releases,
    popular,
    recent_positives,
    user_content_profile,
)
from models.postprocess import PostConfig, apply_rules, mmr
from models.two_stage import SOURCE_COLUMNS
from serving.model_state import ServingModel
from serving.online_reads import OnlineState

DAY_MS: Final = 86_400_000
# The names the API shows for the retriever's sources.
PUBLIC_SOURCE: Final[dict[str, str]] = {
    "ann_cf": "collaborative", "content": "content", "popular": "trending", "new_releases": "new_releases",
    "byw": "because_you_watched",
}


@dataclass(slots=True)
class UserContext:
    """What stage 1 knows about the user, merged from the bundle and Redis."""

    history_items: NDArray[np.int32]
    history_weights: NDArray[np.float32]
    history_ts: NDArray[np.int64]
    vector: NDArray[np.float32] | None
    maturity_limit: int | None  # index into MATURITY_ORDER; None: no limit


@dataclass(slots=True)
class Stage1:
    candidates: Candidates
    profile: NDArray[np.float32]
    user: UserContext
    country_trending: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))  # rows


def user_context(model: ServingModel, user_id: str, online: OnlineState | None,
                 maturity_limit: int | None = None) -> UserContext:
    """The bundle's history of the user plus recent items from Redis; the online vector, else the bundle's."""
    row = model.user_row(user_id)
    items, weights, ts = model.bundle_history(row)
    vector = online.user_vector if online is not None and online.user_vector is not None else None
    if vector is None:
        vector = model.bundle_vector(row)
    if online is not None and online.recent:
        get = model.items.index.get
        pairs = [(r, t) for r, t in ((get(i), t) for i, t in online.recent) if r is not None]
        if pairs:
            rows = np.array([p[0] for p in pairs], np.int32)
            times = np.array([p[1] for p in pairs], np.int64)
            # Recent engagements (positive by construction of both lists) count like a play.
            items = np.concatenate([items, rows])
            weights = np.concatenate([weights, np.ones(len(rows), np.float32)])
            ts = np.concatenate([ts, times])
    limit = maturity_limit if maturity_limit is not None else model.user_maturity_limit(row)
    return UserContext(items, weights, ts, vector, limit)


_Dense = tuple[NDArray[np.float32], NDArray[np.int64]]
_DENSE_MEMO: dict[tuple[int, int, int], tuple[list[tuple[str, float]], _Dense]] = {}


def _dense_scores(n: int, rows: NDArray[np.int64], scores: list[float]) -> NDArray[np.float32]:
    out = np.zeros(n, np.float32)
    if len(rows):
        np.maximum.at(out, rows, np.asarray(scores, np.float32))
    return out


def trending_arrays(model: ServingModel, online: OnlineState | None
                    ) -> tuple[NDArray[np.float32], NDArray[np.float32] | None, NDArray[np.int64]]:
    """(global popularity, context popularity or None, rows trending in the request's country).

    Global: the live trending counters when Redis had any, else the bundle's training popularity.
    Context: each known dimension's counters scaled to max 1 and averaged.
    """
    n = len(model.items)
    if online is None or not online.trending.get("all"):
        return model.items.popularity, None, np.zeros(0, np.int64)
    index = model.items.index

    def dense(pairs: list[tuple[str, float]]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        # The lists come from serving.online_reads.SharedReads: the same list object for every request
        # within its TTL, so its dense form is built once per list (and catalogue size), not per request.
        memo_key = (id(pairs), id(index), n)
        hit = _DENSE_MEMO.get(memo_key)
        if hit is not None and hit[0] is pairs:
            return hit[1]
        known = [(index[i], s) for i, s in pairs if i in index]
        rows = np.array([r for r, _ in known], np.int64)
        result = _dense_scores(n, rows, [s for _, s in known]), rows
        if len(_DENSE_MEMO) >= 64:
            _DENSE_MEMO.clear()
        _DENSE_MEMO[memo_key] = (pairs, result)  # holds the list: its id cannot be reused meanwhile
        return result

    pop, _ = dense(online.trending["all"])
    ctx_parts = []
    country_rows = np.zeros(0, np.int64)
    for label in ("country", "device", "hour"):
        pairs = online.trending.get(label)
        if not pairs:
            continue
        arr, rows = dense(pairs)
        top = float(arr.max()) if len(arr) else 0.0
        if top > 0:
            ctx_parts.append(arr / top)
        if label == "country":
            country_rows = rows
    ctx = (np.mean(ctx_parts, axis=0).astype(np.float32) if ctx_parts else None)
    return pop, ctx, country_rows


def release_candidates(model: ServingModel, online: OnlineState | None, now: int, budget: int,
                       exclude: NDArray[np.bool_]) -> SourceResult:
    """New releases: Redis' list when there is one (recency score in (0, 1]), else the local arrays."""
    cfg = model.config.candidates
    if online is None or not online.new_releases:
        return new_releases(model.items.release_ts, now, budget, cfg.new_window_days, model.items.popularity, exclude)
    window = cfg.new_window_days * DAY_MS
    index = model.items.index
    known = [(index[i], ts) for i, ts in online.new_releases if i in index]
    if not known:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    rows = np.array([r for r, _ in known], np.int64)
    age = now - np.array([t for _, t in known], np.int64)
    keep = (age >= 0) & (age < window) & ~exclude[rows]
    rows, age = rows[keep][:budget], age[keep][:budget]
    return rows.astype(np.int32), (1.0 - age / window).astype(np.float32)


def generate(model: ServingModel, user: UserContext, online: OnlineState | None, now: int) -> Stage1:
    """Every source for one request, merged (exclusions: history, unavailable, above the maturity limit)."""
    cfg = model.config.candidates
    items = model.items
    n = len(items)
    extra = None
    if user.maturity_limit is not None:
        extra = items.maturity > user.maturity_limit
    exclude = model.retriever.exclusion(user.history_items, extra)
    found: dict[str, SourceResult] = {}
    if user.vector is not None:
        found["ann_cf"] = ann_cf(model.cf_index, user.vector, cfg.ann_cf, exclude)
    profile = user_content_profile(items.content, user.history_items, user.history_weights, user.history_ts, now,
                                   max_items=cfg.profile_items, half_life_days=cfg.profile_half_life_days)
    found["content"] = content_based(items.content, profile, cfg.content, exclude)
    pop, ctx, country_rows = trending_arrays(model, online)
    found["popular"] = popular(pop, cfg.popular, ctx, context_weight=cfg.context_weight, exclude=exclude)
    found["new_releases"] = release_candidates(model, online, now, cfg.new_releases, exclude)
    seeds, _, _ = recent_positives(user.history_items, user.history_weights, user.history_ts, cfg.byw_seeds)
    found["byw"] = because_you_watched(model.neighbour_index, seeds, cfg.byw,
                                       exclude=exclude)
    cands = merge_candidates(found, exclude=exclude, available=items.available[:n])
    return Stage1(cands, profile, user, country_rows)


def extra_dense(model: ServingModel, stage1: Stage1) -> dict[str, NDArray[np.float32]]:
    """The ranker's retrieval columns (as ``models.two_stage._extra_dense`` computes them offline)."""
    cands = stage1.candidates
    rows = cands.items.astype(np.int64)
    out: dict[str, NDArray[np.float32]] = {}
    vec = stage1.user.vector
    vectors = model.cf_index.vectors
    if vec is not None:
        inside = rows < len(vectors)
        cf = np.zeros(len(rows), np.float32)
        cf[inside] = vectors[rows[inside]] @ vec
        out["cf_score"] = cf
    else:
        out["cf_score"] = np.zeros(len(rows), np.float32)
    out["content_score"] = (model.items.content[rows] @ stage1.profile).astype(np.float32)
    filled = cands.score_matrix(0.0)
    for col, name in enumerate(cands.source_names):
        out[SOURCE_COLUMNS[name]] = filled[:, col]
    return out


def fallback_scores(cands: Candidates) -> NDArray[np.float32]:
    """Scores without the ranker (it failed): the best rank over the sources, higher is better."""
    ranks = np.where(cands.ranks >= 0, cands.ranks, np.iinfo(np.int32).max).min(axis=1) if len(cands) else \
        np.zeros(0, np.int64)
    return (-ranks.astype(np.float64)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Picked:
    rows: NDArray[np.int64]  # item rows, in order
    scores: NDArray[np.float64]  # post-processed scores of the picks
    positions: NDArray[np.int64]  # their positions in the candidate arrays


def postprocess(model: ServingModel, cands: Candidates, scores: NDArray[np.floating], k: int, now: int,
                post: PostConfig) -> Picked:
    """Business boosts and freshness (``apply_rules``), then MMR over genres for the top ``k``."""
    rows = cands.items.astype(np.int64)
    if len(rows) == 0:
        return Picked(rows, np.zeros(0), np.zeros(0, np.int64))
    t = model.items
    adjusted = apply_rules(scores, is_original=t.is_original[rows], release_ts=t.release_ts[rows], now=now,
                           config=post)
    positions = mmr(adjusted, t.genre_matrix[rows], k, post.diversity, post.mmr_pool)
    return Picked(rows[positions], adjusted[positions], positions)


def reasons(model: ServingModel, stage1: Stage1, picked: Picked, now: int, post: PostConfig) -> list[str]:
    """A short reason per pick, from its strongest source (see the order below)."""
    cands = stage1.candidates
    names = cands.source_names
    bits = cands.sources[picked.positions]
    seeds = cands.seed[picked.positions]
    in_country = np.isin(picked.rows, stage1.country_trending)
    age_days = (now - model.items.release_ts[picked.rows]) / DAY_MS
    original = model.items.is_original[picked.rows]

    def has(j: int, name: str) -> bool:
        return name in names and bool(bits[j] & np.uint32(1 << names.index(name)))

    out = []
    titles = model.items.titles
    for j in range(len(picked.rows)):
        if has(j, "byw") and seeds[j] != NO_SEED:
            out.append(f"Because you watched {titles[int(seeds[j])]}")
        elif has(j, "popular") and in_country[j]:
            out.append("Trending in your country")
        elif has(j, "new_releases") or 0 <= age_days[j] <= post.new_window_days:
            out.append("New on streamrec" if not original[j] else "New streamrec original")
        elif has(j, "ann_cf"):
            out.append("Picked for you from viewers with similar taste")
        elif has(j, "content"):
            out.append("Similar to titles you enjoy")
        elif has(j, "popular"):
            out.append("Trending now")
        else:
            out.append("Popular on streamrec")
    return out


def source_names(cands: Candidates, positions: NDArray[np.int64]) -> list[list[str]]:
    names = [PUBLIC_SOURCE.get(n, n) for n in cands.source_names]
    bits = cands.sources[positions]
    return [[names[s] for s in range(len(names)) if b & (1 << s)] for b in bits.tolist()]


def source_counts(cands: Candidates) -> Mapping[str, int]:
    """Candidates per source after the merge's exclusions (for the metrics)."""
    counts = {PUBLIC_SOURCE.get(n, n): int(cands.from_source(n).sum()) for n in cands.source_names}
    counts["merged"] = len(cands)
    return counts
