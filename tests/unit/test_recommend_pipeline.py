"""The recommend pipeline's pure stages: candidates and exclusions, trending/new-release inputs, reasons,
live catalog and item-vector updates of a model; the serving tail's replay log and options."""

from __future__ import annotations

from typing import Any

import fakeredis.aioredis
import numpy as np
import pytest

from foundation.settings import Settings
from models.ann import IndexParams, ItemIndex
from models.candidates import NO_SEED, CandidateConfig, Histories, merge_candidates, popular_scores
from models.catalog import CatalogTable
from models.config import TwoStageConfig
from models.features.spec import feature_layout
from models.features.state import ItemStatic
from models.item_vector_codec import ItemVector
from models.postprocess import PostConfig
from models.recommend.model import ItemTable, RecommenderModel
from models.recommend.pipeline import (
    PUBLIC_SOURCE,
    RankedIds,
    RecommendRequest,
    Retrieved,
    Snapshot,
    _isin,
    answer,
    fallback_scores,
    popular_source_scores,
    reasons,
    release_candidates,
    retrieve,
    source_names,
    trending_arrays,
    user_context,
)
from online_state.reads import RequestScopes
from schemas.events import ItemRemove, ItemUpsert
from serving.live_tail import LiveState
from serving.options import ServingOptions, options_from_settings
from serving.service import RecommendationService

N, DIM, DAY = 30, 8, 86_400_000
NOW = 1_780_000_000_000
GENRES = ["Drama", "Comedy", "Action"]


class _Content:
    """Stands in for the bundle's content model: every title embeds to the same unit vector."""

    def embed(self, titles: list[str], *_: Any) -> np.ndarray:
        out = np.zeros((len(titles), 12), np.float32)
        out[:, 0] = 1.0
        return out


def tiny_model() -> RecommenderModel:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    content = rng.normal(size=(N, 12)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(N)]
    genres = [[GENRES[k % 3]] for k in range(N)]
    maturity = np.array([0] * 10 + [3] * 10 + [5] * 10, np.int8)
    available = np.ones(N, bool)
    available[29] = False
    release = np.full(N, NOW - 400 * DAY, np.int64)
    genre_matrix = np.zeros((N, 3), np.float32)
    genre_matrix[np.arange(N), np.arange(N) % 3] = 1.0
    catalog = CatalogTable(
        item_ids=ids, index={i: k for k, i in enumerate(ids)}, titles=[f"Title {k}" for k in range(N)],
        genres=genres, tags=[[] for _ in ids], cast=[[] for _ in ids], year=[0] * N, release_ts=release.tolist(),
        first_seen_ts=release.tolist(), maturity=maturity.tolist(), is_original=[False] * N,
        available=available.tolist(), described=[True] * N)
    items = ItemTable(catalog=catalog, genre_vocab=GENRES, content=content,
                      popularity=np.linspace(10, 1, N).astype(np.float32))
    assert np.array_equal(items.genre_matrix, genre_matrix)
    static = ItemStatic.build(ids, genres, release, release, maturity, np.zeros(N, bool), GENRES)
    config = TwoStageConfig(candidates=CandidateConfig(ann_cf=10, content=10, popular=10, new_releases=5, byw=10,
                                                       byw_seeds=3))
    model = RecommenderModel(
        version="v1", config=config, items=items, n_bundle_items=N,
        cf_index=ItemIndex.build(vectors, IndexParams(space="ip")),
        neighbour_index=ItemIndex.build(vectors, IndexParams(space="cosine")),
        static=static, layout=feature_layout(N, 3), content_model=_Content(),  # type: ignore[arg-type]
        ranker=None, user_index={"u0": 0}, user_vectors=vectors[:1].copy(),  # type: ignore[arg-type]
        trained_users=np.array([True]),
        histories=Histories(np.array([0, 3]), np.array([0, 1, 2], np.int32), np.ones(3, np.float32),
                            np.array([NOW - 3, NOW - 2, NOW - 1])),
        maturity_limit=np.array([-1], np.int8), space=1, dim=DIM,
    )
    return model


def test_candidates_exclude_history_unavailable_and_titles_above_the_maturity_limit() -> None:
    model = tiny_model()
    stage1 = retrieve(model, RecommendRequest("u0", maturity_limit="R"), Snapshot(), NOW)
    got = set(stage1.candidates.items.tolist())
    assert got, "a known user gets candidates"
    assert not got & {0, 1, 2}, "watched"
    assert 29 not in got, "unavailable"
    assert not got & set(range(20, 29)), "NR is above an R limit"
    assert "byw" in stage1.candidates.source_names and stage1.candidates.from_source("byw").any()
    # Without a limit the NR titles come back.
    free = retrieve(model, RecommendRequest("u0"), Snapshot(), NOW)
    assert set(free.candidates.items.tolist()) & set(range(20, 29))


def test_recent_items_from_redis_are_excluded_and_seed_because_you_watched() -> None:
    model = tiny_model()
    online = Snapshot(recent=[("i5", NOW), ("unknown-title", NOW - 5)])  # the most recent title
    user = user_context(model, RecommendRequest("u0"), online, NOW)
    assert 5 in user.history_items.tolist()
    stage1 = retrieve(model, RecommendRequest("u0"), online, NOW)
    assert 5 not in stage1.candidates.items.tolist()
    byw = stage1.candidates.from_source("byw")
    assert 5 in set(stage1.candidates.seed[byw].tolist())


def test_unknown_user_gets_popular_titles_only() -> None:
    model = tiny_model()
    stage1 = retrieve(model, RecommendRequest("stranger"), Snapshot(), NOW)
    cands = stage1.candidates
    assert len(cands) and cands.from_source("popular").all()
    # No vector, no history: neither CF nor because-you-watched has anything to start from.
    assert "ann_cf" not in cands.source_names and not cands.from_source("byw").any()


def test_trending_arrays_use_redis_counters_and_fall_back_to_bundle_popularity() -> None:
    model = tiny_model()
    pop, ctx, country = trending_arrays(model, Snapshot())
    assert pop is model.items.popularity and ctx is None and len(country) == 0
    everyone = RankedIds([("i3", 5.0), ("not-a-title", 9.0)])
    online = Snapshot(trending={"all": everyone, "country": RankedIds([("i4", 2.0)]),
                                "device": RankedIds([("i4", 1.0), ("i6", 0.5)])})
    pop, ctx, country = trending_arrays(model, online)
    assert everyone.dense(model)[0] is pop, "a shared list's dense form is built once per model state"
    assert pop[3] == 5.0 and pop.sum() == 5.0
    assert ctx is not None and ctx[4] == pytest.approx(1.0) and ctx[6] == pytest.approx(0.25)
    assert country.tolist() == [4]


def test_new_releases_from_redis_keep_the_window_and_exclusions() -> None:
    model = tiny_model()
    online = Snapshot(new_releases=RankedIds([("i6", NOW - DAY), ("i7", NOW - 40 * DAY), ("i8", NOW + DAY),
                                              ("zz", NOW)]))
    exclude = np.zeros(N, bool)
    rows, scores = release_candidates(model, online, NOW, 5, exclude)[:2]
    assert rows.tolist() == [6] and scores[0] == model.items.popularity[6], "scored as the offline branch scores"
    # Ranked as the offline branch ranks: by the model's popularity first (i4 is more popular than i6), then recency.
    both = Snapshot(new_releases=RankedIds([("i6", NOW - DAY), ("i4", NOW - 2 * DAY)]))
    assert release_candidates(model, both, NOW, 5, exclude)[0].tolist() == [4, 6]
    exclude[6] = True
    assert len(release_candidates(model, online, NOW, 5, exclude)[0]) == 0


def test_reasons_name_the_seed_then_country_trend() -> None:
    model = tiny_model()
    user = user_context(model, RecommendRequest("u0"), Snapshot(), NOW)
    cands = merge_candidates({
        "byw": (np.array([7], np.int32), np.array([0.9], np.float32), np.array([1], np.int32)),
        "popular": (np.array([8, 9], np.int32), np.array([1.0, 0.5], np.float32)),
    })
    retrieved = Retrieved(cands, np.zeros(12, np.float32), user, country_trending=np.array([8]))
    picked = answer(model, RecommendRequest("u0", k=3), retrieved, np.array([3.0, 2.0, 1.0], np.float32), NOW,
                    PostConfig(diversity=0.0))
    assert picked.rows.tolist() == [7, 8, 9]
    assert picked.reasons == ["Because you watched Title 1", "Trending in your country", "Trending now"]
    assert reasons(model, retrieved, picked.rows, np.arange(3), NOW, PostConfig()) == picked.reasons
    # An operator whose answers others may see turns the titles off: the user's history is not named.
    private = reasons(model, retrieved, picked.rows, np.arange(3), NOW, PostConfig(reason_titles=False))
    assert private == ["Because of what you watched recently", "Trending in your country", "Trending now"]
    assert not any("Title" in r for r in private)
    assert picked.sources == [["because_you_watched"], ["trending"], ["trending"]]
    assert source_names(cands, np.arange(3)) == picked.sources
    # A thin candidate set is topped up with popular, available, unseen titles.
    more = answer(model, RecommendRequest("u0", k=5), retrieved, np.array([3.0, 2.0, 1.0], np.float32), NOW,
                  PostConfig(diversity=0.0))
    assert more.rows.tolist() == [7, 8, 9, 3, 4] and more.reasons[3:] == ["Popular on streamrec"] * 2


def test_a_shared_list_converts_its_pairs_once_per_model_state() -> None:
    model = tiny_model()
    releases = RankedIds([("i6", NOW - DAY), ("zz", NOW), ("i7", NOW - 40 * DAY)])
    rows, ts = releases.known(model, np.int64)
    assert rows.tolist() == [6, 7] and ts.tolist() == [NOW - DAY, NOW - 40 * DAY]
    assert releases.known(model, np.int64)[1] is ts, "kept for the next request"
    assert releases.known(model, np.float32)[1].dtype == np.float32
    model.items.generation += 1  # the catalogue's arrays were replaced: convert again
    assert releases.known(model, np.int64)[1] is not ts


def test_popular_scores_are_kept_per_combination_of_shared_lists() -> None:
    model = tiny_model()
    everyone = RankedIds([("i3", 5.0), ("i5", 2.0)])
    country_a, country_b = RankedIds([("i4", 2.0)]), RankedIds([("i6", 1.0)])
    device = RankedIds([("i4", 1.0), ("i6", 0.5)])
    snap_a = Snapshot(trending={"all": everyone, "country": country_a, "device": device})
    snap_b = Snapshot(trending={"all": everyone, "country": country_b, "device": device})
    for snap, rows in ((snap_a, [4]), (snap_b, [6])):
        pop, ctx, _ = trending_arrays(model, snap)
        scores, country_rows = popular_source_scores(model, snap, 0.5)
        assert np.array_equal(scores, popular_scores(pop, ctx, 0.5)) and country_rows.tolist() == rows
    again, _ = popular_source_scores(model, snap_a, 0.5)
    assert again is popular_source_scores(model, snap_a, 0.5)[0], "a second request reuses it"
    assert not np.array_equal(again, popular_source_scores(model, snap_b, 0.5)[0])
    assert not np.array_equal(again, popular_source_scores(model, snap_a, 0.9)[0]), "keyed by the blend weight"
    # Without live trending lists: the bundle's popularity, not kept.
    scores, rows = popular_source_scores(model, Snapshot(), 0.5)
    assert np.array_equal(scores, popular_scores(model.items.popularity, None, 0.5)) and len(rows) == 0


def _reference_reasons(model: RecommenderModel, retrieved: Retrieved, rows: np.ndarray, positions: np.ndarray,
                       now: int, post: PostConfig) -> list[str]:
    """The per-pick reasons as first written (the specification of the vectorised ``reasons``)."""
    cands = retrieved.candidates
    names = cands.source_names
    bits, seeds = cands.sources[positions], cands.seed[positions]
    in_country = np.isin(rows, retrieved.country_trending)
    age_days = (now - model.items.release_ts[rows]) / DAY
    original = model.items.is_original[rows]

    def has(j: int, name: str) -> bool:
        return name in names and bool(bits[j] & np.uint32(1 << names.index(name)))

    out = []
    for j in range(len(rows)):
        if has(j, "byw") and seeds[j] != NO_SEED:
            out.append(f"Because you watched {model.items.titles[int(seeds[j])]}")
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


def test_reasons_and_source_names_match_the_per_pick_rules() -> None:
    model = tiny_model()
    model.items.release_ts = model.items.release_ts.copy()
    model.items.release_ts[10:14] = [NOW - DAY, NOW + DAY, NOW - 31 * DAY, NOW - 30 * DAY]
    model.items.is_original = model.items.is_original.copy()
    model.items.is_original[10] = True
    user = user_context(model, RecommendRequest("u0"), Snapshot(), NOW)
    rng = np.random.default_rng(4)
    names = ("ann_cf", "content", "popular", "new_releases", "byw", "other")
    for trial in range(25):
        found: dict[str, Any] = {}
        for name in names[: 3 + trial % 4]:
            rows = rng.choice(N, int(rng.integers(0, 12)), replace=False).astype(np.int32)
            scores = rng.random(len(rows)).astype(np.float32)
            found[name] = (rows, scores, rng.choice([NO_SEED, 1, 2], len(rows)).astype(np.int32)) \
                if name == "byw" else (rows, scores)
        cands = merge_candidates(found)
        retrieved = Retrieved(cands, np.zeros(12, np.float32), user,
                              country_trending=rng.choice(N, int(rng.integers(0, 8)), replace=False))
        positions = rng.permutation(len(cands))[: int(rng.integers(0, len(cands) + 1))]
        rows = cands.items[positions].astype(np.int64)
        post = PostConfig(new_window_days=(30.0, 0.5)[trial % 2])
        assert reasons(model, retrieved, rows, positions, NOW, post) == \
            _reference_reasons(model, retrieved, rows, positions, NOW, post)
        expected = [[PUBLIC_SOURCE.get(n, n) for s, n in enumerate(cands.source_names) if b & (1 << s)]
                    for b in cands.sources[positions].tolist()]
        got = source_names(cands, positions)
        assert got == expected
        if got:
            got[0].append("mutated")  # each pick's list is its own
            assert source_names(cands, positions)[0] == expected[0]


def test_static_lookup_by_rows_is_the_lookup_by_ids() -> None:
    model = tiny_model()
    model.apply_catalog([_upsert("new-title", title="New")])  # a row past the bundle's: not in the static table
    new_row = model.items.index["new-title"]
    assert new_row >= model.n_bundle_items
    cands = merge_candidates({"a": (np.array([3, new_row, 0, 17], np.int32), np.ones(4, np.float32))})
    retrieved = Retrieved(cands, np.zeros(12, np.float32), user_context(model, RecommendRequest("u0"), Snapshot(), NOW))
    index, hashes = retrieved.static_lookup(model)
    ref_index, ref_hashes = model.static.lookup(retrieved.item_ids(model))
    assert np.array_equal(index, ref_index) and np.array_equal(hashes, ref_hashes)
    assert index.tolist() == [0, 3, 17, -1]


def test_isin_is_np_isin() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        values, among = rng.integers(0, 50, int(rng.integers(0, 30))), rng.integers(0, 50, int(rng.integers(0, 30)))
        assert np.array_equal(_isin(values, among), np.isin(values, among))


def test_fallback_scores_follow_the_best_source_rank() -> None:
    cands = merge_candidates({"a": (np.array([5, 6], np.int32), np.array([1.0, 0.5], np.float32)),
                              "b": (np.array([7, 6], np.int32), np.array([1.0, 0.9], np.float32))})
    order = cands.items[np.argsort(-fallback_scores(cands), kind="stable")]
    assert set(order[:2].tolist()) == {5, 7} and order[2] == 6


def _upsert(item: str, **kw: Any) -> ItemUpsert:
    base: dict[str, Any] = {"event_id": f"c-{item}", "ts": NOW, "schema_version": 1, "item_id": item,
                            "title": f"New {item}", "genres": ["Drama"], "release_ts": NOW}
    return ItemUpsert(**(base | kw))


def test_catalog_events_add_rows_metadata_and_content_vectors() -> None:
    model = tiny_model()
    old_available = model.items.available
    model.apply_catalog([_upsert("new1", maturity_rating="PG", is_original=True),
                         ItemRemove(event_id="r", ts=NOW, item_id="i3", schema_version=1)])
    row = model.items.index["new1"]
    assert row == N and len(model.items) == N + 1
    t = model.items
    assert t.available[row] and t.maturity[row] == 1 and t.is_original[row] and t.titles[row] == "New new1"
    assert t.genre_matrix[row].tolist() == [1.0, 0.0, 0.0] and np.any(t.content[row])
    assert not t.available[3]
    assert model.items.available is not old_available and len(model.exclusion(np.zeros(0, np.int32))) == N + 1
    assert len(old_available) == N and old_available[3]  # a request holding the old arrays is unaffected
    # A new title is a content-based candidate before any vector arrives.
    profile_user = user_context(model, RecommendRequest("u0"), Snapshot(recent=[("new1", NOW)]), NOW + 1)
    assert row in profile_user.history_items.tolist()


def test_item_vectors_insert_update_delete_and_ignore_other_bundles() -> None:
    model = tiny_model()
    vec = np.ones(DIM, np.float32)
    assert model.apply_vectors([("new2", ItemVector("new2", vec, "other-bundle", "content", 1))]) == 0
    assert "new2" not in model.items.index
    assert model.apply_vectors([("new2", ItemVector("new2", vec, "v1", "content", 1))]) == 1
    row = model.items.index["new2"]
    assert model.cf_index.live[row] and model.neighbour_index.live[row]
    labels, _ = model.neighbour_index.query(vec, 1)
    assert labels[0, 0] == row
    assert model.apply_vectors([("new2", ItemVector("new2", vec, "v1", "content", 2))]) == 0  # unchanged
    assert model.apply_vectors([("new2", None)]) == 1
    assert not model.cf_index.live[row]
    assert model.apply_vectors([("i4", ItemVector("i4", -vec, "v1", "online", 3))]) == 1
    np.testing.assert_array_equal(model.cf_index.vectors[4], -vec)


def test_live_state_replays_the_newest_record_per_item_in_arrival_order() -> None:
    state = LiveState()
    state.record([_upsert("a")], [("a", None)])
    seq = state.seq
    state.record([_upsert("b"), _upsert("a", title="A2")], [])
    events, vectors = state.since(0)
    assert sorted((e.item_id, getattr(e, "title", None)) for e in events) == [("a", "A2"), ("b", "New b")]
    assert vectors == [("a", None)]
    state.record([], [("c", None)])
    later, later_vectors = state.since(seq)
    assert sorted(e.item_id for e in later) == ["a", "b"] and later_vectors == [("c", None)]
    assert state.since(state.seq) == ([], [])


def test_request_scopes_and_options() -> None:
    assert [s for _, s in RequestScopes(country="NL", hour=7).names()] == ["all", "country:NL", "hour:7"]
    opts = options_from_settings(Settings(serving_candidates_timeout_ms=20.0))
    assert opts.candidates_timeout_ms == 20.0 and opts.diversity is None
    # One declaration of each default: the settings' own.
    assert ServingOptions().features_timeout_ms == Settings().serving_features_timeout_ms
    # STREAMREC_SERVING_REASON_TITLES=false reaches the served post-processing; the default keeps the bundle's.
    redis = fakeredis.aioredis.FakeRedis()
    off = options_from_settings(Settings(serving_reason_titles=False))
    assert RecommendationService._serve(tiny_model(), redis, off).post.reason_titles is False
    assert RecommendationService._serve(tiny_model(), redis, ServingOptions()).post.reason_titles is True
