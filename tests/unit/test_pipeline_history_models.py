"""Issue 13 in the recommend pipeline: the item-to-item source and its score of every candidate, the
sequence score's scaling, and the popularity correction of stage 3."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
from test_recommend_pipeline import NOW, N, tiny_model

from models.candidates import Histories
from models.item_item import ItemNeighbours
from models.postprocess import PostConfig, apply_rules
from models.recommend.model import RecommenderModel, log_audience
from models.recommend.pipeline import (
    SEQ_FLOOR,
    RecommendRequest,
    Snapshot,
    _relative,
    _seq_scale,
    extra_dense,
    retrieve,
)


def with_neighbours(model: RecommenderModel) -> RecommenderModel:
    """u0 watched 0, 1, 2: 0 points to 5 (1.0) and 6 (0.25); 1 points to 6 (0.25); 2 to 0 (watched)."""
    rows, cols, vals = [0, 0, 1, 2], [5, 6, 6, 0], [1.0, 0.25, 0.25, 0.8]
    weights = sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(N, N))
    neighbours = ItemNeighbours(weights, np.arange(N, dtype=np.int32), lam=1.0, top_k=2)
    return dataclasses.replace(model, item_neighbours=neighbours)


def test_item_item_source_and_its_score_of_every_candidate() -> None:
    model = with_neighbours(tiny_model())
    got = retrieve(model, RecommendRequest("u0"), Snapshot(), NOW)
    cands = got.candidates
    assert "item_item" in cands.source_names
    assert cands.items[cands.from_source("item_item")].tolist() == [5, 6], "best first, watched title 0 excluded"
    dense = extra_dense(model, got)
    rows = cands.items.tolist()
    # Scaled by the user's best EASE score (5: 1.0): 6 gets 0.25 + 0.25 = 0.5; titles nobody points to 0.
    assert dense["ii_score"][rows.index(5)] == 1.0 and dense["ii_score"][rows.index(6)] == 0.5
    others = [k for k, r in enumerate(rows) if r not in (5, 6)]
    assert others and not dense["ii_score"][others].any()
    assert dense["src_item_item"][rows.index(5)] > 0 and not dense["src_item_item"][others].any()
    # No sequence model in this bundle: its column is the floor for every candidate, its source absent.
    assert "sequence" not in cands.source_names and (dense["seq_score"] == SEQ_FLOOR).all()


def test_sequence_scores_are_relative_to_the_users_best_and_floored() -> None:
    scores = np.array([2.0, -8.0, -np.inf, 1.0, -50.0], np.float32)
    rows = np.array([0, 1, 2, 3, 4, 7])  # 7: a live title newer than the model
    got = _relative(scores, rows, _seq_scale, SEQ_FLOOR)
    np.testing.assert_allclose(got, [0.0, -1.0, SEQ_FLOOR, -0.1, SEQ_FLOOR, SEQ_FLOOR], atol=1e-6)
    assert (_relative(None, rows, _seq_scale, SEQ_FLOOR) == SEQ_FLOOR).all()


def test_popularity_correction_and_exposure_prices_come_off_the_ranker_scores() -> None:
    scores = np.array([2.0, 1.9, 0.0, 1.0])
    rows = np.array([0, 1, 2, 3])
    model = dataclasses.replace(tiny_model(), log_audience=np.log1p(np.array([1000.0, 10.0, 0.0], np.float32)),
                                exposure_price=np.array([0.0, 0.0, 0.0, 1.5], np.float32))
    rules = {"is_original": np.zeros(4, bool), "release_ts": np.zeros(4, np.int64), "now": NOW}

    def best(post: PostConfig) -> int:
        return int(np.argmax(apply_rules(scores, config=post, penalty=model.penalty_of(rows, post), **rules)))

    off = PostConfig(popularity_correction=0.0, exposure_prices=False)
    assert model.penalty_of(rows, off) is None, "both off: nothing to take off"
    assert best(off) == 0
    # The blockbuster's lead of 0.1 is less than 0.1 * log(1001 / 11): the correction divides the odds.
    assert best(PostConfig(popularity_correction=0.1)) == 1
    np.testing.assert_allclose(model.penalty_of(rows, PostConfig(popularity_correction=0.1)),
                               [0.1 * np.log(1001), 0.1 * np.log(11), 0.0, 1.5], rtol=1e-5)
    # Row 3 is beyond log_audience (a live title): no correction, but its exposure price still applies.
    assert model.penalty_of(rows, PostConfig(popularity_correction=0.0))[3] == 1.5


def test_log_audience_counts_distinct_users_with_a_positive_net() -> None:
    # user 0: item 1 twice, item 2 liked then disliked (net 0); user 1: item 1, item 3.
    histories = Histories(np.array([0, 4, 6]), np.array([1, 1, 2, 2, 1, 3], np.int32),
                          np.array([1, 1, 1, -1, 1, 1], np.float32), np.arange(6, dtype=np.int64))
    np.testing.assert_allclose(log_audience(histories, 5), np.log1p([0, 2, 0, 1, 0]), rtol=1e-6)
    model = dataclasses.replace(tiny_model(), log_audience=log_audience(histories, 5))
    np.testing.assert_allclose(model.audience_of(np.array([1, 3, 9])), np.log1p([2, 1, 0]), rtol=1e-6)
