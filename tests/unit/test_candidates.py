"""Candidate sources and the merge: budgets, order, exclusion, attribution, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from models.ann import IndexParams, ItemIndex
from models.candidates import (
    DAY_MS,
    NO_SEED,
    SOURCES,
    Histories,
    ann_cf,
    as_mask,
    because_you_watched,
    content_based,
    merge_candidates,
    new_releases,
    popular,
    recent_positives,
    user_content_profile,
    user_histories,
)
from models.config import TwoStageConfig
from models.dataset import EventLog, load_log
from models.eval.model_systems import TwoStageSystem
from models.features.spec import feature_layout
from models.features.state import ItemStatic
from models.recommend.pipeline import RecommendRequest, Snapshot, retrieve
from models.two_stage import fit_retrieval, recommender
from tools.datasets.world import generate_world

N_ITEMS = 500


def _vectors(n: int = N_ITEMS, d: int = 16, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    return (centres[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, d))).astype(np.float32)


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _src(items: list[int], scores: list[float] | None = None) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    return np.array(items, np.int32), np.array(scores if scores is not None else [1.0] * len(items), np.float32)


# -- merge ----------------------------------------------------------------------------------------


def test_merge_dedups_attributes_and_excludes() -> None:
    available = np.ones(20, bool)
    available[7] = False
    sources = {
        "ann_cf": _src([1, 2, 3, 7], [0.9, 0.8, 0.7, 0.6]),
        "popular": _src([3, 4, 5], [5.0, 4.0, 3.0]),
        "empty": _src([]),
        "byw": (np.array([4, 6, 2], np.int32), np.array([0.5, 0.4, 0.3], np.float32), np.array([11, 12, 13], np.int32)),
    }
    c = merge_candidates(sources, exclude=np.array([5]), available=available)
    assert c.items.tolist() == [1, 2, 3, 4, 6]  # 5 watched, 7 unavailable
    assert c.source_names == ("ann_cf", "popular", "empty", "byw")
    assert c.from_source("ann_cf").tolist() == [True, True, True, False, False]
    assert c.from_source("popular").tolist() == [False, False, True, True, False]
    assert not c.from_source("empty").any()
    assert c.sources.tolist() == [0b0001, 0b1001, 0b0011, 0b1010, 0b1000]
    np.testing.assert_array_equal(c.scores[:, 0], np.array([0.9, 0.8, 0.7, np.nan, np.nan], np.float32))
    np.testing.assert_array_equal(c.ranks[:, 1], [-1, -1, 0, 1, -1])
    assert c.seed.tolist() == [NO_SEED, 13, NO_SEED, 11, 12]
    assert c.score_matrix()[0].tolist() == pytest.approx([0.9, 0.0, 0.0, 0.0])
    assert len(c) == 5


def test_merge_of_nothing_and_mask_forms() -> None:
    c = merge_candidates({})
    assert len(c) == 0 and c.scores.shape == (0, 0)
    c = merge_candidates({"a": _src([]), "b": _src([])})
    assert len(c) == 0 and c.scores.shape == (0, 2) and c.seed.shape == (0,)
    # Exclusion as a mask or as indices gives the same; items beyond ``available`` are dropped.
    src = {"a": _src([0, 3, 9, 25])}
    by_mask = merge_candidates(src, exclude=as_mask([3], 10), available=np.ones(10, bool))
    by_index = merge_candidates(src, exclude=np.array([3]), available=np.ones(10, bool))
    assert by_mask.items.tolist() == by_index.items.tolist() == [0, 9]


def test_merge_keeps_a_sources_best_score_for_a_repeated_item() -> None:
    c = merge_candidates({"a": _src([4, 4, 2], [0.1, 0.7, 0.3])})
    assert c.items.tolist() == [2, 4]
    assert c.scores[:, 0].tolist() == pytest.approx([0.3, 0.7])
    assert c.ranks[:, 0].tolist() == [2, 0]


source_lists = st.lists(
    st.tuples(st.lists(st.integers(0, 60), max_size=40), st.booleans()), min_size=0, max_size=6
)


@settings(max_examples=150, deadline=None)
@given(source_lists, st.lists(st.integers(0, 70), max_size=30), st.lists(st.booleans(), min_size=50, max_size=50))
def test_merge_invariants(raw: list[tuple[list[int], bool]], watched: list[int], avail: list[bool]) -> None:
    rng = np.random.default_rng(len(raw))
    sources = {}
    for s, (items, with_seed) in enumerate(raw):
        arr = np.array(items, np.int32)
        scores = rng.random(len(arr)).astype(np.float32)
        sources[f"s{s}"] = (arr, scores, arr + 1000) if with_seed else (arr, scores)
    available = np.array(avail, bool)  # 50 long: items 50..60 are unknown, hence unavailable
    c = merge_candidates(sources, exclude=np.array(watched, np.int64), available=available)
    eligible = {i for items, _ in raw for i in items if i not in set(watched) and i < 50 and avail[i]}
    assert c.items.tolist() == sorted(eligible)  # distinct, sorted, exactly the eligible ones
    for s, name in enumerate(sources):
        items, scores = sources[name][0], sources[name][1]
        got = c.from_source(name)
        assert set(c.items[got].tolist()) == eligible & set(items.tolist())
        for row in np.flatnonzero(got):
            mine = items == c.items[row]
            assert c.scores[row, s] == pytest.approx(scores[mine].max())
            assert c.ranks[row, s] == np.flatnonzero(mine)[0]
        assert np.isnan(c.scores[~got, s]).all() and (c.ranks[~got, s] == -1).all()
    seeded = [n for n, (_, w) in zip(sources, raw, strict=True) if w]
    has_seed = np.zeros(len(c), bool)
    for name in seeded:
        has_seed |= c.from_source(name)
    assert ((c.seed != NO_SEED) == has_seed).all()
    assert (c.seed[has_seed] == c.items[has_seed] + 1000).all()


# -- sources --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors() -> NDArray[np.float32]:
    return _vectors()


@pytest.fixture(scope="module")
def ip_index(vectors: NDArray[np.float32]) -> ItemIndex:
    return ItemIndex.build(vectors, IndexParams(space="ip"))


@pytest.fixture(scope="module")
def cos_index(vectors: NDArray[np.float32]) -> ItemIndex:
    return ItemIndex.build(vectors, IndexParams(space="cosine"))


def test_ann_cf_budget_order_and_exclusion(ip_index: ItemIndex, vectors: NDArray[np.float32]) -> None:
    user = vectors[:5].mean(axis=0)
    items, scores = ann_cf(ip_index, user, 50)
    assert items.dtype == np.int32 and scores.dtype == np.float32 and len(items) == 50
    assert np.all(np.diff(scores) <= 1e-6)
    exact = np.argsort(-(vectors @ user))[:50]
    assert len(np.intersect1d(items, exact)) >= 45
    exclude = as_mask(items[:20], N_ITEMS)
    again, _ = ann_cf(ip_index, user, 50, exclude)
    assert len(again) == 50 and not np.isin(again, items[:20]).any()
    assert len(ann_cf(ip_index, np.zeros(16), 50)[0]) == 0  # no CF vector, no CF candidates
    assert len(ann_cf(ip_index, user, 0)[0]) == 0


def test_content_profile_and_content_source(vectors: NDArray[np.float32], cos_index: ItemIndex) -> None:
    content = _unit(vectors)
    # A skip nets item 9 to zero: not part of the profile. Item 3 is old: it weighs less.
    items = np.array([3, 4, 9, 9, 5])
    weights = np.array([2.0, 1.0, 1.0, -1.0, 1.0])
    ts = np.array([0, 100 * DAY_MS, 100 * DAY_MS, 100 * DAY_MS + 1, 100 * DAY_MS + 2])
    prof = user_content_profile(content, items, weights, ts, half_life_days=10.0)
    expect = content[4] + content[5] + 2.0 * 0.5 ** 10 * content[3]
    np.testing.assert_allclose(prof, expect / np.linalg.norm(expect), atol=1e-5)
    flat = user_content_profile(content, items, weights, ts, half_life_days=None)
    expect = content[4] + content[5] + 2.0 * content[3]
    np.testing.assert_allclose(flat, expect / np.linalg.norm(expect), atol=1e-5)
    assert not user_content_profile(content, np.array([], int), np.array([])).any()
    got, scores = content_based(content, prof, 30, as_mask([4, 5], N_ITEMS))
    assert len(got) == 30 and not np.isin(got, [4, 5]).any() and np.all(np.diff(scores) <= 1e-6)
    np.testing.assert_array_equal(got, np.argsort(-(content @ prof), kind="stable")[~np.isin(
        np.argsort(-(content @ prof), kind="stable"), [4, 5])][:30])
    via_index, _ = content_based(cos_index, prof, 30, as_mask([4, 5], N_ITEMS))
    assert len(np.intersect1d(via_index, got)) >= 27
    assert len(content_based(content, np.zeros(16), 30)[0]) == 0


def test_recent_positives_keeps_last_distinct_positive_items() -> None:
    items, net, last = recent_positives(np.array([1, 2, 1, 3, 4, 4]), np.array([1.0, 1.0, 1.0, 1.0, 1.0, -1.0]),
                                        np.array([10, 20, 30, 40, 50, 60]), max_items=2)
    assert items.tolist() == [1, 3] and net.tolist() == [2.0, 1.0] and last.tolist() == [30, 40]  # newest last
    assert len(recent_positives(np.array([], int), np.array([]))[0]) == 0
    assert len(recent_positives(np.array([1]), np.array([1.0]), max_items=0)[0]) == 0


def test_popular_with_and_without_context() -> None:
    pop = np.array([0.0, 10.0, 5.0, 8.0, 1.0], np.float32)
    items, scores = popular(pop, 3)
    assert items.tolist() == [1, 3, 2] and scores[0] == pytest.approx(1.0)
    ctx = np.array([0.0, 0.0, 9.0, 0.0, 9.0], np.float32)
    items, _ = popular(pop, 3, ctx, context_weight=0.8)
    assert items.tolist() == [2, 4, 1]
    items, _ = popular(pop, 10, exclude=as_mask([1], 5))
    assert items.tolist() == [3, 2, 4]  # zero-popularity titles are not "popular"
    assert len(popular(np.zeros(5, np.float32), 3)[0]) == 0


def test_new_releases_window_and_ranking() -> None:
    now = 100 * DAY_MS
    release = np.array([now - 40 * DAY_MS, now - 1 * DAY_MS, now - 10 * DAY_MS, now + DAY_MS, now - 29 * DAY_MS])
    items, scores = new_releases(release, now, 10, window_days=30)
    assert items.tolist() == [1, 2, 4]  # 0 too old, 3 not out yet; newest first
    assert scores[0] == pytest.approx(1 - 1 / 30)
    pop = np.array([9.0, 0.0, 3.0, 9.0, 3.0], np.float32)
    items, scores = new_releases(release, now, 2, window_days=30, popularity=pop)
    assert items.tolist() == [2, 4] and scores.tolist() == [3.0, 3.0]  # equal popularity: newer first
    assert new_releases(release, now, 10, 30, exclude=as_mask([2], 5))[0].tolist() == [1, 4]
    assert len(new_releases(release, 0, 10)[0]) == 0


def test_because_you_watched_remembers_seeds(cos_index: ItemIndex, vectors: NDArray[np.float32]) -> None:
    seeds = np.array([10, 20, 30])
    items, scores, from_seed = because_you_watched(cos_index, seeds, 40)
    assert len(items) == 40 and len(np.unique(items)) == 40
    assert not np.isin(items, seeds).any()
    assert np.all(np.diff(scores) <= 1e-6)
    unit = _unit(vectors)
    # Each candidate's score is its cosine to the seed it is attributed to, the best of the seeds.
    np.testing.assert_allclose(scores, np.einsum("nd,nd->n", unit[items], unit[from_seed]), atol=1e-4)
    best = (unit[items] @ unit[seeds].T).max(axis=1)
    np.testing.assert_allclose(scores, best, atol=1e-4)
    excluded, _, _ = because_you_watched(cos_index, seeds, 40, exclude=as_mask(items[:5], N_ITEMS))
    assert not np.isin(excluded, items[:5]).any()
    assert len(because_you_watched(cos_index, np.array([], int), 40)[0]) == 0
    assert len(because_you_watched(cos_index, np.array([10_000]), 40)[0]) == 0  # unknown seed


# -- the whole pipeline on a small world ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    folder = tmp_path_factory.mktemp("cand-world")
    generate_world(folder, users=150, items=800, events=15_000, seed=11, days=14.0)
    return load_log(folder)


def test_the_pipeline_retrieves_within_budgets_and_exclusions(world: EventLog) -> None:
    config = TwoStageConfig(dim=16, sequence_epochs=3)
    assert config.candidates.total == 1250  # the budgets tuned on validation (issue 13)
    retrieval = fit_retrieval(world, config)
    layout = feature_layout(world.catalog.n_items, ItemStatic.from_catalog(world.catalog).n_genres)
    model = recommender(retrieval, world, config, layout, None)
    histories = user_histories(world)
    assert isinstance(histories, Histories) and histories.ptr[-1] == world.item_events().sum()
    user = int(np.argmax(np.diff(histories.ptr)))
    items, _, ts = histories.of(user)
    assert np.all(np.diff(ts) >= 0)
    now = int(world.ts.max()) + 1
    cands = retrieve(model, RecommendRequest(world.user_ids[user]), Snapshot(), now).candidates
    assert 0 < len(cands) <= config.candidates.total
    assert not np.isin(cands.items, items).any() and world.catalog.available[cands.items].all()
    assert set(cands.source_names) == set(SOURCES)
    budgets = config.candidates.budgets()
    for name in cands.source_names:
        assert cands.from_source(name).sum() <= budgets[name]
    # Offline evaluation reports the same candidates, source by source.
    system = TwoStageSystem.__new__(TwoStageSystem)
    system.log, system.recommender = world, model
    per_source = system.candidates(np.array([user], np.int32))
    assert np.array_equal(per_source["merged"][0], cands.items)
    assert sum(len(per_source[name][0]) for name in SOURCES) >= len(cands)
    # A brand-new user still gets popular and new titles, and no CF candidates.
    fresh = retrieve(model, RecommendRequest("nobody-yet"), Snapshot(), now).candidates
    assert fresh.from_source("popular").any() and "ann_cf" not in fresh.source_names
