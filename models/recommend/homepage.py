"""The homepage: rows of titles ("Continue watching", "Because you watched Heat", "Top picks for you", "Trending
in US", "New releases", genre rows), built from ONE run of the recommend pipeline.

The server reads the online state once, retrieves and ranks the candidates once (the same
:func:`~models.recommend.pipeline.retrieve` and ranker as ``/v1/recommendations``), then this module lays out the
page; it does no I/O. Per row, a *pool* of titles in the row's own order:

- ``continue_watching``: the session's started-and-not-finished titles, most recent first (pinned first: it is
  what a returning viewer looks for);
- ``because_you_watched:{id}``: one row per recent positive title (the last ``byw_rows``; not one still being
  watched), its nearest CF neighbours (one batched HNSW query for all seeds);
- ``top_picks``: every candidate by the ranker's score after the business rules (what ``/v1/recommendations``
  answers);
- ``trending_country`` / ``trending_device`` / ``trending``: the trending lists of the request's scopes;
- ``new_releases``: the new-releases source;
- ``genre:{name}``: candidates of each genre the user engages with most (the last ``GENRE_HISTORY`` positives; a
  new user: the genres most watched in training).

Within a row the ranker orders the pool's first ``POOL_FACTOR * per_row`` titles (those it scored; the rest keep the
pool's order after them), so two users in one country see the same trending titles in different orders.

Which rows come first is per user: the ranker's scores are listwise logits, so ``softmax`` over the candidates is
the share of this user's engagement the ranker expects each title to get; a row's worth is the share held by the
first ``SCREEN_ITEMS`` titles it would show. Rows are placed greedily: the worthiest row takes its titles, the
others are re-valued without them, and so on, so **a title appears at most once on the page** and a row that only
repeats another one's titles sinks. Every row but ``continue_watching`` leaves out watched, unavailable and
above-the-maturity-limit titles (the retrieval exclusions); ``continue_watching`` keeps watched ones (that is the
point) but not unavailable ones or those above the limit.

Loops run over rows (at most ~12) and their picks, never over candidates: pools are numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.candidates import most_recent, recent_positives
from models.postprocess import PostConfig, apply_rules
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import (
    RecommendRequest,
    Retrieved,
    Snapshot,
    release_candidates,
    source_names,
)

POOL_FACTOR: Final = 3  # a row's pool: this many times the titles it shows
SCREEN_ITEMS: Final = 5  # titles of a row on the first screen: what a row's worth counts
MIN_ITEMS: Final = 3  # a row left with fewer titles (after the rows above took theirs) is dropped
GENRE_HISTORY: Final = 50  # recent positive titles whose genres make the genre rows
DEVICE_NAMES: Final[dict[str, str]] = {"tv": "TV", "mobile": "mobile", "tablet": "tablets", "web": "the web",
                                       "console": "consoles", "other": "other devices"}


@dataclass(frozen=True, slots=True)
class HomepageRequest:
    """A homepage request: the recommend request (user, context, clock) and the page's shape."""

    base: RecommendRequest
    rows: int = 8
    per_row: int = 10
    byw_rows: int = 2  # "because you watched" rows, one per recent title
    genre_rows: int = 2


@dataclass(slots=True)
class Row:
    """One row: an id, a title, a reason code, its titles (item rows) with scores, and its worth."""

    id: str
    title: str
    reason: str
    items: NDArray[np.int64]
    scores: NDArray[np.float64]
    worth: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # seed_item_id, genre, ...
    progress: NDArray[np.float64] | None = None  # continue_watching: how far in, 0..1


@dataclass(frozen=True, slots=True)
class _Ranked:
    """The candidates as the page sees them: the rules' scores (order within rows) and the expected engagement
    share (softmax of the ranker's logits less the bias penalty: the rows' worth), both by item row."""

    rows: NDArray[np.int64]  # the candidates' item rows
    adjusted: NDArray[np.float64]  # per candidate, after penalty, boosts and freshness
    share: NDArray[np.float64]  # per candidate, sums to 1
    position: NDArray[np.int64]  # item row -> candidate position, -1 for titles not among the candidates


def _ranked(model: RecommenderModel, retrieved: Retrieved, scores: NDArray[np.floating], now: int,
            post: PostConfig) -> _Ranked:
    rows = retrieved.candidates.items.astype(np.int64)
    position = np.full(len(model.items), -1, np.int64)
    if not len(rows):
        return _Ranked(rows, np.zeros(0), np.zeros(0), position)
    penalty = model.penalty_of(rows, post)
    logits = np.asarray(scores, np.float64) - (np.asarray(penalty, np.float64) if penalty is not None else 0.0)
    share = np.exp(logits - logits.max())
    share /= share.sum()
    t = model.items
    adjusted = apply_rules(scores, is_original=t.is_original[rows], release_ts=t.release_ts[rows], now=now,
                           config=post, penalty=penalty)
    position[rows] = np.arange(len(rows))
    return _Ranked(rows, adjusted, share, position)


def _personal(pool: NDArray[np.int64], ranked: _Ranked, n: int) -> NDArray[np.int64]:
    """The pool's first ``n`` titles in the ranker's order (titles it did not score after them, in pool order),
    then the rest of the pool as it was."""
    head, tail = pool[:n], pool[n:]
    pos = ranked.position[head]
    key = np.where(pos >= 0, ranked.adjusted[np.maximum(pos, 0)], -np.inf)
    return np.concatenate([head[np.argsort(-key, kind="stable")], tail])


def _allowed(pool: NDArray[np.int64], exclude: NDArray[np.bool_]) -> NDArray[np.int64]:
    pool = pool[(pool >= 0) & (pool < len(exclude))]
    return pool[~exclude[pool]]


_POPULARITY_ORDER: dict[tuple[str, int, int], NDArray[np.int64]] = {}


def _popularity_order(model: RecommenderModel) -> NDArray[np.int64]:
    """Every title row by training popularity, best first: kept per model state (an argsort per request cost
    more than the rest of a row)."""
    items = model.items
    key = (model.version, items.generation, len(items))
    order = _POPULARITY_ORDER.get(key)
    if order is None:
        if len(_POPULARITY_ORDER) > 8:  # a few model states live at once (hot reloads, live titles)
            _POPULARITY_ORDER.clear()
        order = _POPULARITY_ORDER[key] = np.argsort(-items.popularity, kind="stable").astype(np.int64)
    return order


def _trending_pool(model: RecommenderModel, snap: Snapshot, label: str) -> NDArray[np.int64]:
    """The scope's live trending list, best first; the global one goes on with the bundle's popularity order, so
    "Trending now" is never empty while the live counters are young (a new stack, a quiet hour)."""
    ranked = snap.trending.get(label)
    live = np.zeros(0, np.int64)
    if ranked:
        rows, values = ranked.known(model, np.float32)
        live = rows[np.argsort(-values, kind="stable")]
    if label != "all":
        return live
    pool = np.concatenate([live, _popularity_order(model)])
    _, first = np.unique(pool, return_index=True)
    return pool[np.sort(first)]


def _byw_rows(model: RecommenderModel, retrieved: Retrieved, exclude: NDArray[np.bool_], n_rows: int,
              size: int, unfinished: NDArray[np.int64]) -> list[Row]:
    """One "because you watched" row per recent positive title (most recent first), by CF similarity; titles still
    being watched (``unfinished``: continue watching's) seed none: the user has not watched them yet."""
    user = retrieved.user
    positives = recent_positives(user.history_items, user.history_weights, user.history_ts)
    seeds = positives[0][::-1].astype(np.int64)  # most recent first
    seeds = seeds[~np.isin(seeds, unfinished)]
    index = model.neighbour_index
    seeds = seeds[seeds < len(index.live)]
    seeds = seeds[index.live[seeds]][:n_rows] if len(seeds) else seeds
    if not len(seeds) or n_rows <= 0:
        return []
    labels, sims = index.query(index.vectors[seeds], size + 1 + len(seeds))
    titles = model.items.titles
    out = []
    for seed, row_labels, row_sims in zip(seeds.tolist(), labels.astype(np.int64), sims, strict=True):
        keep = (row_labels >= 0) & (row_labels < len(exclude))
        row_labels, row_sims = row_labels[keep], row_sims[keep]
        keep = ~exclude[row_labels] & (row_labels != seed)
        out.append(Row(f"because_you_watched:{model.items.item_ids[seed]}", f"Because you watched {titles[seed]}",
                       "because_you_watched", row_labels[keep], row_sims[keep].astype(np.float64),
                       extra={"seed_item_id": model.items.item_ids[seed]}))
    return out


def _genre_rows(model: RecommenderModel, retrieved: Retrieved, ranked: _Ranked, order: NDArray[np.int64],
                exclude: NDArray[np.bool_], n_rows: int, pool_n: int) -> list[Row]:
    """Rows of the genres the user's recent positive titles have most (a new user: the catalogue's most watched
    genres), each the candidates of that genre."""
    if n_rows <= 0:
        return []
    user = retrieved.user
    recent = most_recent(recent_positives(user.history_items, user.history_weights, user.history_ts),
                         GENRE_HISTORY)[0].astype(np.int64)
    genres = model.items.genre_matrix
    if len(recent):
        affinity = genres[recent].sum(axis=0)
    else:
        popularity = model.items.popularity
        affinity = popularity @ genres[: len(popularity)]
    top = [g for g in np.argsort(-affinity, kind="stable")[:n_rows].tolist() if affinity[g] > 0]
    vocab = model.items.genre_vocab
    ordered = ranked.rows[order]  # candidates best first
    # After the candidates, the genre's most popular titles the retrieval left out (few candidates: a new user
    # while the live trending list is young).
    popular = _allowed(_popularity_order(model), exclude)
    popular = popular[ranked.position[popular] < 0]
    out = []
    for g in top:
        members = np.concatenate([ordered[genres[ordered, g] > 0], popular[genres[popular, g] > 0][:pool_n]])
        out.append(Row(f"genre:{vocab[g]}", vocab[g], "genre", members, np.zeros(len(members)),
                       extra={"genre": vocab[g]}))
    return out


def _continue_row(model: RecommenderModel, retrieved: Retrieved,
                  continue_watching: Sequence[tuple[str, int, int]]) -> Row | None:
    index = model.items.index
    known = [(index[i], p) for i, _, p in continue_watching if i in index]
    if not known:
        return None
    rows = np.array([r for r, _ in known], np.int64)
    progress = np.array([p / 1000 for _, p in known], np.float64)
    keep = model.items.available[rows]
    limit = retrieved.user.maturity_limit
    if limit is not None:
        keep &= model.items.maturity[rows] <= limit
    if not keep.any():
        return None
    return Row("continue_watching", "Continue watching", "continue_watching", rows[keep],
               np.zeros(int(keep.sum())), progress=progress[keep])


def _worth(pool: NDArray[np.int64], ranked: _Ranked, used: NDArray[np.bool_]) -> tuple[float, NDArray[np.int64]]:
    """(the engagement share of the first screen of the row without ``used`` titles, the row's positions left)."""
    left = np.flatnonzero(~used[pool])
    pos = ranked.position[pool[left[:SCREEN_ITEMS]]]
    return float(ranked.share[pos[pos >= 0]].sum()), left


def build_rows(model: RecommenderModel, hreq: HomepageRequest, retrieved: Retrieved, snap: Snapshot,
               scores: NDArray[np.floating], now: int, post: PostConfig,
               continue_watching: Sequence[tuple[str, int, int]] = ()) -> list[Row]:
    """The page's rows, best first (see the module docstring)."""
    req = hreq.base
    per_row = hreq.per_row
    pool_n = POOL_FACTOR * per_row
    ranked = _ranked(model, retrieved, scores, now, post)
    exclude = retrieved.exclude
    assert exclude is not None, "retrieve() sets the exclusions"
    order = np.argsort(-ranked.adjusted, kind="stable")
    t = model.items
    rows: list[Row] = [Row("top_picks", "Top picks for you", "top_picks", ranked.rows[order],
                           ranked.adjusted[order])]
    cw = _continue_row(model, retrieved, continue_watching)
    unfinished = cw.items if cw is not None else np.zeros(0, np.int64)
    for row in _byw_rows(model, retrieved, exclude, hreq.byw_rows, pool_n, unfinished):
        row.items = _personal(row.items, ranked, pool_n)
        rows.append(row)
    trending = [("country", "trending_country", f"Trending in {req.country}" if req.country else ""),
                ("device", "trending_device", f"Popular on {DEVICE_NAMES.get(req.device or '', req.device)}"),
                ("all", "trending", "Trending now")]
    for label, row_id, title in trending:
        pool = _allowed(_trending_pool(model, snap, label), exclude)[:pool_n]
        if len(pool):
            rows.append(Row(row_id, title, row_id, _personal(pool, ranked, pool_n), np.zeros(len(pool))))
    released, _ = release_candidates(model, snap, now, pool_n, exclude)
    if len(released):
        pool = released.astype(np.int64)
        rows.append(Row("new_releases", "New releases", "new_releases", _personal(pool, ranked, pool_n),
                        np.zeros(len(pool))))
    rows += _genre_rows(model, retrieved, ranked, order, exclude, hreq.genre_rows, pool_n)
    for row in rows:  # every row's scores: the ranker's after the rules, 0 for titles it did not score
        pos = ranked.position[row.items]
        if row.reason != "because_you_watched":
            row.scores = np.where(pos >= 0, ranked.adjusted[np.maximum(pos, 0)], 0.0)

    used = np.zeros(len(t), bool)
    page: list[Row] = []
    if cw is not None:  # pinned first; its titles are watched ones, no other row has them
        cw.items, cw.scores = cw.items[:per_row], cw.scores[:per_row]
        cw.progress = cw.progress[:per_row] if cw.progress is not None else None
        cw.worth = 1.0
        page.append(cw)
    while rows and len(page) < hreq.rows:
        valued = [_worth(row.items, ranked, used) for row in rows]
        best = max(range(len(rows)), key=lambda i: (valued[i][0], len(valued[i][1]) >= MIN_ITEMS, -i))
        row, (worth, left) = rows.pop(best), valued[best]
        if len(left) < MIN_ITEMS:
            if all(len(v[1]) < MIN_ITEMS for v in valued):
                break
            continue
        take = left[:per_row]
        row.items, row.scores, row.worth = row.items[take], row.scores[take], worth
        used[row.items] = True
        page.append(row)
    return page


def row_payload(model: RecommenderModel, retrieved: Retrieved | None, row: Row) -> dict[str, Any]:
    """A row as the API answers it: its titles with title, genres, year, score and sources (the retrieval sources
    that proposed each title; the row's reason for the others, and for every title without ``retrieved``)."""
    catalog = model.items.catalog
    ids = model.items.ids[row.items].tolist() if len(row.items) else []
    sources: list[list[str]] = [[] for _ in ids]
    cands = retrieved.candidates if retrieved is not None else None
    if cands is not None and len(cands) and len(row.items):
        # Candidates' rows are sorted: one binary search finds the row's titles among them.
        at = np.minimum(np.searchsorted(cands.items, row.items), len(cands) - 1)
        found = np.flatnonzero(cands.items[at] == row.items)
        for slot, names in zip(found.tolist(), source_names(cands, at[found]), strict=True):
            sources[slot] = names
    items = []
    for slot, (item_id, r, s) in enumerate(zip(ids, row.items.tolist(), row.scores.tolist(), strict=True)):
        year = int(catalog.year[r])
        item: dict[str, Any] = {"item_id": item_id, "title": catalog.titles[r], "genres": list(catalog.genres[r]),
                                "year": year or None, "score": round(float(s), 6),
                                "sources": sources[slot] or [row.reason]}
        if row.progress is not None:
            item["progress"] = round(float(row.progress[slot]), 3)
        items.append(item)
    return {"id": row.id, "title": row.title, "reason": row.reason, "score": round(row.worth, 6), **row.extra,
            "items": items}
