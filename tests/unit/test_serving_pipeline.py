"""Pure parts of the serving core: candidates and exclusions, trending/new-release inputs, reasons,
live catalog and item-vector updates of a model, the tail's replay log, options."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from models.ann import IndexParams, ItemIndex
from models.candidates import CandidateConfig, Histories, merge_candidates
from models.features.spec import feature_layout
from models.features.state import ItemStatic
from models.item_vector_codec import ItemVector
from models.postprocess import PostConfig
from models.two_stage import TwoStageConfig
from schemas.events import ItemRemove, ItemUpsert
from serving.live_tail import LiveState
from serving.model_state import ItemTable, ServingModel
from serving.online_reads import OnlineState, RequestScopes
from serving.options import ServingOptions, options_from_settings
from serving.pipeline import (
    fallback_scores,
    generate,
    postprocess,
    reasons,
    release_candidates,
    source_names,
    trending_arrays,
    user_context,
)

N, DIM, DAY = 30, 8, 86_400_000
NOW = 1_780_000_000_000
GENRES = ["Drama", "Comedy", "Action"]


class _Content:
    """Stands in for the bundle's content model: every title embeds to the same unit vector."""

    def embed(self, titles: list[str], *_: Any) -> np.ndarray:
        out = np.zeros((len(titles), 12), np.float32)
        out[:, 0] = 1.0
        return out


def tiny_model() -> ServingModel:
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
    items = ItemTable(item_ids=ids, index={i: k for k, i in enumerate(ids)}, titles=[f"Title {k}" for k in range(N)],
                      genres=genres, genre_vocab=GENRES, available=available, release_ts=release, maturity=maturity,
                      is_original=np.zeros(N, bool), genre_matrix=genre_matrix, content=content,
                      popularity=np.linspace(10, 1, N).astype(np.float32))
    static = ItemStatic.build(ids, genres, release, release, maturity, np.zeros(N, bool), GENRES)
    config = TwoStageConfig(candidates=CandidateConfig(ann_cf=10, content=10, popular=10, new_releases=5, byw=10,
                                                       byw_seeds=3))
    model = ServingModel(
        version="v1", bundle=None, config=config, items=items, n_bundle_items=N,  # type: ignore[arg-type]
        cf_index=ItemIndex.build(vectors, IndexParams(space="ip")),
        neighbour_index=ItemIndex.build(vectors, IndexParams(space="cosine")),
        retriever=None, static=static, layout=feature_layout(N, 3), content_model=_Content(),  # type: ignore[arg-type]
        ranker=None, user_index={"u0": 0}, user_vectors=vectors[:1].copy(),  # type: ignore[arg-type]
        trained_users=np.array([True]),
        histories=Histories(np.array([0, 3]), np.array([0, 1, 2], np.int32), np.ones(3, np.float32),
                            np.array([NOW - 3, NOW - 2, NOW - 1])),
        maturity_limit=np.array([-1], np.int8), space=1, dim=DIM,
    )
    model._refresh_retriever()
    return model


def test_candidates_exclude_history_unavailable_and_titles_above_the_maturity_limit() -> None:
    model = tiny_model()
    user = user_context(model, "u0", None, maturity_limit=3)  # R
    stage1 = generate(model, user, None, NOW)
    got = set(stage1.candidates.items.tolist())
    assert got, "a known user gets candidates"
    assert not got & {0, 1, 2}, "watched"
    assert 29 not in got, "unavailable"
    assert not got & set(range(20, 29)), "NR is above an R limit"
    assert "byw" in stage1.candidates.source_names and stage1.candidates.from_source("byw").any()
    # Without a limit the NR titles come back.
    free = generate(model, user_context(model, "u0", None), None, NOW)
    assert set(free.candidates.items.tolist()) & set(range(20, 29))


def test_recent_items_from_redis_are_excluded_and_seed_because_you_watched() -> None:
    model = tiny_model()
    online = OnlineState(recent=[("i5", NOW), ("unknown-title", NOW - 5)])  # the most recent title
    user = user_context(model, "u0", online)
    assert 5 in user.history_items.tolist()
    stage1 = generate(model, user, online, NOW)
    assert 5 not in stage1.candidates.items.tolist()
    byw = stage1.candidates.from_source("byw")
    assert 5 in set(stage1.candidates.seed[byw].tolist())


def test_unknown_user_gets_popular_titles_only() -> None:
    model = tiny_model()
    stage1 = generate(model, user_context(model, "stranger", None), None, NOW)
    cands = stage1.candidates
    assert len(cands) and cands.from_source("popular").all()
    # No vector, no history: neither CF nor because-you-watched has anything to start from.
    assert "ann_cf" not in cands.source_names and not cands.from_source("byw").any()


def test_trending_arrays_use_redis_counters_and_fall_back_to_bundle_popularity() -> None:
    model = tiny_model()
    pop, ctx, country = trending_arrays(model, None)
    assert pop is model.items.popularity and ctx is None and len(country) == 0
    online = OnlineState(trending={"all": [("i3", 5.0), ("not-a-title", 9.0)], "country": [("i4", 2.0)],
                                   "device": [("i4", 1.0), ("i6", 0.5)]})
    pop, ctx, country = trending_arrays(model, online)
    assert pop[3] == 5.0 and pop.sum() == 5.0
    assert ctx is not None and ctx[4] == pytest.approx(1.0) and ctx[6] == pytest.approx(0.25)
    assert country.tolist() == [4]


def test_new_releases_from_redis_keep_the_window_and_exclusions() -> None:
    model = tiny_model()
    online = OnlineState(new_releases=[("i6", NOW - DAY), ("i7", NOW - 40 * DAY), ("i8", NOW + DAY), ("zz", NOW)])
    exclude = np.zeros(N, bool)
    rows, scores = release_candidates(model, online, NOW, 5, exclude)[:2]
    assert rows.tolist() == [6] and 0 < scores[0] <= 1
    exclude[6] = True
    assert len(release_candidates(model, online, NOW, 5, exclude)[0]) == 0


def test_reasons_name_the_seed_then_country_trend() -> None:
    model = tiny_model()
    user = user_context(model, "u0", None)
    cands = merge_candidates({
        "byw": (np.array([7], np.int32), np.array([0.9], np.float32), np.array([1], np.int32)),
        "popular": (np.array([8, 9], np.int32), np.array([1.0, 0.5], np.float32)),
    })
    from serving.pipeline import Stage1

    stage1 = Stage1(cands, np.zeros(12, np.float32), user, country_trending=np.array([8]))
    picked = postprocess(model, cands, np.array([3.0, 2.0, 1.0], np.float32), 3, NOW, PostConfig(diversity=0.0))
    assert picked.rows.tolist() == [7, 8, 9]
    assert reasons(model, stage1, picked, NOW, PostConfig()) == [
        "Because you watched Title 1", "Trending in your country", "Trending now"]
    assert source_names(cands, picked.positions) == [["because_you_watched"], ["trending"], ["trending"]]


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
    old_retriever = model.retriever
    model.apply_catalog([_upsert("new1", maturity_rating="PG", is_original=True),
                         ItemRemove(event_id="r", ts=NOW, item_id="i3", schema_version=1)])
    row = model.items.index["new1"]
    assert row == N and len(model.items) == N + 1
    t = model.items
    assert t.available[row] and t.maturity[row] == 1 and t.is_original[row] and t.titles[row] == "New new1"
    assert t.genre_matrix[row].tolist() == [1.0, 0.0, 0.0] and np.any(t.content[row])
    assert not t.available[3]
    assert model.retriever is not old_retriever and model.retriever.n_items == N + 1
    assert len(old_retriever.available) == N  # a request holding the old arrays is unaffected
    # A new title is a content-based candidate before any vector arrives.
    profile_user = user_context(model, "u0", OnlineState(recent=[("new1", NOW)]))
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
    opts = options_from_settings(SimpleNamespace(serving_diversity=0.3, serving_candidates_timeout_ms=20.0))
    assert opts.diversity == 0.3 and opts.candidates_timeout_ms == 20.0
    assert opts.features_timeout_ms == ServingOptions().features_timeout_ms
