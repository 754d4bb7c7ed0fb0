"""The state behind the ranking features and its pure update code, shared by the offline replay and
the online stores.

Features are functions of the state known at time ``t`` (:mod:`models.features.rows`). That state is
built by *one* piece of code, applied to batches of events as numpy columns (:class:`EventBatch`):
offline by :mod:`models.features.offline`, which replays an event log in time order into an
:class:`InMemoryStore`, and online by the stream workers through
``online_state`` (Redis). Both call :func:`apply_user_events` and :func:`item_deltas`,
so the numbers agree bit for bit.

Decayed sums (a user's taste per genre, an item's popularity) are integers per *epoch* of
``spec.EPOCH_HALF_LIVES`` half-lives ``h``: an event of weight ``w`` at ``ts`` adds
``round(w * 2 ** ((ts - epoch_start) / h) * DECAY_SCALE)`` to the sum of its epoch
(``ts // (8 h)``). A read at ``now`` takes the sums of now's epoch and the previous one and decays
each from its start: ``sum_e S_e * 2 ** (-(now - start_e) / h) / DECAY_SCALE``, which is the
exponentially decayed sum ``sum w * 2 ** (-(now - ts) / h)`` up to the fixed-point rounding
(relative 2**-20 of one event), without the events more than 8 half-lives old (weight < 2**-8).
Why integers rather than a float ``(value, last_ts)`` decayed at every update: integer additions are
exact and associative, so the state is the same bits whatever the order and batching of the
events (offline chunks between training rows, online Kafka batches, several workers adding to one
item), the update vectorises over a whole batch with no per-event loop, and Redis can apply item
updates atomically with ``HINCRBY``.

User state (:class:`UserStates`, one row per user). The interactions topic is keyed by user id,
so one worker owns a user and applies their events in order:

- ``counts``: events (item interactions other than progress heartbeats, whose number depends on
  the client), plays, completes, skips, ratings, clicks, saves; ``rating_milli``: the sum of
  ratings in thousandths of a star;
- ``last_ts``: the newest interaction (heartbeats included); ``device``, ``country``, ``hour``: the
  last known context (codes as in :class:`EventBatch`), from the user's last event that had it;
- ``genre_epoch`` / ``genre_sums``: taste per genre, the decayed sum (half-life
  ``USER_GENRE_HALF_LIFE_MS``) of ``models.feedback.feedback_weights`` (skips count against) spread
  evenly over the item's genres; sums of the epochs ``genre_epoch - 1`` and ``genre_epoch``;
- ``recent_item`` / ``recent_ts``: the last ``RECENT_ITEMS`` distinct items with a positive
  feedback weight (stable item hashes, most recent first; -1 empty) and when;
- retention: an event more than ``USER_RETENTION_MS`` after the user's newest one resets the state
  first (the reader applies the same rule), which is what lets Redis expire idle users.

Item state, written by every worker (a title is watched by users of every partition), only ever
*added to*:

- ``counts``: plays, completes, skips, ratings, rating sum (thousandths of a star), impressions
  (one per time the title is shown), clicks, saves;
- popularity: for each half-life in ``POP_HALF_LIVES`` (1 and 7 days), epoch sums of engagement
  events (play, complete, rating, click, save; weight 1).

No global state is needed: popularity and rates are per item, with fixed priors (``spec``).

Floating point: whatever must agree between the two paths is computed by the same numpy calls on
float64 arrays (transcendentals on contiguous arrays: numpy may pick a SIMD or a scalar loop by
memory layout), and Redis stores integers only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.catalog import Catalog, CatalogTable
from models.dataset import DEVICE_CODE, KIND, KINDS, MATURITY_ORDER, EventLog
from models.features import spec
from models.features.hashing import hash_str, hash_strs
from models.feedback import feedback_weights
from schemas.events import Impression, InteractionEvent, UserUpsert

NO_TS: Final = int(np.iinfo(np.int64).min)  # "never" for timestamps in state
NO_EPOCH: Final = int(np.iinfo(np.int64).min)  # no decayed sum yet
NO_ITEM_HASH: Final = -1  # an empty slot of the recent-items list (hashes are >= 0)
_TS_BITS: Final = 43  # event times are below 2**43 ms (year 2248; the schema stops at 2100)

USER_COUNT_NAMES: Final[tuple[str, ...]] = ("ev", "play", "comp", "skip", "rate", "click", "add")
# Items keep no total: it would be one more increment per item and batch in Redis for a number
# that is the sum of the others (and no feature of spec v1 reads it).
ITEM_COUNT_NAMES: Final[tuple[str, ...]] = ("play", "comp", "skip", "rate", "rsum", "imp", "click", "add")
U_EV, U_PLAY, U_COMP, U_SKIP, U_RATE, U_CLICK, U_ADD = range(len(USER_COUNT_NAMES))
I_PLAY, I_COMP, I_SKIP, I_RATE, I_RSUM, I_IMP, I_CLICK, I_ADD = range(len(ITEM_COUNT_NAMES))


def _per_kind(values: dict[str, int], default: int) -> NDArray[np.int64]:
    out = np.full(len(KINDS), default, np.int64)
    for name, value in values.items():
        out[KIND[name]] = value
    return out


# Count column of a kind: -1 = a user-state event that is not counted (progress heartbeats: their
# number depends on the client's heartbeat interval), -2 = not an item interaction.
_USER_COL: Final = _per_kind(
    {"play": U_PLAY, "progress": -1, "complete": U_COMP, "skip": U_SKIP, "rating": U_RATE, "click": U_CLICK,
     "add_to_list": U_ADD}, -2)
_ITEM_COL: Final = _per_kind(
    {"play": I_PLAY, "progress": -1, "complete": I_COMP, "skip": I_SKIP, "rating": I_RATE, "click": I_CLICK,
     "add_to_list": I_ADD}, -2)
# Engagement events counted by popularity.
_POP_KIND: Final = _per_kind({"play": 1, "complete": 1, "rating": 1, "click": 1, "add_to_list": 1}, 0) > 0
_RATING: Final = KIND["rating"]


def decay(dt_ms: NDArray[np.int64], half_life_ms: int) -> NDArray[np.float64]:
    """``2 ** (-dt / half_life)`` for ``dt >= 0`` (negative ``dt`` counts as 0).

    The one place where state is decayed: offline and online must call the same numpy kernel on
    the same layout (a contiguous float64 array) to get the same bits.
    """
    x = np.ascontiguousarray(np.maximum(np.asarray(dt_ms, np.int64), 0).astype(np.float64) / float(half_life_ms))
    return np.exp2(-x)


def rating_milli(kind: NDArray[np.int8], value: NDArray[np.float32]) -> NDArray[np.int64]:
    """Ratings in thousandths of a star (0 for other kinds): integer sums are exact in any order."""
    return np.where(kind == _RATING, np.rint(value.astype(np.float64) * 1000.0), 0.0).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Static item data (from the catalog at training time; shipped in the model bundle)


@dataclass(frozen=True, eq=False)
class ItemStatic:
    """Per-title data that is not streamed state. Arrays have ``n_items + 1`` rows: the last row is
    the "unknown title" default, so an index of -1 selects it."""

    item_ids: list[str]
    index: dict[str, int]
    genre_vocab: list[str]
    genre_unit: NDArray[np.float64]  # (n+1, G): 1/len(genres) on the item's genres
    genre_norm: NDArray[np.float64]  # (n+1,): L2 norm of genre_unit rows
    has_genre: NDArray[np.bool_]  # (n+1,)
    primary_genre: NDArray[np.int64]  # (n+1,): vocab index of the first listed genre + 1, 0 none
    primary_genre_hash: NDArray[np.int64]  # (n+1,): hash_str of its name, 0 none
    release_ts: NDArray[np.int64]  # (n+1,)
    first_seen_ts: NDArray[np.int64]  # (n+1,)
    maturity: NDArray[np.int8]  # (n+1,): index into MATURITY_ORDER
    is_original: NDArray[np.bool_]  # (n+1,)
    item_hash: NDArray[np.int64]  # (n+1,): hash_str(item_id); the unknown row is NO_ITEM_HASH

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_genres(self) -> int:
        return len(self.genre_vocab)

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        genres: Sequence[Sequence[str]],
        release_ts: NDArray[np.int64],
        first_seen_ts: NDArray[np.int64],
        maturity: NDArray[np.int8],
        is_original: NDArray[np.bool_],
        genre_vocab: Sequence[str] | None = None,
    ) -> ItemStatic:
        vocab = list(genre_vocab) if genre_vocab is not None else sorted({g for gs in genres for g in gs})
        pos = {g: i for i, g in enumerate(vocab)}
        n = len(item_ids)
        unit = np.zeros((n + 1, len(vocab)), np.float64)
        primary = np.zeros(n + 1, np.int64)
        primary_hash = np.zeros(n + 1, np.int64)
        for i, gs in enumerate(genres):
            known = [pos[g] for g in dict.fromkeys(gs) if g in pos]
            if known:
                unit[i, known] = 1.0 / len(known)
                primary[i] = known[0] + 1
                primary_hash[i] = hash_str(vocab[known[0]])

        def pad(values: Any, dtype: Any, default: Any) -> NDArray[Any]:
            return np.concatenate([np.asarray(values, dtype), np.array([default], dtype)])

        return cls(
            item_ids=list(item_ids), index={item_id: i for i, item_id in enumerate(item_ids)}, genre_vocab=vocab,
            genre_unit=unit, genre_norm=np.sqrt((unit * unit).sum(axis=1)), has_genre=unit.any(axis=1),
            primary_genre=primary, primary_genre_hash=primary_hash,
            release_ts=pad(release_ts, np.int64, 0), first_seen_ts=pad(first_seen_ts, np.int64, 0),
            maturity=pad(maturity, np.int8, len(MATURITY_ORDER) - 1), is_original=pad(is_original, np.bool_, False),
            item_hash=pad(hash_strs(item_ids), np.int64, NO_ITEM_HASH),
        )

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ItemStatic:
        return cls.build(catalog.item_ids, catalog.genres, catalog.release_ts, catalog.first_seen_ts,
                         catalog.maturity, catalog.is_original, catalog.genre_vocab)

    @classmethod
    def from_table(cls, table: CatalogTable, base_vocab: Sequence[str] = ()) -> ItemStatic:
        """Every row of a live catalogue table (genres: ``table.genre_vocab(base_vocab)``)."""
        return cls.build(table.item_ids, table.genres, np.array(table.release_ts, np.int64),
                         np.array(table.first_seen_ts, np.int64), np.array(table.maturity, np.int8),
                         np.array(table.is_original, np.bool_), table.genre_vocab(base_vocab))

    def lookup(self, item_ids: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(static index or -1, stable hash) of each id; unknown ids still get their hash."""
        # map() of the dict's own get: no Python frame per id (a generator here cost twice as much).
        index = np.fromiter(map(self.index.get, item_ids, itertools.repeat(-1)), np.int64, len(item_ids))
        # Known ids take the hash computed when the table was built (hashing ~1,000 ids per request
        # was a measurable share of the server's feature stage); only unknown ones are hashed here.
        hashes = self.item_hash[index]
        unknown = np.flatnonzero(index < 0)
        if len(unknown):
            hashes[unknown] = hash_strs([item_ids[int(j)] for j in unknown])
        return index, hashes

    def rows(self, index: NDArray[np.int64], item_hash: NDArray[np.int64] | None = None) -> StaticRows:
        """The static columns of the candidates ``index`` (-1: unknown; pass their ``item_hash``)."""
        index = np.asarray(index, np.int64)
        hashes = self.item_hash[index] if item_hash is None else np.asarray(item_hash, np.int64)
        return StaticRows(
            index=index, item_hash=hashes, genre_unit=self.genre_unit[index], genre_norm=self.genre_norm[index],
            primary_genre=self.primary_genre[index], primary_genre_hash=self.primary_genre_hash[index],
            release_ts=self.release_ts[index], first_seen_ts=self.first_seen_ts[index],
            maturity=self.maturity[index], is_original=self.is_original[index],
        )


@dataclass(frozen=True, slots=True)
class StaticRows:
    """:class:`ItemStatic` columns of a list of candidates (row ``r`` is candidate ``r``)."""

    index: NDArray[np.int64]
    item_hash: NDArray[np.int64]
    genre_unit: NDArray[np.float64]
    genre_norm: NDArray[np.float64]
    primary_genre: NDArray[np.int64]
    primary_genre_hash: NDArray[np.int64]
    release_ts: NDArray[np.int64]
    first_seen_ts: NDArray[np.int64]
    maturity: NDArray[np.int8]
    is_original: NDArray[np.bool_]


# --------------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Interaction events in application order (time order per user), as columns.

    ``user`` and ``item`` are positions into ``user_keys`` / ``item_keys``, the batch's distinct
    users and items: whatever the store keys by (log indices offline, id strings online).
    Impression ``r`` showed ``item_keys[imp_item[imp_ptr[r]:imp_ptr[r+1]]]`` (empty for others).
    Codes: ``device`` as ``models.dataset.DEVICE_CODE`` (0 unknown), ``country`` as
    ``spec.country_code`` (0 unknown), ``hour`` the local hour (-1 unknown); ``value`` and
    ``duration`` exactly as in :class:`~models.dataset.EventLog` (float32).
    """

    ts: NDArray[np.int64]
    user: NDArray[np.int64]
    item: NDArray[np.int64]  # -1: no item (impressions)
    kind: NDArray[np.int8]
    value: NDArray[np.float32]
    duration: NDArray[np.float32]
    device: NDArray[np.int8]
    country: NDArray[np.int16]
    hour: NDArray[np.int8]
    imp_ptr: NDArray[np.int64]
    imp_item: NDArray[np.int64]
    user_keys: Sequence[Any]
    item_keys: Sequence[Any]
    item_static: NDArray[np.int64]  # per item key: its ItemStatic index, -1 unknown
    item_hash: NDArray[np.int64]  # per item key: hash_str(item id)

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_events(cls, events: Iterable[InteractionEvent], static: ItemStatic) -> EventBatch:
        """A batch of decoded events as a worker gets them (``user_upsert`` is skipped: no feature
        reads profiles). Keys are id strings. Values are converted exactly as ``load_log`` does."""
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        ts: list[int] = []
        user: list[int] = []
        item: list[int] = []
        kind: list[int] = []
        value: list[float] = []
        duration: list[float] = []
        device: list[int] = []
        country: list[int] = []
        hour: list[int] = []
        imp_len: list[int] = []
        imp_item: list[int] = []
        for event in events:
            if isinstance(event, UserUpsert):
                continue
            ts.append(event.ts)
            user.append(users.setdefault(event.user_id, len(users)))
            kind.append(KIND[type(event).__struct_config__.tag])  # type: ignore[index]
            if isinstance(event, Impression):
                item.append(-1)
                imp_len.append(len(event.item_ids))
                imp_item.extend(items.setdefault(i, len(items)) for i in event.item_ids)
            else:
                item.append(items.setdefault(event.item_id, len(items)))
                imp_len.append(0)
            # The same conversions as models.dataset.load_log, so that both paths see equal values.
            v = getattr(event, "value", None) if kind[-1] == _RATING else getattr(event, "watched_seconds", None)
            value.append(v or 0.0)
            duration.append(getattr(event, "duration_seconds", None) or 0.0)
            ctx = event.context
            device.append(DEVICE_CODE.get(ctx.device, 0) if ctx and ctx.device else 0)
            country.append(spec.country_code(ctx.country) if ctx else 0)
            hour.append(ctx.local_hour if ctx and ctx.local_hour is not None else -1)
        item_keys = list(items)
        static_index, item_hash = static.lookup(item_keys)
        return cls(
            ts=np.array(ts, np.int64), user=np.array(user, np.int64), item=np.array(item, np.int64),
            kind=np.array(kind, np.int8), value=np.array(value, np.float32),
            duration=np.array(duration, np.float32), device=np.array(device, np.int8),
            country=np.array(country, np.int16), hour=np.array(hour, np.int8),
            imp_ptr=np.concatenate([[0], np.cumsum(np.array(imp_len, np.int64))]).astype(np.int64),
            imp_item=np.array(imp_item, np.int64), user_keys=list(users), item_keys=item_keys,
            item_static=static_index, item_hash=item_hash,
        )

    @classmethod
    def from_log(
        cls, log: EventLog, start: int, stop: int, static: ItemStatic, country: NDArray[np.int16] | None = None
    ) -> EventBatch:
        """Rows ``[start, stop)`` of a log; keys are the log's user and catalog indices.

        ``country``: the log's country column as stable codes (:func:`log_country_codes`), passed
        in so that a replay converts it once.
        """
        country = log_country_codes(log) if country is None else country
        sl = slice(start, stop)
        k0, k1 = np.searchsorted(log.impression_rows, [start, stop])
        imp_rows = log.impression_rows[k0:k1] - start
        lengths = np.diff(log.impression_ptr[k0:k1 + 1])
        shown = log.impression_items[log.impression_ptr[k0]:log.impression_ptr[k1]].astype(np.int64)
        per_row = np.zeros(stop - start, np.int64)
        per_row[imp_rows] = lengths
        user_keys, user = np.unique(log.user[sl].astype(np.int64), return_inverse=True)
        item_col = log.item[sl].astype(np.int64)
        has_item = item_col >= 0
        item_keys, inverse = np.unique(np.concatenate([item_col[has_item], shown]), return_inverse=True)
        item = np.full(stop - start, -1, np.int64)
        item[has_item] = inverse[: int(has_item.sum())]
        return cls(
            ts=log.ts[sl], user=user.astype(np.int64), item=item, kind=log.kind[sl], value=log.value[sl],
            duration=log.duration[sl], device=log.device[sl], country=country[sl], hour=log.hour[sl],
            imp_ptr=np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64),
            imp_item=inverse[int(has_item.sum()):].astype(np.int64), user_keys=user_keys, item_keys=item_keys,
            item_static=item_keys, item_hash=static.item_hash[item_keys],
        )


def log_country_codes(log: EventLog) -> NDArray[np.int16]:
    """The log's country column (an index into ``log.countries``) as stable ``spec.country_code``s."""
    lut = np.array([0, *(spec.country_code(c) for c in log.countries)], np.int16)
    return lut[log.country]


# --------------------------------------------------------------------------------------------------
# Epoch sums: the decayed-sum arithmetic shared by users and items


def epoch_period(half_life_ms: int) -> int:
    return half_life_ms * spec.EPOCH_HALF_LIVES


def epoch_amounts(
    ts: NDArray[np.int64], weight: NDArray[np.float64] | None, half_life_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(epoch, fixed-point amount) of events: ``round(w * 2 ** ((ts - epoch_start) / h) * SCALE)``.

    ``weight``: ``None`` for weight 1, or ``(n,)`` or ``(n, k)`` (one amount per column).
    """
    period = epoch_period(half_life_ms)
    epoch = ts // period
    x = np.ascontiguousarray((ts - epoch * period).astype(np.float64) / float(half_life_ms))
    factor = np.exp2(x) * float(spec.DECAY_SCALE)
    scaled = factor if weight is None else weight * (factor if weight.ndim == 1 else factor[:, None])
    return epoch, np.rint(scaled).astype(np.int64)


def align_epochs(
    epoch: NDArray[np.int64], sums: NDArray[np.int64], target: NDArray[np.int64] | int
) -> NDArray[np.int64]:
    """``sums[:, j]`` hold epochs ``epoch - 1 + j``; the same sums laid out for ``target - 1 + j``
    (epochs outside the new window dropped, missing ones 0)."""
    target = np.broadcast_to(np.asarray(target, np.int64), epoch.shape)
    out = np.zeros_like(sums)
    has = epoch != NO_EPOCH
    shift = np.where(has, target - np.where(has, epoch, 0), 2)
    for j in range(2):
        src = j + shift
        ok = has & (src >= 0) & (src <= 1)
        out[ok, j] = sums[ok, src[ok]]
    return out


def merge_epoch_sums(
    epoch: NDArray[np.int64], sums: NDArray[np.int64], rows: NDArray[np.int64], event_epoch: NDArray[np.int64],
    amount: NDArray[np.int64],
) -> None:
    """Add event ``amount``s (at ``event_epoch``) to rows ``rows`` of ``(epoch, sums)``, in place.

    A row's window moves to its newest epoch; an amount older than the window's first epoch is
    dropped (it is more than 8 half-lives older than an event already applied, so no later read
    can see it either).
    """
    if not len(rows):
        return
    touched, inverse = np.unique(rows, return_inverse=True)
    old = epoch[touched]
    new = old.copy()
    np.maximum.at(new, inverse, event_epoch)
    merged = align_epochs(old, sums[touched], new)
    slot = event_epoch - new[inverse] + 1
    ok = slot >= 0
    np.add.at(merged, (inverse[ok], slot[ok]), amount[ok])
    epoch[touched] = new
    sums[touched] = merged


def epoch_weights(now_ts: int, half_life_ms: int) -> tuple[int, NDArray[np.float64]]:
    """For a read at ``now_ts``: (now's epoch, the decay from the start of epochs now-1 and now)."""
    period = epoch_period(half_life_ms)
    end = now_ts // period
    starts = np.array([(end - 1) * period, end * period], np.int64)
    return end, decay(now_ts - starts, half_life_ms)


def decayed(sums: NDArray[np.int64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Epoch sums ``(..., 2)`` (epochs now-1, now) to decayed values at the time of ``weights``."""
    return (sums[..., 0].astype(np.float64) * weights[0] + sums[..., 1].astype(np.float64) * weights[1]) / float(
        spec.DECAY_SCALE)


# --------------------------------------------------------------------------------------------------
# User state


@dataclass(slots=True)
class UserStates:
    """The state of ``m`` users as aligned arrays (see the module docstring)."""

    counts: NDArray[np.int64]  # (m, len(USER_COUNT_NAMES))
    rating_milli: NDArray[np.int64]
    last_ts: NDArray[np.int64]
    device: NDArray[np.int8]
    country: NDArray[np.int16]
    hour: NDArray[np.int8]
    genre_epoch: NDArray[np.int64]
    genre_sums: NDArray[np.int64]  # (m, 2, G): epochs genre_epoch - 1, genre_epoch
    recent_item: NDArray[np.int64]  # (m, RECENT_ITEMS)
    recent_ts: NDArray[np.int64]  # (m, RECENT_ITEMS)

    @classmethod
    def empty(cls, m: int, n_genres: int) -> UserStates:
        r = spec.RECENT_ITEMS
        return cls(
            counts=np.zeros((m, len(USER_COUNT_NAMES)), np.int64), rating_milli=np.zeros(m, np.int64),
            last_ts=np.full(m, NO_TS, np.int64), device=np.zeros(m, np.int8), country=np.zeros(m, np.int16),
            hour=np.full(m, -1, np.int8), genre_epoch=np.full(m, NO_EPOCH, np.int64),
            genre_sums=np.zeros((m, 2, n_genres), np.int64), recent_item=np.full((m, r), NO_ITEM_HASH, np.int64),
            recent_ts=np.zeros((m, r), np.int64),
        )

    @property
    def n_genres(self) -> int:
        return self.genre_sums.shape[2]

    def __len__(self) -> int:
        return len(self.last_ts)

    def take(self, rows: NDArray[np.int64]) -> UserStates:
        return UserStates(*(getattr(self, f.name)[rows] for f in fields(self)))

    def put(self, rows: NDArray[np.int64], other: UserStates) -> None:
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name)

    def reset(self, rows: NDArray[np.int64]) -> None:
        self.put(rows, UserStates.empty(len(rows), self.n_genres))

    def grow(self, m: int) -> UserStates:
        """A copy with at least ``m`` rows (new rows empty); ``self`` when it has enough."""
        if m <= len(self):
            return self
        extra = UserStates.empty(max(m, 2 * len(self)) - len(self), self.n_genres)
        return UserStates(*(np.concatenate([getattr(self, f.name), getattr(extra, f.name)]) for f in fields(self)))

    def taste(self, row: int, now_ts: int) -> NDArray[np.float64]:
        """Row ``row``'s genre taste decayed to ``now_ts`` (``(G,)``)."""
        end, weights = epoch_weights(now_ts, spec.USER_GENRE_HALF_LIFE_MS)
        # align_epochs for one row: slot j holds epoch end - 1 + j, read from the row's slot j + shift.
        window = np.zeros((2, self.n_genres), np.int64)
        epoch = int(self.genre_epoch[row])
        if epoch != NO_EPOCH:
            for j in range(2):
                if 0 <= j + end - epoch <= 1:
                    window[j] = self.genre_sums[row, j + end - epoch]
        return decayed(window.T, weights)


def _groups(keys: NDArray[np.int64]) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
    """For keys sorted into runs: (first of its run, run starts, run number of each element)."""
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return first, np.flatnonzero(first), np.cumsum(first) - 1


def _last_of_runs(keys: NDArray[np.int64]) -> NDArray[np.bool_]:
    return np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)


def user_event_mask(batch: EventBatch) -> NDArray[np.bool_]:
    """The events of a batch that change their user's state (item interactions)."""
    return (batch.item >= 0) & (_USER_COL[batch.kind] > -2)


def apply_user_events(state: UserStates, batch: EventBatch, static: ItemStatic) -> None:
    """Apply a batch to the states of its users, in place; ``state`` row ``i`` is ``batch.user_keys[i]``.

    Vectorised over the whole batch. Sums are integers and "last" means last in the user's own
    order, so the result depends on each user's events and their order only, not on how the
    events were cut into batches.
    """
    col_all = _USER_COL[batch.kind]
    sel = np.flatnonzero(user_event_mask(batch))
    if sel.size == 0:
        return
    u = batch.user[sel]
    order = np.argsort(u, kind="stable")  # grouped by user, each user's events in batch order
    sel, u = sel[order], u[order]
    ts = batch.ts[sel]

    # Retention: an event more than USER_RETENTION_MS after the newest event before it (this batch
    # or the state) starts the user afresh; only the events from the user's last such event count.
    first, starts, group = _groups(u)
    if len(starts) >= 1 << (62 - _TS_BITS):  # the offsets below would overflow int64
        raise ValueError(f"a batch of {len(starts)} users is too large: split it")
    offset = group.astype(np.int64) << _TS_BITS
    running = np.maximum.accumulate(ts + offset) - offset  # newest ts so far within the user's run
    before = np.maximum(np.where(first, NO_TS, np.r_[NO_TS, running[:-1]]), state.last_ts[u])
    gap = (before != NO_TS) & (ts - np.where(before == NO_TS, ts, before) > spec.USER_RETENTION_MS)
    if gap.any():
        idx = np.arange(len(u))
        last_gap = np.maximum.reduceat(np.where(gap, idx, -1), starts)
        state.reset(u[starts][last_gap >= 0])
        keep = idx >= last_gap[group]
        sel, u, ts = sel[keep], u[keep], ts[keep]

    kind = batch.kind[sel]
    col = col_all[sel]
    counted = col >= 0
    np.add.at(state.counts, (u[counted], U_EV), 1)
    np.add.at(state.counts, (u[counted], col[counted]), 1)
    np.add.at(state.rating_milli, u, rating_milli(kind, batch.value[sel]))
    np.maximum.at(state.last_ts, u, ts)
    for name, known in (("device", batch.device[sel] > 0), ("country", batch.country[sel] > 0),
                        ("hour", batch.hour[sel] >= 0)):
        pos = np.flatnonzero(known)
        last = pos[_last_of_runs(u[pos])]  # each user's last event that knows this field
        getattr(state, name)[u[last]] = getattr(batch, name)[sel[last]]

    item = batch.item[sel]
    static_index = batch.item_static[item]
    weight = feedback_weights(kind, batch.value[sel]).astype(np.float64)
    g = np.flatnonzero((weight != 0.0) & static.has_genre[static_index])
    if g.size:
        x = weight[g, None] * static.genre_unit[static_index[g]]
        epoch, amount = epoch_amounts(ts[g], x, spec.USER_GENRE_HALF_LIFE_MS)
        merge_epoch_sums(state.genre_epoch, state.genre_sums, u[g], epoch, amount)

    r = np.flatnonzero(weight > 0.0)
    if r.size:
        _merge_recent(state, u[r], batch.item_hash[item[r]], ts[r])


def _merge_recent(state: UserStates, u: NDArray[np.int64], item_hash: NDArray[np.int64],
                  ts: NDArray[np.int64]) -> None:
    """Put the events' items (in order, per user) in front of the users' recent lists, deduplicated."""
    n_recent = spec.RECENT_ITEMS
    rows = np.unique(u)
    old_items, old_ts = state.recent_item[rows], state.recent_ts[rows]
    filled = old_items != NO_ITEM_HASH
    # A sequence number per entry: old entries (slot 0 newest) before every new event.
    old_user = np.broadcast_to(rows[:, None], old_items.shape)[filled]
    old_seq = np.broadcast_to(-1 - np.arange(n_recent)[None, :], old_items.shape)[filled]
    all_user = np.concatenate([old_user, u])
    all_item = np.concatenate([old_items[filled], item_hash])
    all_ts = np.concatenate([old_ts[filled], ts])
    all_seq = np.concatenate([old_seq, np.arange(len(u))])
    # Latest entry per (user, item) ...
    order = np.lexsort((all_seq, all_item, all_user))
    pair = np.r_[(all_user[order][1:] != all_user[order][:-1]) | (all_item[order][1:] != all_item[order][:-1]), True]
    latest = order[pair]
    # ... then the newest RECENT_ITEMS per user.
    by_user = latest[np.lexsort((-all_seq[latest], all_user[latest]))]
    users_sorted = all_user[by_user]
    _, starts, group = _groups(users_sorted)
    slot = np.arange(len(by_user)) - starts[group]
    keep = slot < n_recent
    state.recent_item[rows] = NO_ITEM_HASH
    state.recent_ts[rows] = 0
    state.recent_item[users_sorted[keep], slot[keep]] = all_item[by_user[keep]]
    state.recent_ts[users_sorted[keep], slot[keep]] = all_ts[by_user[keep]]


# --------------------------------------------------------------------------------------------------
# Item state


@dataclass(frozen=True, slots=True)
class PopDelta:
    """Additions to the popularity sums of one half-life: ``(item, epoch)`` pairs are unique."""

    item: NDArray[np.int64]  # positions into batch.item_keys
    epoch: NDArray[np.int64]
    amount: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ItemDeltas:
    """What one batch adds to its items' state: only additions, so any order gives the same sums."""

    item: NDArray[np.int64]  # positions into batch.item_keys with a non-zero count delta
    counts: NDArray[np.int64]  # (len(item), len(ITEM_COUNT_NAMES))
    pop: tuple[PopDelta, ...]  # one per spec.POP_HALF_LIVES


def item_deltas(batch: EventBatch) -> ItemDeltas:
    n = len(batch.item_keys)
    counts = np.zeros((n, len(ITEM_COUNT_NAMES)), np.int64)
    col = _ITEM_COL[batch.kind]
    counted = (batch.item >= 0) & (col >= 0)
    it, it_col = batch.item[counted], col[counted]
    for c in (I_PLAY, I_COMP, I_SKIP, I_RATE, I_CLICK, I_ADD):
        counts[:, c] = np.bincount(it[it_col == c], minlength=n)
    rated = (batch.item >= 0) & (batch.kind == _RATING)
    np.add.at(counts[:, I_RSUM], batch.item[rated], rating_milli(batch.kind[rated], batch.value[rated]))
    counts[:, I_IMP] = np.bincount(batch.imp_item, minlength=n)
    touched = np.flatnonzero(counts.any(axis=1))

    popular = (batch.item >= 0) & _POP_KIND[batch.kind]
    ts, items = batch.ts[popular], batch.item[popular]
    pop = []
    for _, half_life in spec.POP_HALF_LIVES:
        epoch, amount = epoch_amounts(ts, None, half_life)
        key, inverse = np.unique((items << 32) | epoch, return_inverse=True)  # epochs since 1970 < 2**32
        sums = np.zeros(len(key), np.int64)
        np.add.at(sums, inverse, amount)
        pop.append(PopDelta(item=key >> 32, epoch=key & 0xFFFFFFFF, amount=sums))
    return ItemDeltas(item=touched, counts=counts[touched], pop=tuple(pop))


@dataclass(frozen=True, slots=True)
class ItemStates:
    """Items' state as read at one time: counts, and popularity sums of the epochs now-1 and now."""

    counts: NDArray[np.int64]  # (n, len(ITEM_COUNT_NAMES))
    pop: NDArray[np.int64]  # (n, len(POP_HALF_LIVES), 2)
    epoch: tuple[int, ...]  # per half-life: the epoch of the read time (the second column of pop)

    @staticmethod
    def epochs_at(now_ts: int) -> tuple[int, ...]:
        return tuple(now_ts // epoch_period(h) for _, h in spec.POP_HALF_LIVES)


# --------------------------------------------------------------------------------------------------
# The in-memory store (offline replay; the async memory backend wraps it)


@dataclass(eq=False)
class InMemoryStore:
    """All users' and items' state in arrays indexed by integer keys (log user index, catalog index)."""

    static: ItemStatic
    n_users: int = 0
    n_items: int = -1  # -1: the static table's size (grows for keys beyond it)
    events_applied: int = 0
    users: UserStates = field(init=False)
    item_counts: NDArray[np.int64] = field(init=False)
    pop_epoch: NDArray[np.int64] = field(init=False)  # (items, len(POP_HALF_LIVES))
    pop_sums: NDArray[np.int64] = field(init=False)  # (items, len(POP_HALF_LIVES), 2)

    def __post_init__(self) -> None:
        self.users = UserStates.empty(self.n_users, self.static.n_genres)
        rings = len(spec.POP_HALF_LIVES)
        self.item_counts = np.zeros((0, len(ITEM_COUNT_NAMES)), np.int64)
        self.pop_epoch = np.zeros((0, rings), np.int64)
        self.pop_sums = np.zeros((0, rings, 2), np.int64)
        self._grow_items(self.static.n_items if self.n_items < 0 else self.n_items)

    def _grow_items(self, n: int) -> None:
        have = len(self.item_counts)
        if n <= have:
            return
        extra = max(n, 2 * have) - have
        rings = len(spec.POP_HALF_LIVES)
        self.item_counts = np.concatenate([self.item_counts, np.zeros((extra, len(ITEM_COUNT_NAMES)), np.int64)])
        self.pop_epoch = np.concatenate([self.pop_epoch, np.full((extra, rings), NO_EPOCH, np.int64)])
        self.pop_sums = np.concatenate([self.pop_sums, np.zeros((extra, rings, 2), np.int64)])

    def apply(self, batch: EventBatch) -> None:
        """Apply a batch whose keys are integer rows of this store."""
        if not len(batch):
            return
        user_rows = np.asarray(batch.user_keys, np.int64)
        item_rows = np.asarray(batch.item_keys, np.int64)
        self.users = self.users.grow(int(user_rows.max()) + 1)
        if len(item_rows):
            self._grow_items(int(item_rows.max()) + 1)
        sub = self.users.take(user_rows)
        apply_user_events(sub, batch, self.static)
        self.users.put(user_rows, sub)
        deltas = item_deltas(batch)
        self.item_counts[item_rows[deltas.item]] += deltas.counts
        for r, pop in enumerate(deltas.pop):
            epoch, sums = self.pop_epoch[:, r], self.pop_sums[:, r]  # views: merged in place
            merge_epoch_sums(epoch, sums, item_rows[pop.item], pop.epoch, pop.amount)
        self.events_applied += len(batch)

    def read_user(self, row: int) -> UserStates:
        """One user's state (empty for a row never written)."""
        if 0 <= row < len(self.users):
            return self.users.take(np.array([row]))
        return UserStates.empty(1, self.static.n_genres)

    def read_items(self, rows: NDArray[np.int64], now_ts: int) -> ItemStates:
        """Items' state for a read at ``now_ts`` (rows out of range or negative read as empty)."""
        rows = np.asarray(rows, np.int64)
        known = (rows >= 0) & (rows < len(self.item_counts))
        safe = np.where(known, rows, 0)
        counts = np.where(known[:, None], self.item_counts[safe], 0)
        epochs = ItemStates.epochs_at(now_ts)
        pop = np.zeros((len(rows), len(spec.POP_HALF_LIVES), 2), np.int64)
        for r, end in enumerate(epochs):
            epoch = np.where(known, self.pop_epoch[safe, r], NO_EPOCH)
            pop[:, r] = align_epochs(epoch, self.pop_sums[safe, r], end)
        return ItemStates(counts=counts, pop=pop, epoch=epochs)
