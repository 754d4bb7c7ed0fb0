"""The personalisation table (issue 14): rows, rich and Markdown tables, the two_stage-vs-EASE check, the
benchmark script that prints them, and what the two-stage row carries about its popularity correction.

Expected values are worked out by hand from the small reports below, or recomputed from the protocol's own
lists, never read back from the function under test.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

from models.dataset import EventLog, load_log
from models.eval import BASELINES, EvalReport, run_evaluation
from models.eval.report import (
    PERSONALISATION_COLUMNS,
    personalisation_check,
    personalisation_markdown,
    personalisation_rows,
    personalisation_table,
)
from tools.datasets.world import generate_world

ROOT = Path(__file__).resolve().parents[2]


def _report(two_stage_share: float = 0.40) -> EvalReport:
    systems = {
        "popularity": {"ndcg@10": 0.05, "coverage": 0.002, "top_title_share": 0.95, "mean_pop_rank": 6.5,
                       "top_title": {"item": 1, "id": "m1", "title": "Forrest Gump", "users": 95}},
        "ease": {"ndcg@10": 0.10, "coverage": 0.05, "top_title_share": 0.50, "mean_pop_rank": 120.25,
                 "top_title": {"item": 2, "id": "m2", "title": "Heat", "users": 50}},
        "two_stage": {"ndcg@10": 0.12, "coverage": 0.0625, "top_title_share": two_stage_share,
                      "mean_pop_rank": 300.0, "top_title": {"item": 3, "id": "m3", "title": "Alien", "users": 40,
                                                             "pop_rank": 31, "positives": 12}},
    }
    return EvalReport(split="user-last", test_users=100, positives=300, train_events=5000, n_items=2000,
                      systems=systems)


def test_rows_carry_the_four_columns_distinct_titles_and_the_top_title() -> None:
    rows = personalisation_rows(_report())
    assert [row["system"] for row in rows] == ["popularity", "ease", "two_stage"]
    assert rows[2] == {"system": "two_stage", "ndcg@10": 0.12, "coverage": 0.0625, "top_title_share": 0.40,
                       "mean_pop_rank": 300.0, "distinct_titles": 125, "top_title": "Alien",  # 0.0625 x 2000
                       "top_title_pop_rank": 31, "top_title_positives": 12}
    assert rows[1]["top_title_pop_rank"] is None and rows[1]["top_title_positives"] is None  # older reports
    assert rows[0]["distinct_titles"] == 4 and rows[1]["distinct_titles"] == 100
    assert [key for key, _ in PERSONALISATION_COLUMNS] == ["ndcg@10", "coverage", "top_title_share", "mean_pop_rank"]


def test_rows_leave_missing_metrics_empty() -> None:
    report = EvalReport(split="user-last", test_users=3, positives=3, n_items=0,
                        systems={"x": {"ndcg@10": 0.2, "coverage": 0.5}})
    (row,) = personalisation_rows(report)
    assert row["top_title_share"] is None and row["mean_pop_rank"] is None and row["top_title_positives"] is None
    assert row["distinct_titles"] is None and row["top_title"] is None  # no catalogue size, no top title
    assert personalisation_markdown(report).splitlines()[-1] == "| x | 0.2000 | 0.5000 |  |  |"


def test_markdown_table() -> None:
    assert personalisation_markdown(_report()).splitlines() == [
        "| system | NDCG@10 | coverage@10 | top share | avg popularity rank |",
        "|---|---:|---:|---:|---:|",
        "| popularity | 0.0500 | 0.0020 (4 titles) | 95.0% (Forrest Gump) | 6.5 |",
        "| ease | 0.1000 | 0.0500 (100 titles) | 50.0% (Heat) | 120.2 |",
        "| two_stage | 0.1200 | 0.0625 (125 titles) | 40.0% (Alien) | 300.0 |",
    ]


def test_rich_table() -> None:
    console = Console(record=True, width=200)
    console.print(personalisation_table(_report()))
    text = console.export_text()
    for needle in ("NDCG@10", "coverage@10", "top share", "avg popularity rank", "0.0625 (125 titles)",
                   "95.0% (Forrest Gump)", "300.0", "100 test users"):
        assert needle in text


@pytest.mark.parametrize(("share", "holds"), [(0.40, True), (0.50, True), (0.51, False)])
def test_check_against_ease(share: float, holds: bool) -> None:
    check = personalisation_check(_report(share))
    assert check["holds"] is holds and check["top_share_not_higher"] is holds  # equal to EASE's is allowed
    assert check["ndcg_lead"] and check["coverage_not_lower"] and check["pop_rank_not_lower"]


def test_check_each_condition() -> None:
    report = _report()
    report.systems["two_stage"]["ndcg@10"] = 0.10  # a tie is no lead
    report.systems["two_stage"]["coverage"] = 0.04
    report.systems["two_stage"]["mean_pop_rank"] = 100.0  # more popular titles than EASE's
    check = personalisation_check(report)
    assert check == {"ndcg_lead": False, "coverage_not_lower": False, "top_share_not_higher": True,
                     "pop_rank_not_lower": False, "holds": False}
    del report.systems["ease"]["mean_pop_rank"]
    assert personalisation_check(report)["pop_rank_not_lower"] is None
    assert personalisation_check(report)["holds"] is None  # not every condition could be checked
    assert personalisation_check(report, system="mf")["holds"] is None


# ---------------------------------------------------------------------------------------------
# The benchmark script
# ---------------------------------------------------------------------------------------------


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_personalisation",
                                                  ROOT / "benchmarks" / "bench_personalisation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_bench_tabulates_a_written_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.json"
    _report(0.7).write(path)
    assert _bench().main(["--report", str(path)]) == 0
    output = capsys.readouterr().out
    assert "| two_stage | 0.1200 | 0.0625 (125 titles) | 70.0% (Alien) | 300.0 |" in output
    assert "does NOT hold (top_share_not_higher fails)" in output
    data = _json_line(output)
    assert data["rows"] == personalisation_rows(_report(0.7)) and data["check"]["holds"] is False


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("personalisation_world")
    generate_world(out, users=60, items=150, events=4000, seed=5)
    return out


def test_bench_runs_the_evaluation(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    assert _bench().main(["--data", str(world), "--systems", "popularity,ease", "--out", str(out)]) == 0
    data = _json_line(capsys.readouterr().out)
    # The very figures of the evaluation protocol, not a copy of it.
    expected = run_evaluation(load_log(world), {"popularity": BASELINES["popularity"], "ease": BASELINES["ease"]})
    assert [row["system"] for row in data["rows"]] == ["popularity", "ease"]
    for row in data["rows"]:
        mine = expected.systems[row["system"]]
        for key in ("ndcg@10", "coverage", "top_title_share", "mean_pop_rank"):
            assert row[key] == pytest.approx(mine[key])
        assert row["top_title"] == mine["top_title"]["title"]
        assert row["top_title_positives"] == mine["top_title"]["positives"]
    assert data["check"]["holds"] is None  # no two_stage row to check
    written = EvalReport.read(out)
    assert written.systems["ease"]["ndcg@10"] == pytest.approx(expected.systems["ease"]["ndcg@10"])


def test_bench_rejects_an_unknown_system(world: Path) -> None:
    with pytest.raises(SystemExit, match="unknown system"):
        _bench().main(["--data", str(world), "--systems", "popularity,nope"])


# ---------------------------------------------------------------------------------------------
# The two-stage row says what its fit did against popularity
# ---------------------------------------------------------------------------------------------


def test_two_stage_row_carries_its_popularity_correction(world: Path) -> None:
    pytest.importorskip("torch")
    from models.config import TwoStageConfig
    from models.eval.model_systems import two_stage_system

    log: EventLog = load_log(world)
    config = TwoStageConfig(dim=8, rank_users=60, ranker_epochs=2, sequence_epochs=2)
    report = run_evaluation(log, {"two_stage": two_stage_system(config)})
    row = report.systems["two_stage"]
    grid = row["debias_grid"]
    assert row["debias_tuned"] is True and len(grid) == 16  # models.debias: 4 betas x 4 caps
    # The chosen pair is one of the grid's, and within the tolerance of its best NDCG@10.
    chosen = [g for g in grid if g["beta"] == row["popularity_correction"] and g["cap"] == row["exposure_cap"]]
    assert len(chosen) == 1
    assert chosen[0]["ndcg@10"] >= (1 - config.debias_tolerance) * max(g["ndcg@10"] for g in grid) - 1e-12
    assert {"pop_rank", "positives"} <= set(row["top_title"])
