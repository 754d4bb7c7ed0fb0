"""Offline evaluation: hand-computed metrics, split invariants, the protocol's plumbing, baseline sanity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest
import scipy.sparse as sp
from numpy.typing import NDArray
from typer.testing import CliRunner

from models.dataset import EventLog, load_log
from models.eval import (
    BASELINES,
    EASE,
    EvalContext,
    EvalReport,
    ItemKNN,
    Popularity,
    candidate_recall,
    compute_metrics,
    evaluate_system,
    interaction_matrix,
    make_split,
    recommend_lists,
    run_evaluation,
    top_k,
)
from models.eval.metrics import coverage, hit_matrix, intra_list_diversity, mean_reciprocal_rank, ranking_curves
from models.eval.plots import write_plots
from models.split import Split
from tools.datasets.world import generate_world

# ---------------------------------------------------------------------------------------------
# Metrics by hand
# ---------------------------------------------------------------------------------------------


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [1.0] * sum(len(r) for r in rows)
    r_idx = [i for i, r in enumerate(rows) for _ in r]
    c_idx = [c for r in rows for c in r]
    return sp.csr_matrix((data, (r_idx, c_idx)), shape=(len(rows), n_items), dtype=np.float32)


def test_ranking_metrics_by_hand() -> None:
    # user 0: positives {1, 7}, hits at ranks 2 and 4; user 1: one positive at rank 1; user 2: none hit.
    top = np.array([[3, 1, 5, 7], [4, 0, 2, 9], [0, 2, -1, -1]], np.int32)
    positives = _csr([[1, 7], [4], [9, 8, 6]], 10)
    hits = hit_matrix(top, positives)
    assert hits.tolist() == [[False, True, False, True], [True, False, False, False], [False] * 4]
    curves = ranking_curves(hits, np.diff(positives.indptr))
    l2, l3, l5 = math.log2(2), math.log2(3), math.log2(5)
    # recall@2: 1/2, 1/1, 0 ; recall@4: 2/2, 1, 0
    assert curves["recall"][1] == pytest.approx((0.5 + 1 + 0) / 3)
    assert curves["recall"][3] == pytest.approx((1 + 1 + 0) / 3)
    # capped recall@1: user 0 has 0/min(1,2); user 1 1/1
    assert curves["recall_capped"][0] == pytest.approx((0 + 1 + 0) / 3)
    assert curves["recall_capped"][3] == pytest.approx((2 / 2 + 1 + 0) / 3)
    ndcg2_u0 = (1 / l3) / (1 / l2 + 1 / l3)
    ndcg4_u0 = (1 / l3 + 1 / l5) / (1 / l2 + 1 / l3)
    assert curves["ndcg"][1] == pytest.approx((ndcg2_u0 + 1 + 0) / 3)
    assert curves["ndcg"][3] == pytest.approx((ndcg4_u0 + 1 + 0) / 3)
    assert curves["hit_rate"][0] == pytest.approx(1 / 3)
    assert curves["hit_rate"][3] == pytest.approx(2 / 3)
    assert mean_reciprocal_rank(hits) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_ndcg_ideal_is_over_min_k_and_positives() -> None:
    # Three positives, all in the top 2 slots of K=2 -> perfect; K=4 with the third at rank 4 -> < 1.
    positives = _csr([[0, 1, 2]], 5)
    top = np.array([[0, 1, 4, 2]], np.int32)
    curves = ranking_curves(hit_matrix(top, positives), np.array([3]))
    assert curves["ndcg"][1] == pytest.approx(1.0)
    ideal3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert curves["ndcg"][3] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / ideal3)
    assert curves["recall"][1] == pytest.approx(2 / 3)
    assert curves["recall_capped"][1] == pytest.approx(1.0)


def test_coverage_and_diversity_by_hand() -> None:
    top = np.array([[0, 1, 2], [0, 3, -1]], np.int32)
    assert coverage(top, n_items=8, k=3) == pytest.approx(4 / 8)
    genres = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)  # item 3 has no genres
    # user 0: pairs (0,1) distance 0, (0,2) 1, (1,2) 1 -> 2/3; user 1: (0,3) distance 1 -> 1
    assert intra_list_diversity(top, genres, k=3) == pytest.approx((2 / 3 + 1) / 2)
    # cosine, not Jaccard: [1,1] vs [1,0] -> 1 - 1/sqrt(2)
    genres2 = np.array([[1, 1], [1, 0]], np.float32)
    assert intra_list_diversity(np.array([[0, 1]], np.int32), genres2) == pytest.approx(1 - 1 / math.sqrt(2))


def test_top_k_excludes_breaks_ties_and_pads() -> None:
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.7], [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    exclude = _csr([[4], [0, 1, 2, 3]], 5)
    top = top_k(scores, exclude, 3)
    assert top[0].tolist() == [1, 2, 0]  # 0.9 tie -> lower index first; item 4 excluded
    assert top[1].tolist() == [4, -1, -1]  # only one allowed item
    assert scores[0, 4] == pytest.approx(0.7)  # the caller's scores are not modified


def test_compute_metrics_keys() -> None:
    top = np.tile(np.arange(50, dtype=np.int32), (2, 1))
    metrics, curves = compute_metrics(top, _csr([[0], [49]], 60), np.eye(60, 3, dtype=np.float32))
    for key in ("recall@10", "recall@20", "ndcg@10", "recall_capped@10", "mrr", "coverage", "diversity"):
        assert key in metrics
    assert len(curves["recall"]) == len(curves["ndcg"]) == 50
    assert metrics["mrr"] == pytest.approx((1 + 1 / 50) / 2)


def test_candidate_recall_both_forms() -> None:
    positives = _csr([[1, 2], [3]], 10)
    as_lists = {"a": [np.array([1, 5]), np.array([], np.int64)], "b": [np.array([2]), np.array([3, 4])]}
    out = candidate_recall(positives, as_lists)
    assert out == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3), "union": pytest.approx(1.0)}
    as_matrix = {"a": np.array([[1, 5], [-1, -1]]), "b": np.array([[2, -1], [3, 4]])}
    assert candidate_recall(positives, as_matrix) == out
    assert candidate_recall([np.array([1, 2]), np.array([3])], as_lists) == out


# ---------------------------------------------------------------------------------------------
# Splits on a tiny generated world (impressions, profiles, repeated interactions)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, users=120, items=300, events=12_000, seed=3)
    return load_log(out)


def _rows_of(split: Split) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    return np.flatnonzero(split.train_mask), np.flatnonzero(split.test_mask)


def test_user_last_split_invariants(world: EventLog) -> None:
    split = make_split(world, "user-last")
    log = world
    assert not (split.train_mask & split.test_mask).any()
    assert (log.item[split.test_mask] >= 0).all()
    counts = np.bincount(log.user[log.item >= 0], minlength=log.n_users)
    held = np.bincount(log.user[split.test_mask], minlength=log.n_users)
    expected = np.where(counts >= 5, np.maximum(1, (counts * 2) // 10), 0)
    assert held.tolist() == expected.tolist()
    for u in np.flatnonzero(held):
        mine = log.user == u
        train_ts = log.ts[mine & split.train_mask & (log.item >= 0)]
        test_ts = log.ts[mine & split.test_mask]
        # No held-out event is earlier than a training event of the same user.
        assert train_ts.max(initial=np.iinfo(np.int64).min) <= test_ts.min()
        # Non-item rows (impressions, profiles) train only when earlier than the first held-out event.
        assert (log.ts[mine & split.train_mask & (log.item < 0)] < test_ts.min()).all()
    # Users with too few item events keep all their rows.
    short = np.flatnonzero((counts > 0) & (counts < 5))
    assert split.train_mask[np.isin(log.user, short)].all()
    assert split.train.n_events == int(split.train_mask.sum())
    _check_positives(split)


def test_global_time_split_invariants(world: EventLog) -> None:
    split = make_split(world, "global-time")
    log = world
    train_rows, test_rows = _rows_of(split)
    assert log.ts[train_rows].max() < log.ts[test_rows].min()
    seen = np.unique(log.user[train_rows][log.item[train_rows] >= 0])
    assert np.isin(log.user[test_rows], seen).all()
    assert (log.item[test_rows] >= 0).all()
    _check_positives(split)


def _check_positives(split: Split) -> None:
    assert split.n_test_users > 0 and split.n_positives > 0
    trained_anywhere = np.asarray(split.train_items.sum(axis=0)).ravel() > 0
    for r, u in enumerate(split.test_users):
        items = split.positives.indices[split.positives.indptr[r]:split.positives.indptr[r + 1]]
        assert len(items) == len(np.unique(items)) > 0  # deduplicated, never empty
        assert trained_anywhere[items].all()  # every positive has a training interaction
        assert not np.isin(items, split.train_items[u].indices).any()  # and is new to the user
        held = split.log.item[split.test_mask & (split.log.user == u)]
        assert np.isin(items, held).all()


def test_recommendations_never_contain_training_items(world: EventLog) -> None:
    split = make_split(world, "user-last")
    lists = recommend_lists(Popularity().fit(split.train), split, k=50)
    for r, u in enumerate(split.test_users):
        assert not np.isin(lists[r], split.train_items[u].indices).any()
        assert len(set(lists[r][lists[r] >= 0].tolist())) == (lists[r] >= 0).sum()


# ---------------------------------------------------------------------------------------------
# Baselines and the protocol
# ---------------------------------------------------------------------------------------------


def test_baselines_beat_random(world: EventLog) -> None:
    names = ("random", "popularity", "itemknn", "ease")
    report = run_evaluation(world, {name: BASELINES[name] for name in names})
    ndcg = {name: report.systems[name]["ndcg@10"] for name in names}
    assert ndcg["itemknn"] > 2 * ndcg["random"]
    assert ndcg["ease"] > 2 * ndcg["random"]
    assert ndcg["ease"] > ndcg["itemknn"] * 0.9
    assert report.systems["ease"]["lambda"] in (50.0, 100.0, 200.0, 500.0, 1000.0)
    assert report.test_users > 0 and report.positives >= report.test_users


def test_ease_dual_equals_primal(world: EventLog) -> None:
    split = make_split(world, "user-last")
    dual = EASE(100).fit(split.train)
    assert dual.dual  # 118 users < 300 items: the Woodbury form is picked
    primal = EASE(100, form="primal").fit(split.train)
    assert not primal.dual
    # Straight from the paper: B = I - P diag(1/diag P) with P = (XᵀX + λI)⁻¹.
    x = interaction_matrix(split.train).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 100 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    users = split.test_users[:20]
    np.testing.assert_allclose(dual.scores(users), x[users] @ b, atol=1e-5)
    np.testing.assert_allclose(primal.scores(users), x[users] @ b, atol=1e-5)


def test_itemknn_keeps_k_neighbours(world: EventLog) -> None:
    split = make_split(world, "user-last")
    model = ItemKNN(neighbours=5).fit(split.train)
    per_item = np.diff(model.weights.tocsc().indptr)  # target pruning: column j holds j's neighbours
    assert per_item.max() <= 5
    assert (model.weights.diagonal() == 0).all()


class _ListPopularity:
    """A two-stage-like system: gives lists and per-source candidates, never a score matrix."""

    def __init__(self, train: EventLog) -> None:
        self.pop = Popularity().fit(train)
        self.order = np.argsort(-self.pop.counts, kind="stable").astype(np.int32)
        self.extra = {"kind": "lists"}

    def recommend(self, users: NDArray[np.int32], k: int, exclude: sp.csr_matrix) -> NDArray[np.int32]:
        return top_k(self.pop.scores(users), exclude, k)

    def candidates(self, users: NDArray[np.int32]) -> dict[str, NDArray[np.int32]]:
        return {"popular": np.tile(self.order[:30], (len(users), 1)),
                "random": np.tile(self.order[-30:], (len(users), 1))}


def test_list_systems_candidates_and_report(world: EventLog, tmp_path: Path) -> None:
    def lists_factory(train: EventLog, context: EvalContext) -> _ListPopularity:
        assert context.train is train
        return _ListPopularity(train)

    report = run_evaluation(world, {"popularity": BASELINES["popularity"], "lists": lists_factory})
    scored, listed = report.systems["popularity"], report.systems["lists"]
    for key in ("recall@10", "recall@20", "ndcg@10", "mrr", "coverage"):
        assert listed[key] == pytest.approx(scored[key])
    assert listed["kind"] == "lists"
    recalls = report.candidate_recall["lists"]
    assert set(recalls) == {"popular", "random", "union"}
    assert recalls["union"] >= max(recalls["popular"], recalls["random"])

    path = tmp_path / "report.json"
    report.write(path)
    data = orjson.loads(path.read_bytes())
    assert data["test_users"] == report.test_users and data["positives"] == report.positives
    assert len(data["curves"]["lists"]["recall"]) == 50
    assert EvalReport.read(path).systems.keys() == report.systems.keys()
    written = write_plots(report, tmp_path / "plots")
    assert {p.name for p in written} == {"recall_at_k.png", "ndcg_at_k.png", "candidate_recall.png",
                                         "popularity_bias.png"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_validation_is_the_same_protocol_on_train(world: EventLog) -> None:
    split = make_split(world, "user-last")
    context = EvalContext(split=split)
    validation = context.validation()
    assert validation is context.validation()  # cached
    assert validation.log is split.train
    assert validation.n_test_users > 0
    metrics, _ = evaluate_system(Popularity().fit(validation.train), validation)
    assert 0 < metrics["ndcg@10"] <= 1


def test_eval_command(world: EventLog, tmp_path: Path) -> None:
    import typer

    from streamrec.commands import evaluate

    folder = tmp_path / "w"
    generate_world(folder, users=40, items=120, events=3000, seed=1)
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    evaluate.register(app)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", "--data", str(folder), "--out", str(out), "--plots",
                                      str(tmp_path / "p"), "--systems", "popularity,itemknn",
                                      "--artifacts", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    data = orjson.loads(out.read_bytes())
    assert set(data["systems"]) == {"popularity", "itemknn"}
    assert "test users" in result.output
    assert (tmp_path / "p" / "ndcg_at_k.png").is_file()
    bad = CliRunner().invoke(app, ["eval", "--data", str(folder), "--systems", "nope"])
    assert bad.exit_code != 0
