"""Sessions of the synthetic world, simulated one time chunk at a time with vectorised numpy.

For a chunk ``[t0, t1)`` the caller asks for ``n`` session starts. Each start picks a user in
proportion to ``activity × hour_profile(local hour)`` (users are grouped by country and hour profile,
so this costs a search in a cumulative sum, not a pass over all users). A session is an
``impression`` (a slate of titles, 80% of sessions), then one to five titles: ``click`` (when the
title was on the slate) and ``play``, then ``progress`` heartbeats and ``complete``, or ``skip``,
sometimes ``rating`` and ``add_to_list``. Whether a title is skipped, finished or rated depends on
the user's affinity for it, so the negative and explicit signals carry information too.

Choices: P(item) ∝ popularity(item, t) × exp(genre_logit[user, genre(item)] + β style_user·style_item),
over the titles in the catalogue at the time and within the profile's maturity limit. Sampled in two
stages, without scoring the whole catalogue per choice: the genre from
``softmax(genre_logit + log(popularity mass of the genre))``, then the title inside the genre by
sampling-importance-resampling (16 candidates drawn by popularity, one kept with probability
``softmax(β style·style)``). The approximations: the genre stage uses the genre's popularity mass
rather than its style-weighted mass, and SIR with 16 candidates softens the style preference a little.

Two sessions of one user never overlap: a session starting before the user's previous one ended
(plus a 15-minute gap) is dropped, and the caller's rate controller asks for more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from schemas.events import DEVICES
from tools.datasets.world_catalog import GENRES, Catalog
from tools.datasets.world_users import COUNTRIES, COUNTRY_TZ, HOUR_PROFILES, HOUR_TYPES, TasteModel, Users

HOUR_MS: Final = 3_600_000
# No session lasts longer (5 titles of at most 200 minutes plus browsing); titles are only offered
# in a chunk if they stay in the catalogue until this long after the chunk ends.
MAX_SESSION_MS: Final = 24 * HOUR_MS
SESSION_GAP_MS: Final = 15 * 60_000
MAX_TITLES: Final = 5
SLATE: Final = 10
SIR_CANDIDATES: Final = 16
OFFSET_BIN_MS: Final = 5 * 60_000
OFFSET_BINS: Final = MAX_SESSION_MS // OFFSET_BIN_MS + 1

# Event kinds, in the order they happen inside a title (the sort is by ts; these are just labels).
UPSERT, IMPRESSION, CLICK, PLAY, ADD_TO_LIST, PROGRESS, COMPLETE, SKIP, RATING = range(9)
KIND_NAMES: Final[tuple[str, ...]] = (
    "user_upsert", "impression", "click", "play", "add_to_list", "progress", "complete", "skip", "rating",
)


@dataclass(slots=True)
class Rows:
    """A column-wise batch of events (not yet ordered); ``sess`` is a global session number."""

    ts: NDArray[np.int64]
    kind: NDArray[np.int8]
    user: NDArray[np.int64]
    item: NDArray[np.int64]
    sess: NDArray[np.int64]
    device: NDArray[np.int8]
    value: NDArray[np.float64]  # watched seconds, rating, or click position

    @staticmethod
    def empty() -> Rows:
        return Rows(
            np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0, np.int64), np.empty(0, np.int64),
            np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0, np.float64),
        )

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: NDArray[np.int64] | slice) -> Rows:
        return Rows(*(getattr(self, f)[idx] for f in Rows.__slots__))

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in Rows.__slots__))


@dataclass(slots=True)
class ChunkResult:
    rows: Rows
    slates: dict[int, list[int]] = field(default_factory=dict)  # session number -> item indices
    requested: int = 0
    kept: int = 0
    # Lines by offset from their session's start, in OFFSET_BIN_MS bins: how a session's lines
    # spread over time, which the rate controller needs near the end of the span.
    offsets: NDArray[np.int64] = field(default_factory=lambda: np.zeros(OFFSET_BINS, np.int64))


class SessionSimulator:
    def __init__(
        self, rng: np.random.Generator, catalog: Catalog, users: Users, taste: TasteModel
    ) -> None:
        self.rng, self.catalog, self.users, self.taste = rng, catalog, users, taste
        self.sessions = 0  # sessions kept so far: the next session number
        # Users sorted by group with a cumulative activity: a group's users are one contiguous range.
        n_groups = len(COUNTRIES) * len(HOUR_TYPES)
        self.by_group = np.argsort(users.group, kind="stable")
        self.group_seg = np.searchsorted(users.group[self.by_group], np.arange(n_groups + 1))
        self.user_cum = np.cumsum(users.activity[self.by_group])
        cum0 = np.concatenate([[0.0], self.user_cum])
        self.group_lo = cum0[self.group_seg[:-1]]
        self.group_hi = cum0[self.group_seg[1:]]
        group_activity = self.group_hi - self.group_lo
        # weight[h, g]: rate of sessions from group g at UTC hour h.
        countries = np.arange(n_groups) // len(HOUR_TYPES)
        types = np.arange(n_groups) % len(HOUR_TYPES)
        local = (np.arange(24)[:, None] + COUNTRY_TZ[countries][None, :]) % 24
        self.group_weight = group_activity[None, :] * HOUR_PROFILES[types[None, :], local]
        self.group_cdf = np.cumsum(self.group_weight, axis=1)
        # Maturity levels in use (distinct profile limits); each gets its own copy of the sampling
        # layout with the titles above it zeroed, so no draw ever breaks a profile's limit.
        self.levels = np.unique(users.limit).astype(np.int64)
        self.level_of = np.searchsorted(self.levels, users.limit).astype(np.int64)
        self._prepared: tuple[int, int] | None = None

    def hourly_weight(self) -> NDArray[np.float64]:
        """Relative rate of session starts at each UTC hour of day (sums over all users)."""
        return self.group_weight.sum(axis=1)

    # -- choices ------------------------------------------------------------------------------

    def _prepare(self, t0: int, t1: int) -> None:
        """Popularity of every title for this chunk, laid out for per-level, per-genre sampling.

        One cumulative sum runs over ``levels × items`` (items in genre order, titles above the
        level zeroed), so a draw for any (level, genre) is one ``searchsorted`` in one array and a
        batch of rows with different levels and genres is still a single vectorised call.
        """
        if self._prepared == (t0, t1):
            return
        cat = self.catalog
        m, seg = cat.n, cat.seg
        pop = cat.popularity(t0, t1 + MAX_SESSION_MS)[cat.order]
        ok = cat.maturity[cat.order][None, :] <= self.levels[:, None]
        flat = np.where(ok, pop[None, :], 0.0).ravel()
        self.cum = np.cumsum(flat)
        cum0 = np.concatenate([[0.0], self.cum])
        base = (np.arange(len(self.levels)) * m)[:, None]
        self.lo = cum0[base + seg[None, :-1]]  # (levels, genres)
        self.width = cum0[base + seg[None, 1:]] - self.lo
        with np.errstate(divide="ignore"):
            self.log_mass = np.log(self.width).astype(np.float32)  # -inf: nothing to draw there
        # Rounding can push a draw just past its range's end: clamp to the range's last live title.
        last_live = np.maximum.accumulate(np.where(flat > 0, np.arange(len(flat)), -1))
        self.seg_last = last_live[np.maximum(base + seg[None, 1:] - 1, 0)]
        levels = np.arange(len(self.levels))
        self.all_lo, self.all_hi = cum0[levels * m], cum0[(levels + 1) * m]
        self.all_last = last_live[(levels + 1) * m - 1]
        self._prepared = (t0, t1)

    def _choose(self, user: NDArray[np.int64], candidates: int = SIR_CANDIDATES) -> NDArray[np.int64]:
        """One title per entry of ``user``, by taste × popularity (see the module docstring)."""
        rng = self.rng
        level = self.level_of[user]
        logits = TasteModel.genre_logits(self.users, user) + self.log_mass[level]
        genre = _categorical(rng, logits)
        lo, width = self.lo[level, genre], self.width[level, genre]
        target = lo[:, None] + rng.random((len(user), candidates)) * width[:, None]
        pos = np.searchsorted(self.cum, target, side="right")
        cand = self.catalog.order[np.minimum(pos, self.seg_last[level, genre][:, None]) % self.catalog.n]
        style = TasteModel.style(self.users, user)
        score = self.taste.model.style_beta * np.einsum("bkd,bd->bk", self.catalog.style[cand], style)
        return cand[np.arange(len(user)), _categorical(rng, score)]

    def _popular(self, user: NDArray[np.int64]) -> NDArray[np.int64]:
        """Titles by popularity alone, within each user's maturity limit (a slate's generic rows)."""
        level = self.level_of[user]
        target = self.all_lo[level] + self.rng.random(len(user)) * (self.all_hi - self.all_lo)[level]
        pos = np.minimum(np.searchsorted(self.cum, target, side="right"), self.all_last[level])
        return self.catalog.order[pos % self.catalog.n]

    # -- sessions -----------------------------------------------------------------------------

    def chunk(self, t0: int, t1: int, n: int) -> ChunkResult:
        """Simulate ``n`` requested session starts in ``[t0, t1)``; some are dropped as overlaps."""
        if n <= 0:
            return ChunkResult(Rows.empty())
        rng, users, cat = self.rng, self.users, self.catalog
        self._prepare(t0, t1)
        cdf = self.group_cdf[(t0 // HOUR_MS) % 24]
        group = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)
        target = self.group_lo[group] + rng.random(n) * (self.group_hi - self.group_lo)[group]
        pos = np.clip(np.searchsorted(self.user_cum, target, side="right"), self.group_seg[group],
                      self.group_seg[group + 1] - 1)
        user = self.by_group[pos]
        start = t0 + rng.integers(0, max(1, t1 - t0), n)
        order = np.argsort(start, kind="stable")
        user, start = user[order], start[order]
        self.taste.advance(users, np.unique(user), t0)

        # Titles of each session, flattened; tsess maps a title to its session.
        n_titles = np.minimum(rng.geometric(0.5, n), MAX_TITLES)
        tsess = np.repeat(np.arange(n), n_titles)
        first = np.cumsum(n_titles) - n_titles
        tj = np.arange(len(tsess)) - first[tsess]  # index of the title inside its session
        tuser = user[tsess]
        item = self._choose(tuser)
        has_slate = rng.random(n) < 0.8
        from_slate = has_slate[tsess] & (rng.random(len(tsess)) < 0.75)

        # Affinity drives skip / complete / rating: the negative and explicit signals mean something.
        genre_logit = TasteModel.genre_logits(users, tuser)[np.arange(len(tsess)), cat.genre[item]]
        style_dot = np.einsum("bd,bd->b", cat.style[item], TasteModel.style(users, tuser))
        q = 1.0 / (1.0 + np.exp(-(genre_logit + self.taste.model.style_beta * style_dot - 1.5)))
        t = len(tsess)
        skip = rng.random(t) < 0.05 + 0.45 * (1.0 - q)
        complete = ~skip & (rng.random(t) < 0.3 + 0.6 * q)
        dur = cat.duration[item]
        watched = np.where(
            skip, np.minimum(rng.uniform(10, 300, t), np.maximum(10.0, 0.2 * dur)),
            np.where(complete, dur * rng.uniform(0.92, 1.0, t), dur * rng.uniform(0.15, 0.85, t)),
        )
        watched = np.round(watched, 1)
        # Heartbeats: one per ~45 minutes (so they do not crowd out plays in a fixed line budget);
        # an abandoned title's last heartbeat marks where it stopped.
        beats = np.minimum(watched // 2700, 2).astype(np.int64)
        beats = np.where(skip, 0, np.where(complete, beats, beats + 1))
        rated = rng.random(t) < np.where(complete, 0.15, np.where(skip, 0.04, 0.06))
        rating = np.clip(np.round((1.0 + 4.0 * q + rng.normal(0, 0.6, t)) * 2.0) / 2.0, 0.5, 5.0)
        listed = rng.random(t) < 0.03 + 0.04 * q

        # Timeline (ms): browse, click, play one second later, watch, maybe rate.
        browse = rng.uniform(5.0, 90.0, t)
        span = browse + 1.0 + watched + np.where(rated, 30.0, 5.0)
        offset = np.cumsum(span) - span
        offset -= offset[first][tsess]
        click_ts = start[tsess] + ((offset + browse) * 1000).astype(np.int64)
        play_ts = click_ts + 1000
        end_ts = play_ts + (watched * 1000).astype(np.int64)
        session_end = start + (np.bincount(tsess, weights=span, minlength=n) * 1000).astype(np.int64)

        keep, gid, new_user = self._keep(user, start, session_end)
        keep_t = keep[tsess]
        res = ChunkResult(Rows.empty(), requested=n, kept=int(keep.sum()))

        r = rng.random(n)
        device = np.where(r < 0.72, users.device1[user], np.where(
            r < 0.95, users.device2[user], rng.integers(0, len(DEVICES), n))).astype(np.int8)
        parts: list[Rows] = []
        offsets: list[NDArray[np.int64]] = []

        def add(kind: int, ts: NDArray[np.int64], rows: NDArray[np.int64], per_title: bool,
                value: NDArray[np.floating[Any]] | None = None) -> None:
            s = tsess[rows] if per_title else rows
            offsets.append(ts - start[s])
            parts.append(Rows(
                ts.astype(np.int64), np.full(len(rows), kind, np.int8), user[s],
                item[rows] if per_title else np.full(len(rows), -1, np.int64), gid[s], device[s],
                np.zeros(len(rows)) if value is None else value.astype(np.float64),
            ))

        # Listed in the order events of one session happen at equal ts (the sort is stable).
        s_new = np.flatnonzero(new_user)
        add(UPSERT, start[s_new], s_new, False)
        s_imp = np.flatnonzero(keep & has_slate)
        add(IMPRESSION, start[s_imp], s_imp, False)
        if s_imp.size:
            clickable = keep_t & from_slate
            res.slates, clicked, position = self._slates(s_imp, user, gid, tsess, tj, item, clickable)
            add(CLICK, click_ts[clicked], clicked, True, value=position)
        x = np.flatnonzero(keep_t)
        add(PLAY, play_ts[x], x, True)
        y = np.flatnonzero(keep_t & listed)
        add(ADD_TO_LIST, play_ts[y] + 1500 + (browse[y] * 30).astype(np.int64), y, True)
        # Heartbeats: beat k of b at k/(b+1) of the watch for finished titles, k/b for abandoned ones.
        z = np.flatnonzero(keep_t & (beats > 0))
        zr = np.repeat(z, beats[z])
        k = np.arange(len(zr)) - np.repeat(np.cumsum(beats[z]) - beats[z], beats[z]) + 1
        frac = k / np.where(complete[zr], beats[zr] + 1, beats[zr])
        add(PROGRESS, play_ts[zr] + (watched[zr] * frac * 1000).astype(np.int64), zr, True,
            value=np.round(watched[zr] * frac, 1))
        c = np.flatnonzero(keep_t & complete)
        add(COMPLETE, end_ts[c], c, True, value=watched[c])
        sk = np.flatnonzero(keep_t & skip)
        add(SKIP, end_ts[sk], sk, True, value=watched[sk])
        rr = np.flatnonzero(keep_t & rated)
        add(RATING, end_ts[rr] + 5000 + (browse[rr] * 100).astype(np.int64), rr, True, value=rating[rr])
        res.rows = Rows.concat(parts)
        res.offsets = np.bincount(
            np.minimum(np.concatenate(offsets) // OFFSET_BIN_MS, OFFSET_BINS - 1), minlength=OFFSET_BINS
        )
        return res

    def _keep(
        self, user: NDArray[np.int64], start: NDArray[np.int64], end: NDArray[np.int64]
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.bool_]]:
        """Drop sessions overlapping the user's previous one; number the rest; flag first sessions."""
        busy, seen = self.users.busy_until, self.users.seen
        keep = np.zeros(len(user), dtype=bool)
        new_user = np.zeros(len(user), dtype=bool)
        gid = np.full(len(user), -1, dtype=np.int64)
        n = self.sessions
        # A plain loop over sessions (not events): a user can have several sessions in one chunk.
        for i, (u, s, e) in enumerate(zip(user.tolist(), start.tolist(), end.tolist(), strict=True)):
            if s < busy[u]:
                continue
            busy[u] = e + SESSION_GAP_MS
            keep[i] = True
            gid[i] = n
            n += 1
            if not seen[u]:
                seen[u] = True
                new_user[i] = True
        self.sessions = n
        return keep, gid, new_user

    def _slates(
        self, s_imp: NDArray[np.int64], user: NDArray[np.int64], gid: NDArray[np.int64],
        tsess: NDArray[np.int64], tj: NDArray[np.int64], item: NDArray[np.int64],
        clickable: NDArray[np.bool_],
    ) -> tuple[dict[int, list[int]], NDArray[np.int64], NDArray[np.float64]]:
        """Slates shown at session start (half personalised, half popular) with the clicked titles
        placed at positions biased to the top. Returns the slates, the clicked titles, their slots."""
        rng = self.rng
        m = len(s_imp)
        slate_user = np.repeat(user[s_imp], SLATE)
        personal = rng.random(m * SLATE) < 0.5
        fill = self._popular(slate_user)
        if personal.any():
            # The slate is the old recommender's guess: a coarser draw (4 candidates) is plenty.
            fill[personal] = self._choose(slate_user[personal], candidates=4)
        fill = fill.reshape(m, SLATE)
        # Slot of the j-th title of a session: a random permutation biased towards slot 0.
        perm = np.argsort(rng.random((m, SLATE)) * (1.0 + 0.3 * np.arange(SLATE)), axis=1)
        row_of = np.full(len(user), -1, dtype=np.int64)
        row_of[s_imp] = np.arange(m)
        clicked = np.flatnonzero(clickable)
        row = row_of[tsess[clicked]]
        position = perm[row, tj[clicked]]
        fill[row, position] = item[clicked]
        slates = dict(zip(gid[s_imp].tolist(), fill.tolist(), strict=True))
        return slates, clicked, position.astype(np.float64)


def _categorical(rng: np.random.Generator, logits: NDArray[np.floating]) -> NDArray[np.int64]:
    """One draw per row from softmax(logits): inverse CDF, cheaper than a Gumbel-max (one uniform
    per row instead of two logarithms per entry). Entries at -inf are never drawn."""
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.cumsum(w, axis=1, out=w)
    # In (0, total], so a zero-weight first entry is skipped; in w's dtype to compare without upcasting.
    u = ((1.0 - rng.random(len(w))) * w[:, -1]).astype(w.dtype)
    return np.minimum((w < u[:, None]).sum(axis=1), w.shape[1] - 1)


__all__ = ["GENRES", "KIND_NAMES", "ChunkResult", "Rows", "SessionSimulator"]
