"""The serving path's vectorised rewrites give exactly what the straightforward versions they replaced gave.

Each ``_ref_*`` below is the earlier implementation, kept here as the specification: the features the ranker
sees and the answers must not move by one bit (training/serving parity), so every comparison is exact.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from numpy.typing import NDArray

from models.ann import IndexParams, ItemIndex
from models.candidates import (
    NO_SEED,
    SourceResult,
    as_mask,
    because_you_watched,
    merge_candidates,
    most_recent,
    popular,
    popular_scores,
    recent_positives,
    top_k,
    user_content_profile,
)
from models.dataset import MATURITY_ORDER
from models.features import spec
from models.features.hashing import cross, cross_mixed, mix64
from models.features.rows import _EXTRA, _LOG_DIV, RequestContext, _first_match, _log_scaled, _smooth, feature_batch
from models.features.state import (
    I_CLICK,
    I_COMP,
    I_IMP,
    I_PLAY,
    I_RATE,
    I_RSUM,
    I_SKIP,
    ITEM_COUNT_NAMES,
    NO_EPOCH,
    NO_ITEM_HASH,
    NO_TS,
    U_COMP,
    U_EV,
    U_PLAY,
    U_RATE,
    U_SKIP,
    ItemStates,
    ItemStatic,
    StaticRows,
    UserStates,
    align_epochs,
    decay,
    decayed,
    epoch_weights,
)
from models.postprocess import mmr


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- hashing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("buckets", [2**18, 1000, 7, 1])
def test_cross_mixed_is_cross(buckets: int) -> None:
    rng = np.random.default_rng(buckets)
    a = rng.integers(-2**63, 2**63 - 1, 300, dtype=np.int64)
    b = rng.integers(-2**63, 2**63 - 1, 300, dtype=np.int64)
    assert _bits_equal(cross_mixed(mix64(a), b, 3, buckets), cross(a, b, 3, buckets))
    assert _bits_equal(cross_mixed(mix64(a[0]), b, 1, buckets), cross(a[0], b, 1, buckets))  # scalar x column
    assert _bits_equal(cross_mixed(mix64(a), -1, 4, buckets), cross(a, -1, 4, buckets))  # column x scalar
    assert cross_mixed(mix64(5), np.zeros(0, np.int64), 2, buckets).shape == (0,)


def test_cross_keeps_its_pinned_values() -> None:
    assert cross([1, 2, -1], [5, 5, 5], 3, 2**18).tolist() == [56176, 193061, 46928]
    assert cross(7, np.arange(3), 1, 100).tolist() == [55, 54, 5]
    rng = np.random.default_rng(11)
    a, b = rng.integers(-2**63, 2**63 - 1, (2, 500), dtype=np.int64)
    for buckets in (2**18, 999):
        assert _bits_equal(cross(a, b, 2, buckets), _ref_cross(a, b, 2, buckets))
        assert _bits_equal(cross(a[0], b, 2, buckets), _ref_cross(a[0], b, 2, buckets))


# -- features -------------------------------------------------------------------------------------


def _ref_first_match(values: np.ndarray, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hit = (values[:, None] == recent[None, :]) & (recent[None, :] != NO_ITEM_HASH)
    return hit.any(axis=1), hit.argmax(axis=1)


def test_first_match_is_the_matrix_argmax() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 40, 500).astype(np.int64)
    for trial in range(30):
        recent = np.full(spec.RECENT_ITEMS, NO_ITEM_HASH, np.int64)
        filled = int(rng.integers(0, spec.RECENT_ITEMS + 1))
        recent[:filled] = rng.integers(0, 40, filled)  # duplicates too: the first slot must win
        if trial % 3 == 0:
            rng.shuffle(recent)  # empty slots anywhere
        seen, first = _first_match(values, recent)
        ref_seen, ref_first = _ref_first_match(values, recent)
        assert np.array_equal(seen, ref_seen) and np.array_equal(first, ref_first)
    assert _first_match(np.zeros(0, np.int64), recent)[0].shape == (0,)
    with_sentinel = np.array([NO_ITEM_HASH, 3], np.int64)  # an unknown row's hash never matches an empty slot
    assert not _first_match(with_sentinel, np.full(4, NO_ITEM_HASH, np.int64))[0].any()


def _ref_taste(user: UserStates, row: int, now_ts: int) -> np.ndarray:
    end, weights = epoch_weights(now_ts, spec.USER_GENRE_HALF_LIFE_MS)
    window = align_epochs(user.genre_epoch[row:row + 1], user.genre_sums[row:row + 1], end)[0]
    return decayed(np.moveaxis(window, 0, -1), weights)


def test_taste_of_one_row_is_align_epochs() -> None:
    rng = np.random.default_rng(2)
    users = UserStates.empty(8, 5)
    users.genre_sums[:] = rng.integers(0, 1 << 30, users.genre_sums.shape)
    now = 1_780_000_000_000
    end, _ = epoch_weights(now, spec.USER_GENRE_HALF_LIFE_MS)
    # Never written, current, one and two epochs behind, ahead (a clock step back), long idle.
    users.genre_epoch[:] = [NO_EPOCH, end, end - 1, end - 2, end + 1, end - 100, end, end - 1]
    for row in range(len(users)):
        assert _bits_equal(users.taste(row, now), _ref_taste(users, row, now))


# -- candidates -----------------------------------------------------------------------------------


def _ref_merge(sources: Mapping[str, SourceResult], exclude: np.ndarray | None = None,
               available: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    names = tuple(sources)
    parts = [sources[n] for n in names]
    lengths = np.array([len(p[0]) for p in parts], np.int64)
    items = np.concatenate([np.asarray(p[0], np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    scores = np.concatenate([np.asarray(p[1], np.float32) for p in parts]) if parts else np.zeros(0, np.float32)
    src = np.repeat(np.arange(len(names), dtype=np.int64), lengths)
    rank = np.arange(len(items), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    has_seed = np.repeat(np.array([len(p) == 3 for p in parts], bool), lengths)
    seeds = np.concatenate([np.asarray(p[2], np.int64) if len(p) == 3 else np.full(len(p[0]), NO_SEED, np.int64)
                            for p in parts]) if parts else np.zeros(0, np.int64)
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
    items, scores, src, rank, has_seed, seeds = (a[keep] for a in (items, scores, src, rank, has_seed, seeds))
    uniq, inv = np.unique(items, return_inverse=True)
    m, s = len(uniq), len(names)
    score_cols = np.full((m, s), np.nan, np.float32)
    np.fmax.at(score_cols, (inv, src), scores)
    rank_cols = np.full((m, s), np.iinfo(np.int32).max, np.int64)
    np.minimum.at(rank_cols, (inv, src), rank)
    rank_cols[rank_cols == np.iinfo(np.int32).max] = -1
    present = rank_cols >= 0
    bitmask = (present.astype(np.uint32) << np.arange(s, dtype=np.uint32)).sum(axis=1, dtype=np.uint32) \
        if s else np.zeros(m, np.uint32)
    seed_out = np.full(m, NO_SEED, np.int32)
    if has_seed.any():
        rows = np.flatnonzero(has_seed)
        order = np.lexsort((-scores[rows], src[rows], inv[rows]))
        rows = rows[order]
        _, first = np.unique(inv[rows], return_index=True)
        seed_out[inv[rows[first]]] = seeds[rows[first]]
    return uniq.astype(np.int32), score_cols, rank_cols.astype(np.int32), bitmask, seed_out


def _random_sources(rng: np.random.Generator, n_items: int, big: bool = False) -> dict[str, SourceResult]:
    out: dict[str, SourceResult] = {}
    for s, name in enumerate(("ann_cf", "content", "popular", "new_releases", "byw", "extra")):
        m = int(rng.integers(0, 60))
        items = rng.integers(0, n_items, m).astype(np.int32)  # repeats within a source too
        if big and m:
            items[0] = 2**31 - 2  # a far id: the sort path
        scores = rng.choice(np.array([0.5, 0.25, 1.0, np.nan], np.float32), m) if s % 2 else \
            rng.random(m).astype(np.float32)
        if name == "byw" and m % 2:  # distinct items: one seed row per candidate (unless "extra" adds one)
            items = rng.choice(n_items, min(m, n_items), replace=False).astype(np.int32)
            scores = scores[: len(items)]
        if name == "extra" and m % 3 == 0:
            m, items, scores = 0, items[:0], scores[:0]
        if name in ("byw", "extra"):
            out[name] = (items, scores, rng.integers(0, n_items, len(items)).astype(np.int32))
        else:
            out[name] = (items, scores)
    return out


@pytest.mark.parametrize("big", [False, True])
def test_merge_candidates_is_the_sorting_merge(big: bool) -> None:
    rng = np.random.default_rng(3 + big)
    for trial in range(40):
        sources = _random_sources(rng, 50, big)
        exclude: np.ndarray | None = None
        if trial % 3 == 1:
            exclude = rng.random(40) < 0.2  # a mask shorter than the item range
        elif trial % 3 == 2:
            exclude = rng.integers(0, 50, 7)  # item indices
        available = (rng.random(45) < 0.9) if trial % 2 else None
        got = merge_candidates(sources, exclude=exclude, available=available)
        ref = _ref_merge(sources, exclude, available)
        for a, b in zip((got.items, got.scores, got.ranks, got.sources, got.seed), ref, strict=True):
            assert _bits_equal(a, b)
    empty = merge_candidates({})
    assert len(empty) == 0 and empty.scores.shape == (0, 0)


def _ref_byw(index: ItemIndex, recent_items: np.ndarray, budget: int, per: int,
             exclude: np.ndarray | None) -> tuple[np.ndarray, ...]:
    seeds = np.unique(np.asarray(recent_items, np.int64))
    seeds = seeds[(seeds < len(index.live))]
    seeds = seeds[index.live[seeds]] if len(seeds) else seeds
    labels, sims = index.query(index.vectors[seeds], per + 1 + (0 if exclude is None else
                                                                min(int(exclude.sum()), per)))
    seed_col = np.repeat(seeds.astype(np.int32), labels.shape[1])
    flat, flat_sims = labels.ravel(), sims.ravel()
    keep = ~np.isin(flat, seeds)
    if exclude is not None:
        inside = flat < len(exclude)
        keep[inside] &= ~exclude[flat[inside]]
    flat, flat_sims, seed_col = flat[keep], flat_sims[keep], seed_col[keep]
    order = np.lexsort((seed_col, -flat_sims))
    flat, flat_sims, seed_col = flat[order], flat_sims[order], seed_col[order]
    _, first = np.unique(flat, return_index=True)
    first = np.sort(first)[:budget]
    return flat[first].astype(np.int32), flat_sims[first].astype(np.float32), seed_col[first]


def test_because_you_watched_is_the_sorting_version() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors[::7] = np.round(vectors[::7], 1)  # near-duplicates: equal similarities, ties by seed
    index = ItemIndex.build(vectors, IndexParams(space="cosine"))
    for trial in range(15):
        seeds = rng.integers(0, 300, int(rng.integers(1, 12)))
        exclude = as_mask(rng.integers(0, 300, 20), 300) if trial % 2 else None
        budget, per = int(rng.integers(5, 80)), int(rng.integers(3, 20))
        got = because_you_watched(index, seeds, budget, per_seed=per, exclude=exclude)
        for a, b in zip(got, _ref_byw(index, seeds, budget, per, exclude), strict=True):
            assert _bits_equal(a, b)


def test_most_recent_cuts_like_recent_positives() -> None:
    rng = np.random.default_rng(6)
    for n in (0, 1, 5, 12, 30, 45, 80):
        items = rng.integers(0, 60, n)
        weights = rng.choice(np.array([1.0, -1.0, 0.5], np.float32), n)
        ts = np.sort(rng.integers(0, 10_000, n))
        full = recent_positives(items, weights, ts)
        for m in (None, -1, 0, 1, 3, 10, 20, 25, 50, 100):
            ref = recent_positives(items, weights, ts, m)
            for a, b in zip(most_recent(full, m), ref, strict=True):  # the same cut, quirks included
                assert _bits_equal(a, b)
        content = rng.normal(size=(60, 4)).astype(np.float32)
        assert _bits_equal(user_content_profile(content, items, weights, ts, 20_000, max_items=10, positives=full),
                           user_content_profile(content, items, weights, ts, 20_000, max_items=10))


def _ref_top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float32)
    if exclude is not None:
        s = np.where(exclude if len(exclude) == len(s) else as_mask(exclude, len(s)), -np.inf, s)
    valid = int(np.isfinite(s).sum())
    k = min(int(k), valid)
    if k <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    top = np.argpartition(-s, k - 1)[:k]
    top = top[np.lexsort((top, -s[top]))]
    return top.astype(np.int32), s[top]


def test_top_k_is_the_masked_selection() -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        s = rng.choice(np.array([0.1, 0.2, 0.3, 1.0, 0.0, np.inf, -np.inf, np.nan], np.float32), 200) \
            if trial % 2 else rng.random(200).astype(np.float32)
        exclude = (rng.random(200) < 0.3) if trial % 3 else (rng.integers(0, 200, 9) if trial % 4 else None)
        for k in (0, 1, 10, 150, 500):
            for a, b in zip(top_k(s, k, exclude), _ref_top_k(s, k, exclude), strict=True):
                assert _bits_equal(a, b)


def test_popular_is_top_k_of_popular_scores() -> None:
    rng = np.random.default_rng(8)
    pop, ctx = rng.random(100).astype(np.float32), rng.random(100).astype(np.float32)
    pop[::5] = 0
    exclude = rng.random(100) < 0.2
    for a, b in zip(popular(pop, 20, ctx, context_weight=0.3, exclude=exclude),
                    top_k(popular_scores(pop, ctx, 0.3), 20, exclude), strict=True):
        assert _bits_equal(a, b)


# -- post-processing ------------------------------------------------------------------------------


def _ref_mmr(scores: np.ndarray, features: np.ndarray, k: int, diversity: float, pool: int = 200) -> np.ndarray:
    n = len(scores)
    k = min(k, n)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if diversity <= 0 or k <= 1:
        return order[:k]
    cand = order[: max(k, min(pool, n))]
    s = np.asarray(scores, np.float64)[cand]
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    f = np.asarray(features, np.float64)[cand]
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    max_sim = np.zeros(len(cand))
    taken = np.zeros(len(cand), bool)
    picks: list[int] = []
    for _ in range(k):
        value = (1 - diversity) * s - diversity * max_sim
        value[taken] = -np.inf
        best = int(np.argmax(value))
        picks.append(best)
        taken[best] = True
        max_sim = np.maximum(max_sim, f @ f[best])
    return cand[np.array(picks, np.int64)]


def test_mmr_is_the_plain_loop() -> None:
    rng = np.random.default_rng(9)
    for trial in range(40):
        n = int(rng.integers(1, 1200))
        scores = np.round(rng.random(n), 2)  # ties
        features = (rng.random((n, 6)) < 0.3).astype(np.float32)
        k, diversity, pool = int(rng.integers(1, 40)), (0.0, 0.1, 0.5, 1.0)[trial % 4], int(rng.integers(5, 300))
        assert np.array_equal(mmr(scores, features, k, diversity, pool), _ref_mmr(scores, features, k, diversity, pool))


# -- the whole feature row --------------------------------------------------------------------------
# feature_batch as first written (before cross_mixed, _first_match, the genre loop that skips genres
# without taste, the one-row taste and the transposed dense fill): every column must keep its bits.


def _ref_cross(a: np.ndarray | int, b: np.ndarray | int, salt: int, buckets: int) -> np.ndarray:
    """hashing.cross as first written."""
    a_arr, b_arr = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    salted = mix64(a_arr.ravel()) + np.uint64((salt * 0x9E3779B97F4A7C15) & ((1 << 64) - 1))
    mixed = mix64((salted ^ np.ascontiguousarray(b_arr.ravel()).view(np.uint64)).view(np.int64))
    return (mixed % np.uint64(buckets)).astype(np.int64).reshape(a_arr.shape)


def _ref_feature_batch(
    user_hash: int,
    user: UserStates,
    items: ItemStates,
    static: StaticRows,
    context: RequestContext,
    now_ts: int,
    extra_dense: Mapping[str, NDArray[np.floating] | float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of one user (``user``: one row, ``user_hash``: ``hash_str(user_id)``) against the
    candidates of ``items`` / ``static`` (aligned), read at ``now_ts`` (ms).

    ``items`` must have been read for ``now_ts`` (popularity sums of now's epochs, see ``ItemStates``).
    """
    n = len(static.index)
    if len(user) != 1:
        raise ValueError(f"feature_batch takes one user's state, got {len(user)} rows")
    if len(items.counts) != n:
        raise ValueError(f"items ({len(items.counts)}) and static rows ({n}) are not aligned")
    if items.epoch != ItemStates.epochs_at(now_ts):
        raise ValueError("item state was read for another time than now_ts")
    unknown_extra = set(extra_dense or ()) - _EXTRA
    if unknown_extra:
        raise ValueError(f"unknown extra dense features {sorted(unknown_extra)}; allowed: {spec.EXTRA_DENSE_NAMES}")

    last_ts = int(user.last_ts[0])
    if last_ts != NO_TS and now_ts - last_ts > spec.USER_RETENTION_MS:
        user = UserStates.empty(1, user.n_genres)
        last_ts = NO_TS
    cols: dict[str, NDArray[np.float64] | float] = {}

    # --- user (the same for every candidate) -----------------------------------------------------
    uc = user.counts[0].astype(np.float64)
    plays = uc[U_PLAY]
    taste = user.taste(0, now_ts)
    cols["u_log_events"] = _log_scaled(uc[U_EV], _LOG_DIV)
    cols["u_log_plays"] = _log_scaled(plays, _LOG_DIV)
    cols["u_log_completes"] = _log_scaled(uc[U_COMP], _LOG_DIV)
    cols["u_log_ratings"] = _log_scaled(uc[U_RATE], _LOG_DIV)
    cols["u_skip_rate"] = _smooth(uc[U_SKIP], plays, spec.SKIP_PRIOR)
    cols["u_mean_rating"] = (_smooth(user.rating_milli[0] / 1000.0, uc[U_RATE], spec.RATING_PRIOR) - 0.5) / 4.5
    cols["u_log_hours_since_last"] = (
        _log_scaled((now_ts - last_ts) / spec.HOUR_MS, 10.0) if last_ts != NO_TS else 1.0
    )
    cols["u_genre_mass"] = _log_scaled(np.abs(taste).sum(), 5.0)

    # --- item ----------------------------------------------------------------------------------
    ic = items.counts.astype(np.float64)
    pop_1d, pop_7d = (decayed(items.pop[:, r], epoch_weights(now_ts, half_life)[1])
                      for r, (_, half_life) in enumerate(spec.POP_HALF_LIVES))
    i_plays = ic[:, I_PLAY]
    known = static.index >= 0
    cols["i_log_pop_1d"] = _log_scaled(pop_1d, _LOG_DIV)
    cols["i_log_pop_7d"] = _log_scaled(pop_7d, _LOG_DIV)
    cols["i_trend"] = np.log(np.ascontiguousarray((7.0 * pop_1d + 1.0) / (pop_7d + 1.0)))
    cols["i_log_plays"] = _log_scaled(i_plays, _LOG_DIV)
    cols["i_log_ratings"] = _log_scaled(ic[:, I_RATE], _LOG_DIV)
    cols["i_completion_rate"] = _smooth(ic[:, I_COMP], i_plays, spec.COMPLETION_PRIOR)
    cols["i_skip_rate"] = _smooth(ic[:, I_SKIP], i_plays, spec.SKIP_PRIOR)
    cols["i_ctr"] = _smooth(ic[:, I_CLICK], ic[:, I_IMP], spec.CTR_PRIOR)
    cols["i_mean_rating"] = (_smooth(ic[:, I_RSUM] / 1000.0, ic[:, I_RATE], spec.RATING_PRIOR) - 0.5) / 4.5
    cols["i_log_age_days"] = np.where(known, _log_scaled((now_ts - static.release_ts) / spec.DAY_MS, 10.0), 0.0)
    cols["i_log_days_in_catalog"] = np.where(
        known, _log_scaled((now_ts - static.first_seen_ts) / spec.DAY_MS, 10.0), 0.0)
    cols["i_is_original"] = static.is_original.astype(np.float64)
    cols["i_maturity"] = static.maturity / float(len(MATURITY_ORDER) - 1)
    cols["i_unknown"] = (~known).astype(np.float64)

    # --- user x item ---------------------------------------------------------------------------
    dot = np.zeros(n)
    for g in range(len(taste)):  # explicit order of additions: the same bits for any n
        dot = dot + static.genre_unit[:, g] * taste[g]
    denom = static.genre_norm * float(np.sqrt(np.sum(taste * taste)))
    cols["ui_genre_affinity"] = np.where(denom > 0.0, dot / np.where(denom > 0.0, denom, 1.0), 0.0)
    recent = user.recent_item[0]
    hit = (static.item_hash[:, None] == recent[None, :]) & (recent[None, :] != NO_ITEM_HASH)
    seen = hit.any(axis=1)
    seen_ts = user.recent_ts[0][hit.argmax(axis=1)]
    cols["ui_seen_recent"] = seen.astype(np.float64)
    cols["ui_recent_decay"] = np.where(seen, decay(now_ts - seen_ts, spec.DAY_MS), 0.0)

    # --- context -------------------------------------------------------------------------------
    device = context.device or int(user.device[0])
    country = context.country or int(user.country[0])
    hour = context.hour if context.hour >= 0 else int(user.hour[0])
    if hour >= 0:
        angle = np.array([2.0 * np.pi * hour / 24.0])
        cols["ctx_hour_sin"] = float(np.sin(angle)[0])
        cols["ctx_hour_cos"] = float(np.cos(angle)[0])

    for name, values in (extra_dense or {}).items():
        cols[name] = np.asarray(values, np.float64)
    dense = np.zeros((n, len(spec.DENSE_NAMES)), np.float32)
    for j, name in enumerate(spec.DENSE_NAMES):
        if name in cols:
            dense[:, j] = cols.pop(name)  # a scalar or an (n,) column
    if cols:  # a column computed above that the spec does not list
        raise AssertionError(f"features missing from spec.DENSE_NAMES: {sorted(cols)}")

    # --- wide ----------------------------------------------------------------------------------
    b = spec.WIDE_BUCKETS
    item_hash = static.item_hash
    last_item = int(recent[0])
    wide = np.stack([
        _ref_cross(user_hash, static.primary_genre_hash, 1, b),
        _ref_cross(item_hash, device, 2, b),
        _ref_cross(item_hash, hour // 3 if hour >= 0 else 8, 3, b),
        _ref_cross(item_hash, country, 4, b),
        _ref_cross(last_item, item_hash, 5, b),
    ], axis=1)

    # --- categorical ---------------------------------------------------------------------------
    events = int(user.counts[0, U_EV])
    activity = 0 if events == 0 else min(spec.N_ACTIVITY_CODES - 1, events.bit_length())
    cats = np.empty((n, len(spec.CAT_NAMES)), np.int64)
    cats[:, 0] = static.index + 1
    cats[:, 1] = static.primary_genre
    cats[:, 2] = device
    cats[:, 3] = country
    cats[:, 4] = hour + 1
    cats[:, 5] = activity
    return dense, wide, cats


def _random_feature_inputs(rng: np.random.Generator, n: int, n_genres: int = 6
                           ) -> tuple[UserStates, ItemStates, StaticRows, RequestContext, int]:
    now = 1_780_000_000_000
    ids = [f"t{k}" for k in range(40)]
    vocab = [f"g{k}" for k in range(n_genres)]
    genres = [list(rng.choice(vocab, int(rng.integers(0, 4)), replace=False)) for _ in ids]
    release = now - rng.integers(-5, 4000, len(ids)) * 86_400_000
    table = ItemStatic.build(ids, genres, release, release + rng.integers(0, 10**9, len(ids)),
                             rng.integers(0, 6, len(ids)).astype(np.int8), rng.random(len(ids)) < 0.2, vocab)
    index = rng.integers(-1, len(ids), n)  # -1: titles the table does not know
    hashes = table.item_hash[index].copy()
    hashes[index < 0] = rng.integers(0, 2**62, int((index < 0).sum()))
    static = table.rows(index, hashes)
    user = UserStates.empty(1, n_genres)
    user.counts[0] = rng.integers(0, 300, user.counts.shape[1])
    user.rating_milli[0] = int(rng.integers(0, 10**6))
    user.last_ts[0] = now - int(rng.integers(1, 10**9))
    user.device[0], user.country[0], user.hour[0] = 2, 17, int(rng.integers(-1, 24))
    end, _ = epoch_weights(now, spec.USER_GENRE_HALF_LIFE_MS)
    user.genre_epoch[0] = end - int(rng.integers(0, 2))
    taste = rng.integers(-(1 << 22), 1 << 24, (2, n_genres))
    taste[:, rng.random(n_genres) < 0.4] = 0  # genres without taste
    user.genre_sums[0] = taste
    seen = rng.choice(hashes, min(5, n), replace=False) if n else hashes[:0]
    user.recent_item[0, : len(seen)] = seen
    user.recent_item[0, len(seen): len(seen) + 3] = rng.integers(0, 2**62, 3)
    user.recent_ts[0] = now - rng.integers(0, 10**9, spec.RECENT_ITEMS)
    epochs = ItemStates.epochs_at(now)
    items = ItemStates(counts=rng.integers(0, 500, (n, len(ITEM_COUNT_NAMES))),
                       pop=rng.integers(0, 1 << 30, (n, len(epochs), 2)), epoch=epochs)
    context = RequestContext(device=int(rng.integers(0, 3)), country=int(rng.integers(0, 3)),
                             hour=int(rng.integers(-1, 24)))
    return user, items, static, context, now


@pytest.mark.parametrize("seed", range(6))
def test_feature_batch_keeps_every_bit(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = (0, 1, 7, 300, 1000, 64)[seed]
    user, items, static, context, now = _random_feature_inputs(rng, n)
    if seed == 5:
        user.genre_sums[0] = 0  # no taste at all
    extra = {"cf_score": rng.random(n), "src_byw": rng.random(n).astype(np.float32)}
    got = feature_batch(12345, user, items, static, context, now, extra)
    for a, b in zip((got.dense, got.wide, got.cats), _ref_feature_batch(12345, user, items, static, context, now,
                                                                         extra), strict=True):
        assert _bits_equal(a, b)
    if n >= 300:  # the inputs reach the branches that changed
        seen = spec.DENSE_NAMES.index("ui_seen_recent")
        assert got.dense[:, seen].any() and not got.dense[:, seen].all()
