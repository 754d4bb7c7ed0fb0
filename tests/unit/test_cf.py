"""CF embeddings: beat popularity on held-out data, fold-in agrees with training, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from models.candidates import user_histories
from models.cf import ALSParams, BPRParams, CFModel, confidence_matrix, fit_cf, fold_in_user, interaction_matrix
from models.dataset import KIND, EventLog, load_log
from models.feedback import feedback_weights
from models.split import make_split
from tools.datasets.world import WorldConfig, run_world
from tools.datasets.world_users import WorldModel

# Drift off: a user-last split then tests taste, not how fast a model goes stale (the world's
# regime shifts make the held-out 20% partly unpredictable from the first 80% by design).
FROZEN = WorldModel(regime_shifts=0.0, walk_sd=0.0, style_walk_sd=0.0)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    folder = tmp_path_factory.mktemp("cf-world")
    run_world(folder, WorldConfig(users=300, items=1000, events=30_000, seed=3, days=14.0, model=FROZEN))
    return load_log(folder)


def user_last_split(log: EventLog) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Row masks of the evaluation protocol's user-last split: training rows, held-out item rows."""
    split = make_split(log, "user-last")
    return split.train_mask, split.test_mask


def retrieval_metrics(scores: NDArray[np.float32], log: EventLog, train: NDArray[np.bool_],
                      test: NDArray[np.bool_], known: NDArray[np.bool_]) -> tuple[float, float]:
    """Mean NDCG@10 and recall@20; positives = held-out positive items known to training."""
    tr, te = user_histories(log.select(train)), user_histories(log.select(test))
    disc = 1.0 / np.log2(np.arange(2, 22))
    ndcg, recall = [], []
    for u in range(log.n_users):
        items, weights, _ = te.of(u)
        seen = tr.of(u)[0]
        pos = np.setdiff1d(items[weights > 0], seen)
        pos = pos[known[pos]]
        if len(pos) == 0:
            continue
        s = scores[u].astype(np.float64).copy()
        s[seen] = -np.inf
        top = np.argsort(-s, kind="stable")[:20]
        hit = np.isin(top, pos)
        recall.append(hit.sum() / len(pos))
        ndcg.append((hit[:10] * disc[:10]).sum() / disc[: min(len(pos), 10)].sum())
    return float(np.mean(ndcg)), float(np.mean(recall))


def test_cf_beats_popularity_on_held_out_split(log: EventLog) -> None:
    train, test = user_last_split(log)
    train_log = log.select(train)
    model = fit_cf(train_log, dim=32)
    rows = train_log.item_events()
    w = feedback_weights(train_log.kind[rows], train_log.value[rows])
    pop = np.bincount(train_log.item[rows], weights=(w > 0), minlength=log.catalog.n_items).astype(np.float32)
    cf_ndcg, cf_recall = retrieval_metrics(model.user_vectors @ model.item_vectors.T, log, train, test,
                                           model.trained_items)
    pop_ndcg, pop_recall = retrieval_metrics(np.broadcast_to(pop, (log.n_users, len(pop))), log, train, test,
                                             model.trained_items)
    assert cf_recall > 1.2 * pop_recall, (cf_recall, pop_recall)
    assert cf_ndcg > pop_ndcg, (cf_ndcg, pop_ndcg)


def test_fold_in_reproduces_trained_users(log: EventLog) -> None:
    model = fit_cf(log, dim=32)
    histories = user_histories(log)
    cosines = []
    for u in np.flatnonzero(model.trained_users):
        items, weights, _ = histories.of(u)
        folded = model.fold_in(items, weights)
        trained = model.user_vectors[u]
        cosines.append(folded @ trained / (np.linalg.norm(folded) * np.linalg.norm(trained)))
    assert np.min(cosines) > 0.9
    assert np.mean(cosines) > 0.99


def test_fit_is_deterministic_per_seed(log: EventLog) -> None:
    a, b, c = fit_cf(log, dim=16, seed=1), fit_cf(log, dim=16, seed=1), fit_cf(log, dim=16, seed=2)
    np.testing.assert_array_equal(a.user_vectors, b.user_vectors)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    assert not np.array_equal(a.item_vectors, c.item_vectors)


def test_model_shapes_masks_and_progress(log: EventLog) -> None:
    ticks: list[int] = []
    model = fit_cf(log, dim=8, progress=ticks.append, als=ALSParams(iterations=3))
    assert model.user_vectors.shape == (log.n_users, 8) and model.user_vectors.dtype == np.float32
    assert model.item_vectors.shape == (log.catalog.n_items, 8) and model.item_vectors.dtype == np.float32
    assert sum(ticks) == 3
    # Items nobody watched have no CF vector (the content projection fills them later).
    assert not model.trained_items.all()
    assert not model.item_vectors[~model.trained_items].any()
    assert model.item_vectors[model.trained_items].any(axis=1).all()


def test_bpr_runs_and_scores_with_a_dot_product(log: EventLog) -> None:
    model = fit_cf(log, dim=8, algorithm="bpr", bpr=BPRParams(iterations=5))
    assert model.algorithm == "bpr"
    assert model.user_vectors.shape[0] == log.n_users and model.item_vectors.shape[0] == log.catalog.n_items
    assert model.user_vectors.shape[1] == model.item_vectors.shape[1]
    with pytest.raises(ValueError):
        fit_cf(log, algorithm="svd")  # type: ignore[arg-type]


def _hand_log(tmp_path: Path, events: list[str]) -> EventLog:
    (tmp_path / "catalog.jsonl").write_text("\n".join(
        f'{{"type":"item_upsert","event_id":"c{i}","ts":1000,"schema_version":1,"item_id":"i{i}",'
        f'"title":"T{i}","genres":["Drama"],"release_ts":0}}' for i in range(3)) + "\n")
    (tmp_path / "events.jsonl").write_text("\n".join(events) + "\n")
    return load_log(tmp_path)


def _ev(kind: str, ts: int, user: str, item: str, extra: str = "") -> str:
    return (f'{{"type":"{kind}","event_id":"e{ts}","ts":{ts},"schema_version":1,"user_id":"{user}",'
            f'"item_id":"{item}"{extra}}}')


def test_interaction_matrix_nets_weights_per_pair(tmp_path: Path) -> None:
    log = _hand_log(tmp_path, [
        _ev("play", 2000, "u1", "i0"), _ev("complete", 2001, "u1", "i0", ',"watched_seconds":60'),
        _ev("play", 2002, "u1", "i1"), _ev("skip", 2003, "u1", "i1", ',"watched_seconds":3'),
        _ev("skip", 2004, "u1", "i2", ',"watched_seconds":3'),
        _ev("rating", 2005, "u2", "i2", ',"value":5.0'),
    ])
    net = interaction_matrix(log).toarray()
    u1, u2 = log.user_index["u1"], log.user_index["u2"]
    i0, i1, i2 = (log.catalog.index[f"i{k}"] for k in range(3))
    assert net[u1, i0] == pytest.approx(3.0)  # play + complete
    assert net[u1, i1] == 0.0  # a play then a skip cancel: not a positive, and dropped
    assert net[u1, i2] == pytest.approx(-1.0)
    assert net[u2, i2] == pytest.approx(2.0)
    conf = confidence_matrix(interaction_matrix(log), alpha=2.0).toarray()
    assert conf[u1, i0] == pytest.approx(7.0) and conf[u1, i2] == pytest.approx(-3.0)
    assert confidence_matrix(interaction_matrix(log), 2.0, negatives=False).toarray()[u1, i2] == 0.0
    model = fit_cf(log, dim=2, als=ALSParams(iterations=2))
    assert model.trained_items[i0] and model.trained_items[i2] and not model.trained_items[i1]
    assert KIND["skip"] != KIND["play"]


def test_fold_in_edge_cases() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 8)).astype(np.float32)
    assert not fold_in_user(y, [], [], reg=1.0).any()
    assert not fold_in_user(y, [3, 3], [1.0, -1.0], reg=1.0).any()  # nets to zero: nothing known
    assert not fold_in_user(y, [3], [-1.0], reg=1.0).any()  # only a dislike: the solve gives 0
    # Repeated events are summed per item, as in training.
    np.testing.assert_allclose(fold_in_user(y, [1, 2, 1], [1.0, 2.0, 1.0], reg=1.0),
                               fold_in_user(y, [1, 2], [2.0, 2.0], reg=1.0), rtol=1e-5)
    # A precomputed YᵀY gives the same answer.
    np.testing.assert_allclose(fold_in_user(y, [1, 2], [1.0, 2.0], reg=1.0, yty=y.T.astype(np.float64) @ y),
                               fold_in_user(y, [1, 2], [1.0, 2.0], reg=1.0), rtol=1e-5)
    # The folded user scores its own items above the rest on average.
    v = fold_in_user(y, [4, 5, 6], [2.0, 2.0, 2.0], reg=0.1)
    assert (y[[4, 5, 6]] @ v).mean() > (y @ v).mean()


def test_save_load_round_trip(tmp_path: Path, log: EventLog) -> None:
    model = fit_cf(log, dim=8, als=ALSParams(iterations=2))
    model.save(tmp_path / "cf.npz")
    back = CFModel.load(tmp_path / "cf.npz")
    np.testing.assert_array_equal(back.user_vectors, model.user_vectors)
    np.testing.assert_array_equal(back.item_vectors, model.item_vectors)
    np.testing.assert_array_equal(back.trained_items, model.trained_items)
    assert (back.alpha, back.reg, back.algorithm) == (model.alpha, model.reg, model.algorithm)
    filled = model.with_item_vectors(np.array([0]), np.ones((1, 8)))
    assert filled.item_vectors[0].tolist() == [1.0] * 8 and model.item_vectors[0].tolist() != [1.0] * 8
