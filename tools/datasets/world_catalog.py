"""The catalogue of the synthetic world: titles, their latent vectors and their popularity over time.

Each title has a *primary genre* (one of :data:`GENRES`), up to two secondary genres and a small
"style" vector (:data:`STYLE_DIMS` floats). A user's taste is a logit per genre plus a style vector
of the same size, so ``taste · item`` is the user's genre logit for the title's primary genre plus
``style_user · style_item``; :mod:`tools.datasets.world_sessions` samples choices from
``popularity × exp(taste · item)``. Tags are derived from the style vector (the two strongest
dimensions) and cast from per-genre actor pools, so the metadata carries real signal for
content-based models rather than decoration.

Popularity is Zipf over a random ranking of the titles. A share of the titles are *new releases*:
their ``item_upsert`` is inside the log span and they get a popularity boost that decays
exponentially after release. A few titles leave the catalogue (``item_remove``) during the span.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from schemas.events import MATURITY_ORDER, ItemRemove, ItemUpsert, encode

GENRES: Final[tuple[str, ...]] = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family", "Fantasy",
    "Horror", "Kids", "Music", "Mystery", "Romance", "Sci-Fi", "Sport", "Thriller", "War", "Western",
    "Reality",
)
# How common each genre is as a primary genre (drama and comedy dominate real catalogues).
_GENRE_SHARE: Final = np.array(
    [9, 5, 5, 12, 6, 6, 14, 4, 4, 6, 4, 2, 4, 6, 5, 2, 6, 2, 1, 3], dtype=np.float64
)
KID_GENRES: Final[frozenset[int]] = frozenset(
    GENRES.index(g) for g in ("Adventure", "Animation", "Comedy", "Family", "Fantasy", "Kids", "Music")
)
ADULT_GENRES: Final[frozenset[int]] = frozenset(
    GENRES.index(g) for g in ("Crime", "Horror", "Thriller", "War")
)
# P(maturity rating | primary genre kind), over MATURITY_ORDER = G, PG, PG-13, R, NC-17, NR.
_MATURITY_KID: Final = np.array([0.45, 0.45, 0.08, 0.0, 0.0, 0.02])
_MATURITY_ADULT: Final = np.array([0.0, 0.03, 0.30, 0.60, 0.05, 0.02])
_MATURITY_FACTUAL: Final = np.array([0.10, 0.30, 0.30, 0.10, 0.0, 0.20])
_MATURITY_OTHER: Final = np.array([0.03, 0.17, 0.45, 0.30, 0.02, 0.03])

STYLE_DIMS: Final = 8
# One tag per sign of each style dimension, so tags describe the latent vector.
_STYLE_TAGS: Final[tuple[tuple[str, str], ...]] = (
    ("dark", "light-hearted"), ("slow burn", "fast-paced"), ("cerebral", "escapist"),
    ("gritty", "glossy"), ("romantic", "cynical"), ("quirky", "classic"), ("epic", "intimate"),
    ("violent", "gentle"),
)
_EXTRA_TAGS: Final[tuple[str, ...]] = (
    "based on a true story", "award-winning", "cult classic", "ensemble cast", "strong female lead",
    "coming of age", "time travel", "heist", "small town", "period piece", "binge-worthy",
    "critically acclaimed", "twist ending", "book adaptation", "anthology", "road trip", "space",
    "musical numbers", "found family", "revenge",
)
_ADJ: Final = (
    "Silent", "Broken", "Golden", "Last", "Hidden", "Crimson", "Distant", "Electric", "Frozen", "Lost",
    "Midnight", "Savage", "Secret", "Burning", "Hollow", "Iron", "Wild", "Northern", "Velvet", "Quiet",
    "Restless", "Shattered", "Endless", "Little", "Dark", "Bright", "Fading", "Stolen", "Crooked", "Eternal",
)
_NOUN: Final = (
    "River", "Empire", "Garden", "Signal", "Harbor", "Kingdom", "Mirror", "Frontier", "Station", "Orchard",
    "Protocol", "Echo", "Horizon", "Lantern", "Machine", "Voyage", "Citadel", "Storm", "Canyon", "Island",
    "Tide", "Engine", "Witness", "Summer", "Winter", "Legacy", "Circuit", "Crown", "Shadow", "Compass",
)
_PLACE: Final = (
    "Avalon", "Brookfield", "Cairo", "Dover", "Eldridge", "Fairhaven", "Granada", "Havana", "Istanbul",
    "Juneau", "Kyoto", "Lisbon", "Marseille", "Nairobi", "Oslo", "Prague", "Quebec", "Reno", "Seoul",
    "Tangier", "Utrecht", "Valparaiso", "Warsaw", "Yukon", "Zanzibar",
)
_FIRST: Final = (
    "Ava", "Ben", "Carla", "Dev", "Elena", "Felix", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Liam",
    "Maya", "Nikolai", "Olivia", "Pablo", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Ximena",
    "Yusuf", "Zoe", "Amara", "Bruno", "Chloe", "Dmitri", "Esme", "Farid", "Gia", "Henrik", "Ivy", "Jae",
    "Kofi", "Lena", "Marco", "Nadia", "Omar", "Priya", "Rafael", "Sofia", "Theo", "Valentina", "Will",
    "Yara", "Aiden", "Bianca",
)
_LAST: Final = (
    "Abbott", "Bauer", "Castillo", "Dubois", "Eriksen", "Fontaine", "Garcia", "Haddad", "Ito", "Jensen",
    "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero", "Rossi", "Silva",
    "Tanaka", "Ueda", "Vargas", "Whitfield", "Xu", "Yilmaz", "Zielinski", "Adeyemi", "Brennan", "Chen",
    "Delgado", "Everett", "Fischer", "Gallagher", "Hartmann", "Iqbal", "Jovanovic", "Kim", "Laurent",
    "Mendes", "Novak", "Oyelaran", "Park", "Reyes", "Sato", "Thornton", "Varga", "Weiss", "Young",
    "Zhang", "Mbeki",
)

NEW_RELEASE_SHARE: Final = 0.07
REMOVED_SHARE: Final = 0.005
UNAVAILABLE_SHARE: Final = 0.02
ZIPF_ALPHA: Final = 1.0
# A new release is this many times more popular right after release, decaying with RELEASE_TAU_DAYS.
RELEASE_BOOST: Final = 25.0
RELEASE_TAU_DAYS: Final = 3.0
_DAY_MS: Final = 86_400_000
_YEAR_MS: Final = 365 * _DAY_MS


@dataclass(slots=True)
class Catalog:
    """Per-title arrays (index = item index) plus what is needed to write ``catalog.jsonl``."""

    ids: list[str]
    genre: NDArray[np.int64]  # primary genre index
    genres: list[list[int]]  # primary first, then secondaries
    style: NDArray[np.float32]  # (items, STYLE_DIMS)
    base_pop: NDArray[np.float64]  # Zipf prior, sums to 1
    maturity: NDArray[np.int8]  # index into MATURITY_ORDER
    duration: NDArray[np.float64]  # seconds
    upsert_ts: NDArray[np.int64]  # when the item_upsert is published (release for new titles)
    remove_ts: NDArray[np.int64]  # when the item_remove is published; int64 max if never
    playable: NDArray[np.bool_]  # available=True in the upsert
    is_new: NDArray[np.bool_]
    titles: list[str]
    tags: list[list[str]]
    cast: list[list[str]]
    year: NDArray[np.int64]
    release_ts: NDArray[np.int64]
    is_original: NDArray[np.bool_]
    # Items sorted by primary genre: sampling inside genre g searches order[seg[g]:seg[g + 1]].
    order: NDArray[np.int64]
    seg: NDArray[np.int64]

    @property
    def n(self) -> int:
        return len(self.ids)

    def popularity(self, t0: int, t1: int) -> NDArray[np.float64]:
        """Sampling weight of every item for interactions in [t0, t1): 0 if not playable then.

        An item counts as playable only if its upsert is at or before ``t0`` and its removal is
        after ``t1`` (callers pass ``t1`` plus the longest session), so no interaction can precede
        the upsert or follow the removal whatever the event's place inside the chunk.
        """
        ok = self.playable & (self.upsert_ts <= t0) & (self.remove_ts > t1)
        pop = np.where(ok, self.base_pop, 0.0)
        new = np.flatnonzero(self.is_new & ok)
        if new.size:
            age_days = (t0 - self.upsert_ts[new]) / _DAY_MS
            pop[new] *= 1.0 + RELEASE_BOOST * np.exp(-age_days / RELEASE_TAU_DAYS)
        return pop

    def lines(self, id_prefix: str) -> Iterator[tuple[int, bytes, str]]:
        """(ts, canonical JSON, type) of every catalog event, in time order."""
        keyed: list[tuple[int, int, int]] = []  # (ts, kind 0=upsert 1=remove, item)
        keyed.extend((int(ts), 0, i) for i, ts in enumerate(self.upsert_ts.tolist()))
        never = np.iinfo(np.int64).max
        keyed.extend((int(ts), 1, i) for i, ts in enumerate(self.remove_ts.tolist()) if ts != never)
        keyed.sort()
        for n, (ts, kind, i) in enumerate(keyed):
            event_id = f"{id_prefix}{n}"
            if kind == 1:
                remove = ItemRemove(event_id=event_id, ts=ts, schema_version=1, item_id=self.ids[i])
                yield ts, encode(remove), "item_remove"
                continue
            upsert = ItemUpsert(
                event_id=event_id, ts=ts, schema_version=1, item_id=self.ids[i], title=self.titles[i],
                genres=[GENRES[g] for g in self.genres[i]], tags=self.tags[i], cast=self.cast[i],
                release_ts=int(self.release_ts[i]), year=int(self.year[i]),
                maturity_rating=MATURITY_ORDER[self.maturity[i]],
                is_original=bool(self.is_original[i]), available=bool(self.playable[i]),
                duration_seconds=float(self.duration[i]),
            )
            yield ts, encode(upsert), "item_upsert"


def _year_start_ms(year: int) -> int:
    return int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


def build_catalog(rng: np.random.Generator, n_items: int, start_ts: int, span_ms: int) -> Catalog:
    """Draw a catalogue of ``n_items`` titles; new releases and removals fall inside the span."""
    m = n_items
    genre = rng.choice(len(GENRES), size=m, p=_GENRE_SHARE / _GENRE_SHARE.sum()).astype(np.int64)
    n_secondary = rng.choice(3, size=m, p=[0.35, 0.45, 0.20])
    secondary = rng.integers(0, len(GENRES), size=(m, 2))
    style = rng.standard_normal((m, STYLE_DIMS)).astype(np.float32)

    # Zipf over a random ranking: the ranking is independent of genre, so hits are everywhere.
    ranks = rng.permutation(m)
    base_pop = (1.0 / (ranks + 1.0) ** ZIPF_ALPHA).astype(np.float64)
    base_pop /= base_pop.sum()

    maturity = np.empty(m, dtype=np.int8)
    u = rng.random(m)
    for g in range(len(GENRES)):
        probs = (
            _MATURITY_KID if g in KID_GENRES
            else _MATURITY_ADULT if g in ADULT_GENRES
            else _MATURITY_FACTUAL if GENRES[g] in ("Documentary", "Reality")
            else _MATURITY_OTHER
        )
        sel = genre == g
        maturity[sel] = np.searchsorted(np.cumsum(probs / probs.sum()), u[sel], side="right").clip(0, 5)

    # Movies (~60%) run 70-200 min, episodes 20-60 min.
    is_movie = rng.random(m) < 0.6
    episode = rng.choice([22, 30, 45, 55], size=m) + rng.integers(-2, 4, m)
    duration = np.where(is_movie, np.clip(rng.normal(105, 20, m), 70, 200), episode)
    duration = np.round(duration * 60.0)

    n_new = round(m * NEW_RELEASE_SHARE) if m >= 20 else 0
    is_new = np.zeros(m, dtype=bool)
    is_new[rng.choice(m, size=n_new, replace=False)] = True
    upsert_ts = np.full(m, start_ts, dtype=np.int64)
    # Releases land between 2% and 95% of the span so that each has room for its boost to show.
    upsert_ts[is_new] = start_ts + (rng.uniform(0.02, 0.95, n_new) * span_ms).astype(np.int64)
    playable = is_new | (rng.random(m) >= UNAVAILABLE_SHARE)

    remove_ts = np.full(m, np.iinfo(np.int64).max, dtype=np.int64)
    candidates = np.flatnonzero(~is_new & playable)
    n_removed = int(m * REMOVED_SHARE)
    if n_removed and candidates.size > n_removed + 1:
        removed = rng.choice(candidates, size=n_removed, replace=False)
        remove_ts[removed] = start_ts + (rng.uniform(0.1, 0.95, n_removed) * span_ms).astype(np.int64)

    # Kids' profiles must always find something: guarantee one G-rated title that is there all along.
    always = ~is_new & playable & (remove_ts == np.iinfo(np.int64).max)
    if not (always & (maturity == 0)).any():
        idx = int(np.flatnonzero(always)[0]) if always.any() else 0
        playable[idx], is_new[idx], upsert_ts[idx] = True, False, start_ts
        remove_ts[idx] = np.iinfo(np.int64).max
        maturity[idx] = 0

    start_year = dt.datetime.fromtimestamp(start_ts / 1000, tz=dt.UTC).year
    # release_ts must not be negative, so nothing predates 1970.
    age_years = np.minimum(rng.exponential(12.0, m).astype(np.int64), max(0, start_year - 1 - 1970))
    year = np.where(is_new, 0, start_year - 1 - age_years)
    release_ts = np.empty(m, dtype=np.int64)
    day_in_year = rng.integers(0, 360, m)
    year_ms = {y: _year_start_ms(int(y)) for y in np.unique(year[~is_new]).tolist()}
    for i in np.flatnonzero(~is_new).tolist():
        release_ts[i] = year_ms[int(year[i])] + int(day_in_year[i]) * _DAY_MS
    for i in np.flatnonzero(is_new).tolist():
        release_ts[i] = upsert_ts[i]
        year[i] = dt.datetime.fromtimestamp(int(upsert_ts[i]) / 1000, tz=dt.UTC).year
    is_original = rng.random(m) < np.where(is_new, 0.5, 0.12)

    order = np.argsort(genre, kind="stable")
    seg = np.searchsorted(genre[order], np.arange(len(GENRES) + 1))

    titles = _titles(rng, m)
    tags = _tags(rng, style)
    cast = _cast(rng, genre, order, seg)
    genres_lists: list[list[int]] = []
    for g, k, (s1, s2) in zip(genre.tolist(), n_secondary.tolist(), secondary.tolist(), strict=True):
        gl = [g]
        for s in (s1, s2)[:k]:
            if s not in gl:
                gl.append(s)
        genres_lists.append(gl)

    width = max(6, len(str(m - 1)))
    return Catalog(
        ids=[f"i{i:0{width}d}" for i in range(m)], genre=genre, genres=genres_lists, style=style,
        base_pop=base_pop, maturity=maturity, duration=duration.astype(np.float64), upsert_ts=upsert_ts,
        remove_ts=remove_ts, playable=playable, is_new=is_new, titles=titles, tags=tags, cast=cast,
        year=year.astype(np.int64), release_ts=release_ts, is_original=is_original, order=order, seg=seg,
    )


def _titles(rng: np.random.Generator, m: int) -> list[str]:
    pattern = rng.integers(0, 6, m).tolist()
    a = rng.integers(0, len(_ADJ), m).tolist()
    n1 = rng.integers(0, len(_NOUN), m).tolist()
    n2 = rng.integers(0, len(_NOUN), m).tolist()
    p = rng.integers(0, len(_PLACE), m).tolist()
    f = rng.integers(0, len(_FIRST), m).tolist()
    sequel = rng.random(m) < 0.06
    out: list[str] = []
    for i in range(m):
        k = pattern[i]
        if k == 0:
            t = f"The {_ADJ[a[i]]} {_NOUN[n1[i]]}"
        elif k == 1:
            t = f"{_NOUN[n1[i]]} of {_NOUN[n2[i]]}s"
        elif k == 2:
            t = f"{_FIRST[f[i]]}'s {_NOUN[n1[i]]}"
        elif k == 3:
            t = f"{_ADJ[a[i]]} {_PLACE[p[i]]}"
        elif k == 4:
            t = f"The {_NOUN[n1[i]]} at {_PLACE[p[i]]}"
        else:
            t = f"{_ADJ[a[i]]} {_NOUN[n1[i]]}: {_ADJ[(a[i] + 7) % len(_ADJ)]} {_NOUN[n2[i]]}"
        out.append(f"{t} II" if sequel[i] else t)
    return out


def _tags(rng: np.random.Generator, style: NDArray[np.float32]) -> list[list[str]]:
    # The two strongest style dimensions name the title's tone; extras are plain noise tags.
    top = np.argsort(-np.abs(style), axis=1)[:, :2]
    sign = np.take_along_axis(style, top, axis=1) >= 0
    n_extra = rng.choice(3, size=len(style), p=[0.4, 0.4, 0.2]).tolist()
    extra = rng.integers(0, len(_EXTRA_TAGS), (len(style), 2)).tolist()
    out: list[list[str]] = []
    for (d1, d2), (s1, s2), k, (e1, e2) in zip(top.tolist(), sign.tolist(), n_extra, extra, strict=True):
        tags = [_STYLE_TAGS[d1][0 if s1 else 1], _STYLE_TAGS[d2][0 if s2 else 1]]
        for e in (e1, e2)[:k]:
            if _EXTRA_TAGS[e] not in tags:
                tags.append(_EXTRA_TAGS[e])
        out.append(tags)
    return out


def _cast(
    rng: np.random.Generator, genre: NDArray[np.int64], order: NDArray[np.int64], seg: NDArray[np.int64]
) -> list[list[str]]:
    """Cast lists: actors have a home genre and a Zipf fame, so stars recur across many titles."""
    m = len(genre)
    n_actors = min(len(_FIRST) * len(_LAST), max(200, m // 3))
    pairs = rng.permutation(len(_FIRST) * len(_LAST))[:n_actors]
    names = [f"{_FIRST[p // len(_LAST)]} {_LAST[p % len(_LAST)]}" for p in pairs.tolist()]
    home = rng.integers(0, len(GENRES), n_actors)
    fame = 1.0 / (rng.permutation(n_actors) + 1.0) ** 0.9
    by_home = np.argsort(home, kind="stable")
    home_seg = np.searchsorted(home[by_home], np.arange(len(GENRES) + 1))
    cum = np.cumsum(fame[by_home])
    lo = np.concatenate([[0.0], cum])[home_seg[:-1]]
    hi = np.concatenate([[0.0], cum])[home_seg[1:]]

    slots = 6
    n_cast = np.where(np.isin(genre, [GENRES.index("Documentary"), GENRES.index("Reality")]), 2, 0)
    n_cast = n_cast + rng.integers(2, slots + 1, m)
    n_cast = np.minimum(n_cast, slots)
    g = np.repeat(genre[:, None], slots, axis=1)
    # 70% of the cast come from the title's genre pool (if that pool is not empty), the rest from anyone.
    from_home = (rng.random((m, slots)) < 0.7) & (hi[g] > lo[g])
    u = rng.random((m, slots))
    target = np.where(from_home, lo[g] + u * (hi[g] - lo[g]), u * cum[-1])
    picked = by_home[np.minimum(np.searchsorted(cum, target, side="right"), n_actors - 1)]
    out: list[list[str]] = []
    for row, k in zip(picked.tolist(), n_cast.tolist(), strict=True):
        out.append([names[a] for a in dict.fromkeys(row[:k])])
    return out
