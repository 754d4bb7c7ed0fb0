"""Popularity-bias metrics of the offline evaluation: top_title_share, mean_pop_rank (and coverage beside them).

Expected values are recomputed here with plain Python (Counter, sorted, loops) from the same tiny
lists, never taken from the implementation under test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
import scipy.sparse as sp
from rich.console import Console

from models.dataset import EventLog, load_log
from models.eval import BASELINES, EvalReport, Popularity, compute_metrics, make_split, recommend_lists, run_evaluation
from models.eval.metrics import (
    METRIC_DEFINITIONS,
    coverage,
    mean_popularity_rank,
    most_common_item,
    popularity_ranks,
    top_title_share,
)
from models.eval.plots import write_popularity_bias_plot
from models.eval.report import TABLE_COLUMNS, report_table
from models.split import interaction_matrix
from tools.datasets.world import generate_world

TOP = np.array([[2, 5, 1, 7], [5, 3, -1, -1], [4, 2, 5, 2], [-1, -1, -1, -1], [6, 0, 4, 5]], np.int32)


def _ref_most_common(rows: list[list[int]], k: int) -> tuple[int, int]:
    counts = Counter(item for row in rows for item in set(row[:k]) if item >= 0)
    if not counts:
        return -1, 0
    best = max(counts.values())
    return min(item for item, n in counts.items() if n == best), best


def _ref_ranks(popularity: list[float]) -> list[int]:
    return [1 + sum(other > mine for other in popularity) for mine in popularity]


def _ref_mean_rank(rows: list[list[int]], ranks: list[int], k: int) -> float:
    slots = [ranks[item] for row in rows for item in row[:k] if item >= 0]
    return sum(slots) / len(slots) if slots else 0.0


# ---------------------------------------------------------------------------------------------
# The metrics on hand-made lists
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_most_common_item_and_share(k: int) -> None:
    rows = TOP.tolist()
    item, users = _ref_most_common(rows, k)
    assert most_common_item(TOP, k) == (item, users)
    assert top_title_share(TOP, k) == pytest.approx(users / len(rows))  # the empty row counts in the denominator


def test_top_title_share_known_values() -> None:
    assert most_common_item(TOP, 4) == (5, 4)  # in rows 0, 1, 2, 4
    assert top_title_share(TOP, 4) == pytest.approx(4 / 5)
    # k=1: 2, 5, 4, 6 once each: the tie goes to the lowest index
    assert most_common_item(TOP, 1) == (2, 1)
    assert top_title_share(TOP, 1) == pytest.approx(1 / 5)


def test_a_title_repeated_in_one_list_counts_once() -> None:
    top = np.array([[3, 3, 3], [1, 2, 4]], np.int32)
    assert most_common_item(top, 3) == (1, 1)  # 3 is in one list, like 1, 2 and 4; lowest index wins
    assert top_title_share(np.array([[3, 3], [3, 1]], np.int32), 2) == pytest.approx(1.0)


def test_everybody_gets_the_same_title() -> None:
    top = np.tile(np.array([9, 1, 2], np.int32), (6, 1))
    top[::2, 1:] = [4, 8]
    assert top_title_share(top, 3) == pytest.approx(1.0)
    assert most_common_item(top, 3) == (9, 6) == _ref_most_common(top.tolist(), 3)


def test_no_items_at_all() -> None:
    empty = np.full((3, 10), -1, np.int32)
    assert most_common_item(empty) == (-1, 0)
    assert top_title_share(empty) == 0.0
    assert top_title_share(np.zeros((0, 10), np.int32)) == 0.0
    assert mean_popularity_rank(empty, np.arange(1, 11)) == 0.0


def test_popularity_ranks_ties_share_the_best_rank() -> None:
    popularity = [5.0, 9.0, 5.0, 0.0, 9.0, 1.0, 0.0, 3.0]
    ranks = popularity_ranks(np.array(popularity))
    assert ranks.tolist() == _ref_ranks(popularity)
    assert ranks.tolist() == [3, 1, 3, 7, 1, 6, 7, 5]
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 6, 200).astype(float).tolist()
    assert popularity_ranks(np.array(counts)).tolist() == _ref_ranks(counts)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_mean_popularity_rank(k: int) -> None:
    popularity = [4.0, 0.0, 7.0, 1.0, 7.0, 9.0, 2.0, 0.0]
    ranks = _ref_ranks(popularity)
    expected = _ref_mean_rank(TOP.tolist(), ranks, k)
    assert mean_popularity_rank(TOP, popularity_ranks(np.array(popularity)), k) == pytest.approx(expected)


def test_mean_popularity_rank_known_value() -> None:
    ranks = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    top = np.array([[0, 7, -1], [2, -1, -1]], np.int32)
    assert mean_popularity_rank(top, ranks, 3) == pytest.approx((1 + 8 + 3) / 3)  # pooled over filled slots


def test_compute_metrics_carries_the_bias_metrics() -> None:
    top = np.tile(np.arange(50, dtype=np.int32), (3, 1))
    top[1, :10] = np.arange(50, 60)
    positives = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 1, 2], [0, 55, 3])), shape=(3, 60), dtype=np.float32)
    popularity = np.arange(60, dtype=np.float64)[::-1]  # item 0 the most popular
    genres = np.eye(60, 3, dtype=np.float32)
    metrics, _ = compute_metrics(top, positives, genres, item_popularity=popularity)
    assert metrics["top_title_share"] == pytest.approx(2 / 3)
    assert metrics["mean_pop_rank"] == pytest.approx((2 * sum(range(1, 11)) + sum(range(51, 61))) / 30)
    assert metrics["coverage"] == pytest.approx(20 / 60)
    without, _ = compute_metrics(top, positives, genres)
    assert "mean_pop_rank" not in without and without["top_title_share"] == metrics["top_title_share"]
    for key in ("top_title_share", "mean_pop_rank", "coverage"):
        assert key in METRIC_DEFINITIONS


# ---------------------------------------------------------------------------------------------
# The protocol, the report table, the JSON and the plot
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    out = tmp_path_factory.mktemp("bias_world")
    generate_world(out, users=60, items=150, events=4000, seed=5)
    return load_log(out)


def test_run_evaluation_reports_bias_for_every_system(world: EventLog) -> None:
    report = run_evaluation(world, {"popularity": BASELINES["popularity"], "itemknn": BASELINES["itemknn"]})
    split = make_split(world, "user-last")
    lists = recommend_lists(Popularity().fit(split.train), split)
    rows = lists.tolist()
    item, users = _ref_most_common(rows, 10)
    popularity = np.asarray(interaction_matrix(split.train).sum(axis=0)).ravel().tolist()
    row = report.systems["popularity"]
    assert row["top_title_share"] == pytest.approx(users / len(rows))
    assert row["mean_pop_rank"] == pytest.approx(_ref_mean_rank(rows, _ref_ranks(popularity), 10))
    assert row["coverage"] == pytest.approx(coverage(lists, split.n_items))
    positives_of_item = sum(item in set(split.positives[r].indices.tolist()) for r in range(split.n_test_users))
    assert row["top_title"] == {"item": item, "id": world.catalog.item_ids[item],
                                "title": world.catalog.titles[item], "users": users,
                                "pop_rank": _ref_ranks(popularity)[item], "positives": positives_of_item}
    # one list for everybody, minus what each has watched: strongly biased to the head
    assert row["top_title_share"] > 0.5
    assert row["mean_pop_rank"] < report.systems["itemknn"]["mean_pop_rank"]
    for name in ("popularity", "itemknn"):
        assert {"top_title_share", "mean_pop_rank", "coverage", "top_title"} <= set(report.systems[name])


def _report() -> EvalReport:
    systems = {
        "popular": {"recall@10": 0.1, "ndcg@10": 0.08, "coverage": 0.02, "top_title_share": 0.93,
                    "mean_pop_rank": 6.4, "seconds": 0.5,
                    "top_title": {"item": 3, "id": "m3", "title": "Forrest Gump", "users": 93}, "lambda": 200.0},
        "niche": {"recall@10": 0.2, "ndcg@10": 0.12, "coverage": 0.31, "top_title_share": 0.18,
                  "mean_pop_rank": 412.5, "seconds": 1.5,
                  "top_title": {"item": 7, "id": "m7", "title": "Heat", "users": 18}},
    }
    return EvalReport(split="user-last", test_users=100, positives=400, systems=systems)


def test_table_carries_the_bias_columns() -> None:
    assert {"coverage", "top_title_share", "mean_pop_rank"} <= set(TABLE_COLUMNS)
    console = Console(record=True, width=250)
    console.print(report_table(_report()))
    text = console.export_text()
    for header in ("coverage", "top_title_share", "mean_pop_rank"):
        assert header in text
    assert "0.9300" in text and "412.5" in text and "6.4" in text
    assert "lambda=200" in text  # extras stay notes...
    assert "Forrest Gump" not in text and "top_title=" not in text  # ...the top-title dict stays in the JSON


def test_table_leaves_a_missing_metric_blank() -> None:
    report = _report()
    del report.systems["niche"]["mean_pop_rank"]
    console = Console(record=True, width=250)
    console.print(report_table(report))
    assert "6.4" in console.export_text()


def test_json_round_trip_and_definitions(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    _report().write(path)
    data = orjson.loads(path.read_bytes())
    assert data["systems"]["popular"]["top_title"]["title"] == "Forrest Gump"
    assert data["systems"]["niche"]["mean_pop_rank"] == 412.5
    assert {"top_title_share", "mean_pop_rank", "coverage"} <= set(data["definitions"])
    assert EvalReport.read(path).systems == _report().systems


def test_bias_plot(tmp_path: Path) -> None:
    path = write_popularity_bias_plot(_report(), tmp_path / "plots")
    assert path is not None and path.name == "popularity_bias.png" and path.stat().st_size > 1000
    bare = EvalReport(split="user-last", test_users=1, positives=1, systems={"x": {"ndcg@10": 0.1}})
    assert write_popularity_bias_plot(bare, tmp_path / "bare") is None
