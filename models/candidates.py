"""Candidate generation: several cheap sources per request, merged into one de-duplicated set.

Each source answers for ONE user/request and returns ``(item_indices int32, scores float32)``, best
first, at most ``budget`` long (``because_you_watched`` adds a third array: the seed item each
candidate came from, for the "Because you watched X" row). Sources are vectorised numpy over the
catalogue (or one batched HNSW query), never a Python loop per item: the server calls them on every
request. Scores are only comparable within one source; :func:`merge_candidates` therefore keeps one
score column per source (plus the rank inside the source) and leaves the mixing to the ranker.

Sources take an optional ``exclude`` mask (already-watched, unavailable titles) so that they fill
their budget with eligible titles instead of spending it on titles the merge would drop; HNSW
sources over-fetch by at most one extra budget for that.

The sources are composed for a request by :func:`models.recommend.pipeline.retrieve`, the one
place that does it for the server, offline evaluation and the ranker's training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.ann import ItemIndex
from models.dataset import EventLog
from models.feedback import feedback_weights

DAY_MS: Final = 86_400_000
SOURCES: Final[tuple[str, ...]] = (
    "ann_cf", "content", "popular", "new_releases", "byw", "item_item", "sequence",
)
NO_SEED: Final = -1

Items = NDArray[np.int32]
Scores = NDArray[np.float32]
SourceResult = tuple[Items, Scores] | tuple[Items, Scores, Items]
ItemMask = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    """Budgets per source (about 1,000 candidates in all) and the knobs of the sources."""

    # Tuned on the validation split of ml-latest-small (issue 13: the split of the training part, never the test
    # split); ~1,250 before the merge removes duplicates.
    ann_cf: int = 300
    content: int = 100
    popular: int = 100
    new_releases: int = 50
    byw: int = 100
    item_item: int = 400  # the EASE-style item-to-item source (models.item_item), when the bundle has it
    sequence: int = 200  # the next-title sequence model (models.sequence), when the bundle has it
    byw_seeds: int = 10  # the user's last N distinct positive titles seed "because you watched"
    profile_items: int = 50  # recent positive titles averaged into the content profile
    profile_half_life_days: float | None = 60.0  # older titles weigh less in the profile (None: equal)
    new_window_days: float = 30.0
    context_weight: float = 0.5  # share of context-specific popularity in the popular source

    def budgets(self) -> dict[str, int]:
        return {"ann_cf": self.ann_cf, "content": self.content, "popular": self.popular,
                "new_releases": self.new_releases, "byw": self.byw, "item_item": self.item_item,
                "sequence": self.sequence}

    @property
    def total(self) -> int:
        return sum(self.budgets().values())


# -- helpers --------------------------------------------------------------------------------------


def _empty() -> tuple[Items, Scores]:
    return np.zeros(0, np.int32), np.zeros(0, np.float32)


def as_mask(items_or_mask: ItemMask | NDArray[np.integer] | Sequence[int] | None, n_items: int) -> ItemMask:
    """A bool mask over ``n_items`` from a mask (padded/truncated) or an array of item indices."""
    out = np.zeros(n_items, bool)
    if items_or_mask is None:
        return out
    arr = np.asarray(items_or_mask)
    if arr.dtype == np.bool_:
        m = min(len(arr), n_items)
        out[:m] = arr[:m]
    else:
        idx = arr.astype(np.int64).ravel()
        out[idx[(idx >= 0) & (idx < n_items)]] = True
    return out


def top_k(scores: NDArray[np.floating], k: int, exclude: ItemMask | None = None) -> tuple[Items, Scores]:
    """Indices of the ``k`` best finite scores (best first), skipping ``exclude``; no full sort."""
    s = np.asarray(scores, np.float32)
    neg = -s  # selection runs on -score: best first (an excluded title: +inf, never finite)
    if exclude is not None:
        neg = np.where(exclude if len(exclude) == len(s) else as_mask(exclude, len(s)), np.float32(np.inf), neg)
    valid = int(np.isfinite(neg).sum())
    k = min(int(k), valid)
    if k <= 0:
        return _empty()
    top = np.argpartition(neg, k - 1)[:k]
    # Stable order on (score desc, item asc) so equal scores come out the same way every time.
    top = top[np.lexsort((top, neg[top]))]
    return top.astype(np.int32), s[top]


def _drop_excluded(items: Items, scores: Scores, exclude: ItemMask | None, budget: int) -> tuple[Items, Scores]:
    if exclude is not None and len(items):
        inside = items < len(exclude)
        keep = ~inside.copy()
        keep[inside] = ~exclude[items[inside]]
        items, scores = items[keep], scores[keep]
    return items[:budget], scores[:budget]


def _overfetch(budget: int, exclude: ItemMask | None) -> int:
    """How many extra HNSW results to ask for so ``budget`` survive exclusion (≤ one extra budget)."""
    return 0 if exclude is None else min(int(exclude.sum()), budget)


# -- sources --------------------------------------------------------------------------------------


def ann_cf(index: ItemIndex, user_vector: NDArray[np.floating], budget: int,
           exclude: ItemMask | None = None) -> tuple[Items, Scores]:
    """CF retrieval: the items with the highest ``user · item`` (an ``"ip"`` index), via HNSW."""
    if budget <= 0 or not np.any(user_vector):
        return _empty()  # a user with no CF vector (no history) has no CF neighbours
    labels, sims = index.query(user_vector, budget + _overfetch(budget, exclude))
    return _drop_excluded(labels[0], sims[0], exclude, budget)


def recent_positives(
    items: NDArray[np.integer], weights: NDArray[np.floating], ts: NDArray[np.integer] | None = None,
    max_items: int | None = None,
) -> tuple[Items, NDArray[np.float32], NDArray[np.int64]]:
    """Distinct items with net weight > 0 in a time-ordered history, most recent last.

    Returns ``(items, net weight, last ts)``; ``ts`` defaults to the event position. Keeps the
    ``max_items`` most recently touched ones.
    """
    it = np.asarray(items, np.int64)
    if it.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    w = np.asarray(weights, np.float64)
    t = np.arange(len(it), dtype=np.int64) if ts is None else np.asarray(ts, np.int64)
    uniq, inverse = np.unique(it, return_inverse=True)
    net = np.bincount(inverse, weights=w, minlength=len(uniq))
    last = np.full(len(uniq), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, inverse, t)
    pos = net > 0
    uniq, net, last = uniq[pos], net[pos], last[pos]
    order = np.lexsort((uniq, last))  # oldest first, ties by item for determinism
    if max_items is not None:
        order = order[max(0, len(order) - max_items):] if max_items > 0 else order[:0]  # max: no wrap-around
    return uniq[order].astype(np.int32), net[order].astype(np.float32), last[order]


def most_recent(positives: tuple[Items, NDArray[np.float32], NDArray[np.int64]], max_items: int | None
                ) -> tuple[Items, NDArray[np.float32], NDArray[np.int64]]:
    """``recent_positives(items, weights, ts, max_items)`` from ``positives = recent_positives(items, weights,
    ts)`` (no ``max_items``): several cuts of one history for the price of one."""
    if max_items is None:
        return positives
    # The cut exactly as recent_positives makes it (the same slice of the same order).
    cut = slice(max(0, len(positives[0]) - max_items), None) if max_items > 0 else slice(0, 0)
    return positives[0][cut], positives[1][cut], positives[2][cut]


def user_content_profile(
    content_vectors: NDArray[np.floating], items: NDArray[np.integer], weights: NDArray[np.floating],
    ts: NDArray[np.integer] | None = None, now: int | None = None, *, max_items: int = 50,
    half_life_days: float | None = 60.0,
    positives: tuple[Items, NDArray[np.float32], NDArray[np.int64]] | None = None,
) -> NDArray[np.float32]:
    """L2-normalised weighted mean of the content vectors of the user's recent positive titles.

    Weight = net feedback weight × ``0.5 ** (age / half_life)`` (age from ``now``, default the last
    event), so the profile follows what the user watches *now* (tastes drift). Zeros when the user
    has no positive title yet. ``positives``: ``recent_positives(items, weights, ts)`` (no
    ``max_items``), when the caller has it already.
    """
    cv = np.asarray(content_vectors, np.float32)
    pos_items, net, last = (recent_positives(items, weights, ts, max_items) if positives is None
                            else most_recent(positives, max_items))
    pos_items_ok = pos_items < len(cv)
    pos_items, net, last = pos_items[pos_items_ok], net[pos_items_ok], last[pos_items_ok]
    if len(pos_items) == 0:
        return np.zeros(cv.shape[1], np.float32)
    w = net.astype(np.float64)
    if half_life_days and ts is not None:
        ref = int(last.max()) if now is None else int(now)
        age_days = np.maximum(ref - last, 0) / DAY_MS
        w = w * np.power(0.5, age_days / half_life_days)
    profile = (w[:, None] * cv[pos_items]).sum(axis=0)
    norm = float(np.linalg.norm(profile))
    return (profile / norm if norm > 0 else profile).astype(np.float32)


def content_based(content: ItemIndex | NDArray[np.floating], profile: NDArray[np.floating], budget: int,
                  exclude: ItemMask | None = None) -> tuple[Items, Scores]:
    """Titles whose content vector is closest (cosine) to the user's content profile.

    ``content`` is either the ``(n_items, d)`` L2-normalised content matrix (exact: one mat-vec,
    ~10k × 64 is tens of µs) or an :class:`ItemIndex` over it for much larger catalogues.
    """
    if budget <= 0 or not np.any(profile):
        return _empty()
    if isinstance(content, ItemIndex):
        labels, sims = content.query(profile, budget + _overfetch(budget, exclude))
        return _drop_excluded(labels[0], sims[0], exclude, budget)
    scores = np.asarray(content, np.float32) @ np.asarray(profile, np.float32)
    # Titles with no content vector score exactly 0; keep them out rather than rank them at random.
    # (Testing the score, not the rows, saves a pass over the whole matrix per request.)
    scores[scores == 0.0] = -np.inf
    return top_k(scores, budget, exclude)


def popular(popularity_scores: NDArray[np.floating], budget: int, context_scores: NDArray[np.floating] | None = None,
            *, context_weight: float = 0.5, exclude: ItemMask | None = None) -> tuple[Items, Scores]:
    """Trending/popular titles, optionally blended with popularity in the request's context.

    Both are scaled by their maximum before blending (``(1−w)·pop + w·ctx``), so the blend does not
    depend on how many events each was counted over. Titles with zero popularity are not returned.
    """
    return top_k(popular_scores(popularity_scores, context_scores, context_weight), budget, exclude)


def popular_scores(popularity_scores: NDArray[np.floating], context_scores: NDArray[np.floating] | None = None,
                   context_weight: float = 0.5) -> NDArray[np.float32]:
    """:func:`popular`'s score per title before the top-k (-inf: not returned); the same for every request
    that shares the popularity arrays, so a caller may keep it."""
    pop = np.asarray(popularity_scores, np.float32)
    blended = _unit_max(pop)
    if context_scores is not None and context_weight > 0:
        ctx = np.asarray(context_scores, np.float32)
        blended = (1.0 - context_weight) * blended + context_weight * _unit_max(ctx)
    return np.where(blended > 0, blended, -np.inf).astype(np.float32)


def _unit_max(x: NDArray[np.float32]) -> NDArray[np.float32]:
    top = float(x.max()) if len(x) else 0.0
    return (x / top).astype(np.float32) if top > 0 else np.zeros_like(x)


def new_releases(
    release_ts: NDArray[np.integer], now: int, budget: int, window_days: float = 30.0,
    popularity: NDArray[np.floating] | None = None, exclude: ItemMask | None = None,
) -> tuple[Items, Scores]:
    """Titles released (or added, if given ``first_seen_ts``) within ``window_days`` before ``now``.

    Ranked by ``popularity`` when given (ties, e.g. not yet watched, by recency), else by recency.
    Score: the popularity, or ``1 − age/window`` in (0, 1].
    """
    ts = np.asarray(release_ts, np.int64)
    window = window_days * DAY_MS
    age = now - ts
    fresh = (age >= 0) & (age < window)
    if exclude is not None:
        fresh &= ~as_mask(exclude, len(ts))
    cand = np.flatnonzero(fresh)
    if budget <= 0 or len(cand) == 0:
        return _empty()
    recency = (1.0 - age[cand] / window).astype(np.float32)
    if popularity is None:
        order = np.lexsort((cand, -recency))
        score = recency
    else:
        pop = np.asarray(popularity, np.float32)[cand]
        order = np.lexsort((cand, -recency, -pop))
        score = pop
    order = order[:budget]
    return cand[order].astype(np.int32), score[order].astype(np.float32)


def byw_per_seed(budget: int, n_seeds: int) -> int:
    """Neighbours fetched per seed: twice the fair share, since neighbours of similar seeds overlap."""
    return max(10, -(-2 * budget // max(n_seeds, 1)))


def because_you_watched(
    index: ItemIndex, recent_items: NDArray[np.integer], budget: int, *, per_seed: int | None = None,
    exclude: ItemMask | None = None,
) -> tuple[Items, Scores, Items]:
    """Item-to-item neighbours of the user's recent titles, merged by max similarity.

    ``index`` should be a ``"cosine"`` index over CF item vectors; ``recent_items`` are the seeds
    (most recent last; those not in the index are skipped). One batched HNSW query fetches
    ``per_seed`` neighbours per seed (default: enough for the budget twice over); a neighbour of
    several seeds keeps its best similarity and that seed. Returns ``(items, scores, seeds)``.
    """
    seeds = np.unique(np.asarray(recent_items, np.int64))
    seeds = seeds[(seeds < len(index.live))]
    seeds = seeds[index.live[seeds]] if len(seeds) else seeds
    if budget <= 0 or len(seeds) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    per = per_seed if per_seed is not None else byw_per_seed(budget, len(seeds))
    # +1: a seed is its own nearest neighbour (other watched seeds are covered by the over-fetch).
    labels, sims = index.query(index.vectors[seeds], per + 1 + _overfetch(per, exclude))
    seed_col = np.repeat(seeds.astype(np.int32), labels.shape[1])
    flat, flat_sims = labels.ravel(), sims.ravel()
    if len(flat) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    # Labels are item rows (non-negative): masks over the label range instead of sorting.
    size = max(int(flat.max()) + 1, int(seeds.max()) + 1)
    is_seed = np.zeros(size, bool)
    is_seed[seeds] = True
    keep = ~is_seed[flat]  # watched titles are no "because you watched" candidates
    if exclude is not None:
        inside = flat < len(exclude)
        keep[inside] &= ~exclude[flat[inside]]
    flat, flat_sims, seed_col = flat[keep], flat_sims[keep], seed_col[keep]
    if len(flat) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    order = np.lexsort((seed_col, -flat_sims))  # best similarity first (ties: lower seed index)
    flat, flat_sims, seed_col = flat[order], flat_sims[order], seed_col[order]
    # The first occurrence of each label is its best one; positions ascending = score order.
    at = np.arange(len(flat), dtype=np.int64)
    first_at = np.full(size, len(flat), np.int64)
    np.minimum.at(first_at, flat, at)
    first = np.flatnonzero(first_at[flat] == at)[:budget]  # keep the best ``budget``
    return flat[first].astype(np.int32), flat_sims[first].astype(np.float32), seed_col[first]


# -- merge ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidates:
    """One request's merged candidate set; row ``r`` of every array is candidate ``r``."""

    items: Items  # (m,) distinct, sorted ascending
    scores: NDArray[np.float32]  # (m, n_sources) source score, NaN where the source did not retrieve it
    ranks: NDArray[np.int32]  # (m, n_sources) 0-based position inside the source, -1 where absent
    sources: NDArray[np.uint32]  # (m,) bit s set when source s retrieved the item
    seed: Items  # (m,) the "because you watched" seed item, NO_SEED when none
    source_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    def source_bit(self, name: str) -> int:
        return 1 << self.source_names.index(name)

    def from_source(self, name: str) -> NDArray[np.bool_]:
        return (self.sources & np.uint32(self.source_bit(name))) != 0

    def by_source(self) -> dict[str, Items]:
        """Each source's candidates (those left after the merge's exclusions) and the whole set, ``"merged"``."""
        out = {name: self.items[self.from_source(name)] if name in self.source_names else np.zeros(0, np.int32)
               for name in SOURCES}
        out["merged"] = self.items
        return out

    def score_matrix(self, fill: float = 0.0) -> NDArray[np.float32]:
        """The score columns with absent entries filled (the ranker cannot take NaN)."""
        return np.where(np.isnan(self.scores), np.float32(fill), self.scores)


def merge_candidates(
    sources: Mapping[str, SourceResult],
    exclude: ItemMask | NDArray[np.integer] | None = None,
    available: ItemMask | None = None,
) -> Candidates:
    """De-duplicate the sources' items, drop excluded and unavailable ones, attribute sources.

    ``exclude``: a bool mask over items or an array of item indices (already watched). Items outside
    the ``available`` mask, including indices beyond its length (titles it does not know), are
    dropped. A source given as ``(items, scores, seeds)`` provides the seed column (its best-scoring
    seed per item; the first such source wins). Vectorised: concatenations, a scatter over the item
    range (or ``np.unique``) and 1-d ``ufunc.at``; no loop per candidate.
    """
    names = tuple(sources)
    if len(names) > 32:
        raise ValueError("at most 32 sources fit the uint32 bitmask")
    parts = [sources[n] for n in names]
    s = len(names)
    lengths = np.array([len(p[0]) for p in parts], np.int64)
    items = np.concatenate([np.asarray(p[0], np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    scores = np.concatenate([np.asarray(p[1], np.float32) for p in parts]) if parts else np.zeros(0, np.float32)
    src = np.repeat(np.arange(s, dtype=np.int64), lengths)
    rank = np.arange(len(items), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    seeded = [len(p) == 3 for p in parts]
    has_seed = np.repeat(np.array(seeded, bool), lengths) if any(seeded) else None
    seeds = np.concatenate([np.asarray(p[2], np.int64) if len(p) == 3 else np.full(len(p[0]), NO_SEED, np.int64)
                            for p in parts]) if has_seed is not None else None

    keep = items >= 0
    if exclude is not None:
        ex = np.asarray(exclude)
        if ex.dtype == np.bool_:
            inside = items < len(ex)
            keep[inside] &= ~ex[items[inside]]
        else:
            keep &= ~np.isin(items, ex)
    if available is not None:
        avail = np.asarray(available, bool)
        inside = items < len(avail)
        keep &= inside
        keep[inside] &= avail[items[inside]]
    if not keep.all():
        items, scores, src, rank = items[keep], scores[keep], src[keep], rank[keep]
        if has_seed is not None and seeds is not None:
            has_seed, seeds = has_seed[keep], seeds[keep]

    uniq, inv = _unique_inverse(items)
    m = len(uniq)
    cell = inv * s + src  # (candidate, source) as one flat index into the (m, s) columns
    score_cols = np.full((m, s), np.nan, np.float32)
    np.fmax.at(score_cols.reshape(-1), cell, scores)  # fmax ignores the NaN fill; a repeated item keeps its best
    rank_cols = np.full((m, s), np.iinfo(np.int32).max, np.int32)
    np.minimum.at(rank_cols.reshape(-1), cell, rank.astype(np.int32))
    rank_cols[rank_cols == np.iinfo(np.int32).max] = -1
    bitmask = np.zeros(m, np.uint32)
    np.bitwise_or.at(bitmask, inv, np.left_shift(np.uint32(1), src.astype(np.uint32)))

    seed_out = np.full(m, NO_SEED, np.int32)
    if has_seed is not None and seeds is not None and has_seed.any():
        rows = np.flatnonzero(has_seed)
        seeded_inv = inv[rows]
        once = np.zeros(m, bool)
        once[seeded_inv] = True
        if int(once.sum()) == len(rows):  # one seed row per candidate (the usual case): nothing to choose
            seed_out[seeded_inv] = seeds[rows]
            return Candidates(uniq.astype(np.int32), score_cols, rank_cols, bitmask, seed_out, names)
        # Per candidate: the first seed-providing source, then its best score, wins.
        order = np.lexsort((-scores[rows], src[rows], seeded_inv))
        rows = rows[order]
        by_candidate = inv[rows]
        first = np.ones(len(rows), bool)
        first[1:] = by_candidate[1:] != by_candidate[:-1]  # sorted by candidate: the first row of each run
        seed_out[by_candidate[first]] = seeds[rows[first]]
    return Candidates(uniq.astype(np.int32), score_cols, rank_cols, bitmask, seed_out, names)


def _unique_inverse(items: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``np.unique(items, return_inverse=True)`` for non-negative ids: a scatter over the id range (item
    rows: at most the catalogue), or the sort when the range is far larger than the ids."""
    if len(items) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    size = int(items.max()) + 1
    if size > max(1 << 22, 64 * len(items)):
        uniq, inv = np.unique(items, return_inverse=True)
        return uniq, inv.reshape(-1)
    present = np.zeros(size, bool)
    present[items] = True
    uniq = np.flatnonzero(present)
    slot = np.empty(size, np.int64)
    slot[uniq] = np.arange(len(uniq), dtype=np.int64)
    return uniq, slot[items]


# -- popularity helpers ----------------------------------------------------------------------------


def popularity_scores(
    log: EventLog, now: int | None = None, half_life_days: float | None = 7.0,
    mask: NDArray[np.bool_] | None = None,
) -> NDArray[np.float32]:
    """Per-item popularity: positive-feedback events, each decayed by ``0.5 ** (age/half_life)``.

    ``now`` defaults to the last event; events after ``now`` are ignored (no peeking). ``mask``
    restricts the rows counted, e.g. ``log.device == d`` for a context-specific popularity. With
    ``half_life_days=None`` this is the all-time count. "Trending" = a short half-life.
    """
    rows = log.item_events() if mask is None else (log.item_events() & mask)
    ref = int(log.ts.max()) if (now is None and log.n_events) else int(now or 0)
    rows &= log.ts <= ref
    w = feedback_weights(log.kind[rows], log.value[rows])
    positive = (w > 0).astype(np.float64)
    if half_life_days:
        positive *= np.power(0.5, (ref - log.ts[rows]) / (half_life_days * DAY_MS))
    return np.bincount(log.item[rows], weights=positive, minlength=log.catalog.n_items).astype(np.float32)


# -- one request, and many users offline ----------------------------------------------------------


def exclusion(n_items: int, history_items: NDArray[np.integer], available: ItemMask | None = None,
              extra: ItemMask | None = None) -> ItemMask:
    """Already-touched titles, unavailable ones and ``extra`` (e.g. above the maturity limit), as one
    mask shared by every source."""
    mask = as_mask(history_items, n_items)
    if available is not None:
        mask |= ~as_mask(available, n_items)
    if extra is not None:
        mask |= as_mask(extra, n_items)
    return mask


@dataclass(frozen=True, slots=True)
class Histories:
    """Every user's time-ordered item events, CSR-style: user ``u`` is rows ``ptr[u]:ptr[u+1]``."""

    ptr: NDArray[np.int64]
    items: NDArray[np.int32]
    weights: NDArray[np.float32]  # feedback weight of each event
    ts: NDArray[np.int64]

    def of(self, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.int64]]:
        s, e = self.ptr[user], self.ptr[user + 1]
        return self.items[s:e], self.weights[s:e], self.ts[s:e]


def user_histories(log: EventLog) -> Histories:
    """Split a log's item events by user, keeping time order (one stable sort, no loop)."""
    rows = np.flatnonzero(log.item_events())
    order = rows[np.argsort(log.user[rows], kind="stable")]
    counts = np.bincount(log.user[order], minlength=log.n_users)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Histories(ptr, log.item[order].astype(np.int32),
                     feedback_weights(log.kind[order], log.value[order]), log.ts[order])
