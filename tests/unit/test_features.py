"""The ranking feature definition: spec versioning, stable hashing, decay arithmetic, the state update
(order and batching independence), point-in-time correctness, and the vectorised rows against a slow
per-candidate reference computed straight from the raw events.

The online (Redis) path is checked against the offline builder here with fakeredis, and against a
real redis-server in ``tests/integration/test_feature_consistency.py``.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import fakeredis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.dataset import KIND, EventLog, load_log
from models.features import (
    FEATURE_SPEC_VERSION,
    EventBatch,
    InMemoryStore,
    ItemStatic,
    Replay,
    Request,
    RequestContext,
    UnsupportedFeatureSpec,
    build_rows,
    check_feature_spec,
    check_layout,
    context_at,
    feature_layout,
    replay_state,
    spec,
)
from models.features.hashing import cross, hash_str
from models.features.state import (
    UserStates,
    apply_user_events,
    decayed,
    epoch_amounts,
    epoch_weights,
    log_country_codes,
)
from models.feedback import feedback_weights
from online_state import MemoryFeatureStore, RedisFeatureStore
from schemas.decoder import interaction_decoder
from tools.datasets.world import generate_world

DAY = spec.DAY_MS
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, users=40, items=300, events=3000, seed=5)
    return out


@pytest.fixture(scope="module")
def log(world: Path) -> EventLog:
    loaded = load_log(world)
    assert loaded.rejected == 0
    return loaded


@pytest.fixture(scope="module")
def static(log: EventLog) -> ItemStatic:
    return ItemStatic.from_catalog(log.catalog)


def _store_arrays(store: InMemoryStore) -> dict[str, np.ndarray]:
    users = store.users
    out = {f"u.{name}": getattr(users, name)[: store.n_users or len(users)] for name in UserStates.__slots__}
    out.update(items=store.item_counts, pop_epoch=store.pop_epoch, pop_sums=store.pop_sums)
    return out


def _assert_same_state(a: InMemoryStore, b: InMemoryStore) -> None:
    left, right = _store_arrays(a), _store_arrays(b)
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


# --- spec ---------------------------------------------------------------------------------------


def test_supported_spec_passes_and_others_are_refused_clearly() -> None:
    check_feature_spec(FEATURE_SPEC_VERSION)
    for bad in (FEATURE_SPEC_VERSION + 1, 0, "1", None, True):
        with pytest.raises(UnsupportedFeatureSpec) as info:
            check_feature_spec(bad)
        message = str(info.value)
        assert f"feature spec version {bad!r}" in message
        assert f"feature spec version(s) {FEATURE_SPEC_VERSION}" in message
        assert "Rebuild the bundle" in message


def test_layout_matches_the_spec_and_mismatches_are_refused() -> None:
    layout = feature_layout(n_items=10, n_genres=3)
    assert layout.dense_names == spec.STATE_DENSE_NAMES + spec.EXTRA_DENSE_NAMES
    assert {"cf_score", "content_score", "src_ann", "src_byw"} <= set(layout.dense_names)
    assert len(set(layout.dense_names)) == len(layout.dense_names)
    assert layout.cat_cardinalities[:2] == (11, 4)
    assert layout.wide_buckets == spec.WIDE_BUCKETS
    check_layout(layout, feature_layout(10, 3))
    with pytest.raises(UnsupportedFeatureSpec, match="cat_cardinalities"):
        check_layout(layout, feature_layout(11, 3))


def test_spec_fingerprint_is_pinned() -> None:
    # Changing a constant or a column of the spec changes what a trained ranker expects: bump
    # FEATURE_SPEC_VERSION (and this pin) with it.
    assert spec.SPEC_FINGERPRINT == "f23bb03773c56f02", "feature spec changed: bump FEATURE_SPEC_VERSION"


def test_country_codes_are_stable_without_a_vocabulary() -> None:
    assert spec.country_code("AA") == 1
    assert spec.country_code("ZZ") == spec.N_COUNTRY_CODES - 1
    assert spec.country_code("US") == 1 + 20 * 26 + 18
    assert spec.country_code(None) == spec.country_code("") == spec.country_code("usa") == 0


# --- hashing ------------------------------------------------------------------------------------


def test_hashes_are_pinned() -> None:
    # Regression guard: a different hash silently invalidates every trained wide part.
    assert hash_str("1") == 8518482412311870710
    assert hash_str("Comedy") == 8315559345618375674
    assert hash_str("") == 3797230976420062948
    assert cross([1, 2, -1], [5, 5, 5], 3, 2**18).tolist() == [56176, 193061, 46928]
    assert cross(7, np.arange(3), 1, 100).tolist() == [55, 54, 5]


def test_hashes_do_not_depend_on_the_process() -> None:
    code = "from models.features.hashing import hash_str, cross; print(hash_str('item-42'), int(cross(3, 4, 5, 1000)))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{hash_str('item-42')} {int(cross(3, 4, 5, 1000))}\n"}


def test_crosses_spread_over_buckets() -> None:
    buckets = cross(np.arange(20_000), 7, 1, 64)
    counts = np.bincount(buckets, minlength=64)
    assert counts.min() > 200 and counts.max() < 430
    assert (cross(np.arange(100), 7, 1, 2**18) != cross(np.arange(100), 7, 2, 2**18)).mean() > 0.95


# --- decay arithmetic ---------------------------------------------------------------------------


@SETTINGS
@given(
    offsets=st.lists(st.integers(0, 20 * DAY), min_size=1, max_size=30),
    weights=st.lists(st.floats(-1.0, 2.0), min_size=30, max_size=30),
    half_life=st.sampled_from([DAY, 7 * DAY, 14 * DAY]),
    start=st.integers(1_500_000_000_000, 1_800_000_000_000),
    wait=st.integers(0, 3 * DAY),
)
def test_epoch_sums_read_as_the_closed_form_decayed_sum(
    offsets: list[int], weights: list[float], half_life: int, start: int, wait: int
) -> None:
    ts = start + np.array(sorted(offsets), np.int64)
    w = np.array(weights[: len(ts)], np.float64)
    now = int(ts.max()) + wait
    epoch, amount = epoch_amounts(ts, w, half_life)
    end, dec = epoch_weights(now, half_life)
    sums = np.array([amount[epoch == end - 1].sum(), amount[epoch == end].sum()], np.int64)
    got = float(decayed(sums, dec))
    kept = epoch >= end - 1  # older epochs are dropped by definition
    expected = sum(wi * 2.0 ** (-(now - ti) / half_life) for ti, wi, k in zip(ts, w, kept, strict=True) if k)
    # Fixed point: each event is rounded to 2**-20 of its (grown) weight.
    assert got == pytest.approx(expected, abs=len(ts) * 2.0**-19 + 1e-12)
    dropped = ts[~kept]
    assert dropped.size == 0 or (now - dropped).min() >= spec.EPOCH_HALF_LIVES * half_life


def test_user_taste_update_then_read_equals_closed_form(static: ItemStatic) -> None:
    item = int(np.flatnonzero(static.has_genre[:-1])[0])
    t0 = 1_767_225_600_000
    kinds = np.array([KIND["play"], KIND["complete"], KIND["skip"], KIND["rating"], KIND["progress"]], np.int8)
    ts = t0 + np.array([0, 3 * DAY, 5 * DAY, 9 * DAY, 10 * DAY], np.int64)
    value = np.array([0, 0, 0, 4.5, 100], np.float32)
    n = len(ts)
    batch = EventBatch(
        ts=ts, user=np.zeros(n, np.int64), item=np.zeros(n, np.int64), kind=kinds, value=value,
        duration=np.zeros(n, np.float32), device=np.array([1, 0, 2, 0, 0], np.int8), country=np.zeros(n, np.int16),
        hour=np.array([-1, 5, -1, -1, 7], np.int8), imp_ptr=np.zeros(n + 1, np.int64), imp_item=np.zeros(0, np.int64),
        user_keys=[0], item_keys=[item], item_static=np.array([item]), item_hash=static.item_hash[[item]],
    )
    state = UserStates.empty(1, static.n_genres)
    apply_user_events(state, batch, static)
    now = int(ts[-1]) + 2 * DAY
    w = feedback_weights(kinds, value).astype(np.float64)
    expected = sum(wi * 2.0 ** (-(now - ti) / spec.USER_GENRE_HALF_LIFE_MS) for ti, wi in zip(ts, w, strict=True))
    np.testing.assert_allclose(state.taste(0, now), expected * static.genre_unit[item], atol=1e-5)
    assert state.counts[0].tolist() == [4, 1, 1, 1, 1, 0, 0]  # ev, play, comp, skip, rate, click, add
    assert state.rating_milli[0] == 4500 and state.last_ts[0] == ts[-1]
    assert (state.device[0], state.hour[0]) == (2, 7)  # the last known value of each
    assert state.recent_item[0, 0] == static.item_hash[item] and state.recent_ts[0, 0] == ts[3]
    assert (state.recent_item[0, 1:] == -1).all()


def test_an_idle_user_starts_afresh(log: EventLog, static: ItemStatic) -> None:
    rows = np.flatnonzero((log.user == log.user[np.flatnonzero(log.item >= 0)[0]]) & (log.item >= 0))[:6]
    one_user = log.select(np.isin(np.arange(log.n_events), rows))
    late = one_user.select(np.ones(one_user.n_events, bool))
    late.ts[3:] += spec.USER_RETENTION_MS + DAY  # a gap of over a year before the 4th event
    store = replay_state(late, static=static)
    counted = late.kind[3:] != KIND["progress"]
    u = int(late.user[0])
    assert store.users.counts[u, 0] == counted.sum()
    # Read long after the last event: a new user again.
    now = int(late.ts[-1]) + spec.USER_RETENTION_MS + DAY
    rows_late, _ = build_rows(late, [Request(u, now, np.arange(5))], static)
    fresh, _ = build_rows(late, [Request(u, 1, np.arange(5))], static)
    names = spec.DENSE_NAMES
    for name in ("u_log_events", "u_log_hours_since_last", "u_genre_mass", "ui_seen_recent"):
        j = names.index(name)
        np.testing.assert_array_equal(rows_late.dense[:, j], fresh.dense[:, j], err_msg=name)


# --- state: order and batching ------------------------------------------------------------------


@SETTINGS
@given(cuts=st.lists(st.integers(1, 2999), max_size=12, unique=True))
def test_state_does_not_depend_on_batch_boundaries(log: EventLog, static: ItemStatic, cuts: list[int]) -> None:
    whole = InMemoryStore(static, n_users=log.n_users)
    whole.apply(EventBatch.from_log(log, 0, log.n_events, static))
    chunked = InMemoryStore(static, n_users=log.n_users)
    bounds = [0, *sorted(c for c in cuts if c < log.n_events), log.n_events]
    for a, b in itertools.pairwise(bounds):
        chunked.apply(EventBatch.from_log(log, a, b, static))
    _assert_same_state(whole, chunked)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), partitions=st.integers(2, 5))
def test_workers_of_different_partitions_may_interleave(
    log: EventLog, static: ItemStatic, seed: int, partitions: int
) -> None:
    """Users are partitioned (each worker applies its users' events in order); items are written by
    every worker in any interleaving: the state equals the sequential replay's."""
    rng = np.random.default_rng(seed)
    expected = replay_state(log, static=static)
    part_of_user = rng.integers(0, partitions, log.n_users)
    queues = []
    for p in range(partitions):
        plog = log.select(part_of_user[log.user] == p)
        cuts = np.unique(rng.integers(0, plog.n_events + 1, 4)).tolist()
        bounds = [0, *cuts, plog.n_events]
        queues.append([EventBatch.from_log(plog, a, b, static) for a, b in itertools.pairwise(bounds)])
    store = InMemoryStore(static, n_users=log.n_users)
    while any(queues):
        queue = queues[rng.choice([i for i, q in enumerate(queues) if q])]
        store.apply(queue.pop(0))
    _assert_same_state(expected, store)


async def test_events_from_the_wire_equal_events_from_the_log(
    world: Path, log: EventLog, static: ItemStatic
) -> None:
    """The worker's path (decoded JSON events -> EventBatch.from_events) and the training path
    (load_log -> EventBatch.from_log) build the same state."""
    events = [interaction_decoder.decode(line) for line in (world / "events.jsonl").read_bytes().splitlines()]
    online = MemoryFeatureStore(static)
    offline = replay_state(log, static=static)
    for i in range(0, len(events), 300):
        await online.apply_events(events[i:i + 300])
    rows = np.array([online._user_rows[u] for u in log.user_ids])  # online rows are in order of first sight
    np.testing.assert_array_equal(online.store.users.counts[rows], offline.users.counts[: log.n_users])
    np.testing.assert_array_equal(online.store.users.genre_sums[rows], offline.users.genre_sums[: log.n_users])
    np.testing.assert_array_equal(online.store.users.recent_item[rows], offline.users.recent_item[: log.n_users])
    n = static.n_items
    np.testing.assert_array_equal(online.store.item_counts[:n], offline.item_counts[:n])
    np.testing.assert_array_equal(online.store.pop_sums[:n], offline.pop_sums[:n])


# --- rows ---------------------------------------------------------------------------------------


def _requests(log: EventLog, rng: np.random.Generator, n: int, n_candidates: int = 60) -> list[Request]:
    rows = rng.choice(np.flatnonzero(log.item >= 0), n, replace=False)
    country = log_country_codes(log)
    out = []
    for r in rows:
        u = int(log.user[r])
        seen = np.unique(log.item[(log.user == u) & (log.item >= 0) & (log.ts < log.ts[r])])[:10]
        candidates = np.unique(np.concatenate([rng.choice(log.catalog.n_items, n_candidates), seen]))
        ctx = RequestContext(int(log.device[r]), int(country[r]), int(log.hour[r])) if rng.random() < 0.7 \
            else RequestContext()
        out.append(Request(u, int(log.ts[r]), candidates.astype(np.int64), ctx))
    return out


def test_rows_have_the_layout_shape_and_are_finite(log: EventLog, static: ItemStatic) -> None:
    requests = _requests(log, np.random.default_rng(1), 30)
    rows, index = build_rows(log, requests, static)
    layout = feature_layout(static.n_items, static.n_genres)
    assert rows.dense.dtype == np.float32 and rows.wide.dtype == np.int64 and rows.cats.dtype == np.int64
    assert rows.dense.shape == (len(rows), len(layout.dense_names))
    assert rows.wide.shape == (len(rows), len(layout.wide_names))
    assert rows.cats.shape == (len(rows), len(layout.cat_names))
    assert len(rows) == sum(len(r.candidates) for r in requests) and len(index) == len(rows)
    assert np.isfinite(rows.dense).all()
    assert np.abs(rows.dense).max() < 3.0  # roughly unit range
    assert ((rows.wide >= 0) & (rows.wide < layout.wide_buckets)).all()
    assert ((rows.cats >= 0) & (rows.cats < np.array(layout.cat_cardinalities))).all()
    for name in spec.STATE_DENSE_NAMES:  # every state feature varies somewhere (none is dead)
        if name not in ("i_unknown", "i_is_original", "i_log_ratings", "u_log_ratings", "u_mean_rating"):
            assert rows.dense[:, spec.DENSE_NAMES.index(name)].std() > 0, name
    # Requests come back in the order given, whatever their times.
    shuffled = requests[::-1]
    again, index2 = build_rows(log, shuffled, static)
    first = np.flatnonzero(index2 == len(requests) - 1)
    np.testing.assert_array_equal(again.dense[first], rows.dense[index == 0])


def test_no_requests_give_empty_rows(log: EventLog) -> None:
    rows, index = build_rows(log, [])
    assert rows.dense.shape == (0, len(spec.DENSE_NAMES)) and len(index) == 0


def test_extra_dense_columns_are_filled_by_name(log: EventLog, static: ItemStatic) -> None:
    request = _requests(log, np.random.default_rng(2), 1)[0]
    n = len(request.candidates)
    scores = np.linspace(0, 1, n)
    rows, _ = build_rows(log, [request], static, lambda r: {"cf_score": scores, "src_popular": 1.0})
    np.testing.assert_allclose(rows.dense[:, spec.DENSE_NAMES.index("cf_score")], scores.astype(np.float32))
    assert (rows.dense[:, spec.DENSE_NAMES.index("src_popular")] == 1.0).all()
    assert (rows.dense[:, spec.DENSE_NAMES.index("src_ann")] == 0.0).all()
    with pytest.raises(ValueError, match="unknown extra dense"):
        build_rows(log, [request], static, lambda r: {"cf_scores": scores})


def test_unknown_context_falls_back_to_the_users_last(log: EventLog, static: ItemStatic) -> None:
    replay = Replay(log, static)
    replay.advance(None)
    u = int(np.argmax(replay.store.users.device[: log.n_users] > 0))
    now = int(log.ts[-1]) + 1
    last = replay.store.read_user(u)
    blank = replay.features(Request(u, now, np.arange(5)))
    given_ctx = replay.features(Request(u, now, np.arange(5), RequestContext(int(last.device[0]),
                                                                              int(last.country[0]),
                                                                              int(last.hour[0]))))
    np.testing.assert_array_equal(blank.cats, given_ctx.cats)
    np.testing.assert_array_equal(blank.wide, given_ctx.wide)


def test_context_at_a_log_row_uses_the_stable_codes(log: EventLog) -> None:
    codes = log_country_codes(log)
    for row in np.linspace(0, log.n_events - 1, 50).astype(int).tolist():
        assert context_at(log, row) == RequestContext(int(log.device[row]), int(codes[row]), int(log.hour[row]))
    assert (codes > 0).any()


def test_a_replay_refuses_to_read_out_of_time(log: EventLog, static: ItemStatic) -> None:
    replay = Replay(log, static)
    t = int(log.ts[1000])
    with pytest.raises(ValueError, match="advance the replay"):
        replay.features(Request(0, t, np.arange(3)))  # state older than t
    replay.advance(t)
    replay.features(Request(0, t, np.arange(3)))
    with pytest.raises(ValueError, match="advance the replay"):
        replay.features(Request(0, int(log.ts[10]), np.arange(3)))  # state newer than that request
    with pytest.raises(ValueError, match="cannot go back"):
        replay.advance(int(log.ts[10]))
    other = ItemStatic.build(["x"], [["Drama"]], np.zeros(1, np.int64), np.zeros(1, np.int64),
                             np.zeros(1, np.int8), np.zeros(1, bool))
    with pytest.raises(ValueError, match="catalog"):
        Replay(log, other)


@SETTINGS
@given(data=st.data())
def test_a_row_at_t_ignores_events_at_or_after_t(log: EventLog, static: ItemStatic, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, log.n_events - 1))
    t = int(log.ts[k])
    user = data.draw(st.integers(0, log.n_users - 1))
    candidates = np.array(data.draw(st.lists(st.integers(0, static.n_items - 1), min_size=1, max_size=40)))
    request = Request(user, t, candidates, RequestContext(hour=data.draw(st.integers(-1, 23))))
    full, _ = build_rows(log, [request], static)
    prefix, _ = build_rows(log.select(log.ts < t), [request], static)
    # The whole log (events at and after t appended to the prefix) gives the same rows as the prefix.
    np.testing.assert_array_equal(full.dense, prefix.dense)
    np.testing.assert_array_equal(full.wide, prefix.wide)
    np.testing.assert_array_equal(full.cats, prefix.cats)


def test_the_event_at_t_itself_is_not_seen(log: EventLog, static: ItemStatic) -> None:
    r = int(np.flatnonzero((log.item >= 0) & (log.kind != KIND["progress"]))[200])
    u, t = int(log.user[r]), int(log.ts[r])
    before = ((log.user == u) & (log.item >= 0) & (log.kind != KIND["progress"]) & (log.ts < t)).sum()
    rows, _ = build_rows(log, [Request(u, t, np.array([int(log.item[r])]))], static)
    j = spec.DENSE_NAMES.index("u_log_events")
    assert rows.dense[0, j] == np.float32(math.log1p(before) / 8)


# --- rows against a slow reference computed from the raw events ----------------------------------

_USER_KINDS = {KIND[k] for k in ("play", "progress", "complete", "rating", "click", "skip", "add_to_list")}
_POP_KINDS = {KIND[k] for k in ("play", "complete", "rating", "click", "add_to_list")}


def _reference_rows(log: EventLog, static: ItemStatic, req: Request) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every feature of every candidate, one candidate at a time, from the events before ``req.ts``
    (the documented definitions; no state code)."""
    t = req.ts
    past = np.flatnonzero(log.ts < t)
    weights = feedback_weights(log.kind, log.value).astype(np.float64)
    mine = [r for r in past if log.user[r] == req.user and log.item[r] >= 0 and log.kind[r] in _USER_KINDS]
    counted = [r for r in mine if log.kind[r] != KIND["progress"]]

    def n_kind(rows: list[int], name: str) -> int:
        return sum(1 for r in rows if log.kind[r] == KIND[name])

    plays, ratings = n_kind(counted, "play"), n_kind(counted, "rating")
    rating_sum = sum(round(float(log.value[r]) * 1000) for r in counted if log.kind[r] == KIND["rating"]) / 1000
    h_taste = spec.USER_GENRE_HALF_LIFE_MS
    e_now = t // (h_taste * spec.EPOCH_HALF_LIVES)
    taste = np.zeros(static.n_genres)
    for r in mine:
        if weights[r] != 0 and log.ts[r] // (h_taste * spec.EPOCH_HALF_LIVES) >= e_now - 1:
            taste += weights[r] * static.genre_unit[log.item[r]] * 2.0 ** (-(t - log.ts[r]) / h_taste)
    recent: list[tuple[int, int]] = []  # (item, ts), most recent first
    for r in mine:
        if weights[r] > 0:
            recent = [(int(log.item[r]), int(log.ts[r]))] + [p for p in recent if p[0] != log.item[r]]
    recent = recent[: spec.RECENT_ITEMS]
    last_known = {}
    columns = {"device": log.device, "country": log_country_codes(log), "hour": log.hour}
    for name, known in (("device", lambda v: v > 0), ("country", lambda v: v > 0), ("hour", lambda v: v >= 0)):
        values = [int(columns[name][r]) for r in mine]
        values = [v for v in values if known(v)]
        last_known[name] = values[-1] if values else (-1 if name == "hour" else 0)
    device = req.context.device or last_known["device"]
    country = req.context.country or last_known["country"]
    hour = req.context.hour if req.context.hour >= 0 else last_known["hour"]
    shown = np.zeros(static.n_items, np.int64)
    for k, row in enumerate(log.impression_rows):
        if log.ts[row] < t:
            np.add.at(shown, log.impression_items[log.impression_ptr[k]:log.impression_ptr[k + 1]], 1)

    def smooth(hits: float, trials: float, prior: tuple[float, float]) -> float:
        return (hits + prior[1] * prior[0]) / (trials + prior[1])

    user_cols = {
        "u_log_events": math.log1p(len(counted)) / 8, "u_log_plays": math.log1p(plays) / 8,
        "u_log_completes": math.log1p(n_kind(counted, "complete")) / 8, "u_log_ratings": math.log1p(ratings) / 8,
        "u_skip_rate": smooth(n_kind(counted, "skip"), plays, spec.SKIP_PRIOR),
        "u_mean_rating": (smooth(rating_sum, ratings, spec.RATING_PRIOR) - 0.5) / 4.5,
        "u_log_hours_since_last": math.log1p((t - max(log.ts[r] for r in mine)) / 3.6e6) / 10 if mine else 1.0,
        "u_genre_mass": math.log1p(float(np.abs(taste).sum())) / 5,
    }
    dense, wide, cats = [], [], []
    for i in req.candidates.tolist():
        on_item = [r for r in past
                   if log.item[r] == i and log.kind[r] in _USER_KINDS and log.kind[r] != KIND["progress"]]
        pops = []
        for _, h in spec.POP_HALF_LIVES:
            e = t // (h * spec.EPOCH_HALF_LIVES)
            pops.append(sum(2.0 ** (-(t - log.ts[r]) / h) for r in on_item
                            if log.kind[r] in _POP_KINDS and log.ts[r] // (h * spec.EPOCH_HALF_LIVES) >= e - 1))
        i_plays, i_ratings = n_kind(on_item, "play"), n_kind(on_item, "rating")
        i_rsum = sum(round(float(log.value[r]) * 1000) for r in on_item if log.kind[r] == KIND["rating"]) / 1000
        unit = static.genre_unit[i]
        denom = float(np.linalg.norm(unit) * np.linalg.norm(taste))
        seen = [ts for item, ts in recent if item == i]
        col = {
            **user_cols,
            "i_log_pop_1d": math.log1p(pops[0]) / 8, "i_log_pop_7d": math.log1p(pops[1]) / 8,
            "i_trend": math.log((7 * pops[0] + 1) / (pops[1] + 1)), "i_log_plays": math.log1p(i_plays) / 8,
            "i_log_ratings": math.log1p(i_ratings) / 8,
            "i_completion_rate": smooth(n_kind(on_item, "complete"), i_plays, spec.COMPLETION_PRIOR),
            "i_skip_rate": smooth(n_kind(on_item, "skip"), i_plays, spec.SKIP_PRIOR),
            "i_ctr": smooth(n_kind(on_item, "click"), shown[i], spec.CTR_PRIOR),
            "i_mean_rating": (smooth(i_rsum, i_ratings, spec.RATING_PRIOR) - 0.5) / 4.5,
            "i_log_age_days": math.log1p(max(0, t - log.catalog.release_ts[i]) / DAY) / 10,
            "i_log_days_in_catalog": math.log1p(max(0, t - log.catalog.first_seen_ts[i]) / DAY) / 10,
            "i_is_original": float(log.catalog.is_original[i]), "i_maturity": log.catalog.maturity[i] / 5,
            "i_unknown": 0.0,
            "ui_genre_affinity": float(unit @ taste) / denom if denom > 0 else 0.0,
            "ui_seen_recent": float(bool(seen)), "ui_recent_decay": 2.0 ** (-(t - seen[0]) / DAY) if seen else 0.0,
            "ctx_hour_sin": math.sin(2 * math.pi * hour / 24) if hour >= 0 else 0.0,
            "ctx_hour_cos": math.cos(2 * math.pi * hour / 24) if hour >= 0 else 0.0,
        }
        dense.append([col.get(name, 0.0) for name in spec.DENSE_NAMES])
        genres = log.catalog.genres[i]
        primary = static.genre_vocab.index(genres[0]) + 1 if genres else 0
        item_hash = hash_str(log.catalog.item_ids[i])
        last_item = hash_str(log.catalog.item_ids[recent[0][0]]) if recent else -1
        b = spec.WIDE_BUCKETS
        wide.append([
            int(cross(hash_str(log.user_ids[req.user]), hash_str(genres[0]) if genres else 0, 1, b)),
            int(cross(item_hash, device, 2, b)), int(cross(item_hash, hour // 3 if hour >= 0 else 8, 3, b)),
            int(cross(item_hash, country, 4, b)), int(cross(last_item, item_hash, 5, b)),
        ])
        activity = 0 if not counted else min(12, 1 + math.floor(math.log2(len(counted))))
        cats.append([i + 1, primary, device, country, hour + 1, activity])
    return np.array(dense), np.array(wide, np.int64), np.array(cats, np.int64)


def test_vectorised_rows_equal_a_per_candidate_reference(log: EventLog, static: ItemStatic) -> None:
    requests = _requests(log, np.random.default_rng(3), 12, n_candidates=25)
    rows, index = build_rows(log, requests, static)
    for k, request in enumerate(requests):
        dense, wide, cats = _reference_rows(log, static, request)
        mine = rows.take(np.flatnonzero(index == k))
        # float32 output and the 2**-20 fixed point of decayed sums: equal to ~1e-6.
        np.testing.assert_allclose(mine.dense, dense, rtol=1e-5, atol=2e-6)
        np.testing.assert_array_equal(mine.wide, wide)
        np.testing.assert_array_equal(mine.cats, cats)


# --- the online stores against the offline builder (fakeredis; real Redis: integration tests) ----


async def test_redis_and_memory_stores_match_the_offline_builder(
    world: Path, log: EventLog, static: ItemStatic
) -> None:
    events = [interaction_decoder.decode(line) for line in (world / "events.jsonl").read_bytes().splitlines()]
    cut = int(log.ts[2000])
    prefix = [e for e in events if e.ts < cut]
    client = fakeredis.FakeAsyncRedis()
    stores = [RedisFeatureStore(client, static), MemoryFeatureStore(static)]
    for i in range(0, len(prefix), 170):
        batch = EventBatch.from_events(prefix[i:i + 170], static)
        for store in stores:
            await store.apply(batch)
    requests = [Request(r.user, cut, r.candidates, r.context) for r in _requests(log, np.random.default_rng(4), 8)]
    offline, index = build_rows(log, requests, static)
    for k, request in enumerate(requests):
        ids = [static.item_ids[i] for i in request.candidates]
        expected = offline.take(np.flatnonzero(index == k))
        for store in stores:
            online = await store.features(log.user_ids[request.user], ids, cut, request.context)
            np.testing.assert_array_equal(online.dense, expected.dense)
            np.testing.assert_array_equal(online.wide, expected.wide)
            np.testing.assert_array_equal(online.cats, expected.cats)
    await client.aclose()


async def test_unknown_items_and_users_read_as_empty(static: ItemStatic) -> None:
    client = fakeredis.FakeAsyncRedis()
    store = RedisFeatureStore(client, static)
    rows = await store.features("nobody", ["no-such-item", static.item_ids[0]], 1_767_225_600_000)
    unknown = spec.DENSE_NAMES.index("i_unknown")
    assert rows.dense[:, unknown].tolist() == [1.0, 0.0]
    assert rows.cats[:, 0].tolist() == [0, 1]
    for empty in (store, MemoryFeatureStore(static)):
        none = await empty.features("nobody", [], 1_767_225_600_000)
        assert none.dense.shape == (0, len(spec.DENSE_NAMES)) and none.wide.shape == (0, len(spec.WIDE_NAMES))
    await client.aclose()


def test_redis_store_refuses_a_decoding_client(static: ItemStatic) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisFeatureStore(fakeredis.FakeAsyncRedis(decode_responses=True), static)


def test_lookup_gives_known_and_unknown_ids_their_stable_hash() -> None:
    from models.features.hashing import hash_strs

    static = ItemStatic.build(["a", "b", "c"], [["Drama"], [], ["Comedy"]], np.zeros(3, np.int64),
                              np.zeros(3, np.int64), np.zeros(3, np.int8), np.zeros(3, bool))
    ids = ["c", "zz-new", "a", "a", "unknown-2"]
    index, hashes = static.lookup(ids)
    assert index.tolist() == [2, -1, 0, 0, -1]
    np.testing.assert_array_equal(hashes, hash_strs(ids))
    assert static.lookup([])[0].shape == (0,)
