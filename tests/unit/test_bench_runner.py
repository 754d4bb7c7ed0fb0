"""The benchmark runner's pure logic: output parsing, failure recording, results.json / results.md.

Fake benchmarks are small Python scripts written into tmp_path and run as real subprocesses (no stack).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tools.bench.plots import write_plots
from tools.bench.runner import (
    assemble,
    display_command,
    generic_summary,
    last_json_line,
    load_benchmark,
    render_markdown,
    run_all,
    run_benchmark,
    summarize_decode,
    summarize_eval,
    summarize_freshness,
    summarize_serving,
)
from tools.bench.spec import BenchContext, BenchResult, BenchSpec, Summary


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return path


def _spec(name: str, script: Path, *, report: Path | None = None, timeout_s: float = 30.0) -> BenchSpec:
    return BenchSpec(name, lambda c: [sys.executable, str(script)], generic_summary,
                     report=(lambda c: report) if report else None, timeout_s=lambda quick: timeout_s,
                     needs_setup=False)


@pytest.fixture
def ctx(tmp_path: Path) -> BenchContext:
    return BenchContext(out=tmp_path / "out", work=tmp_path / "work", quick=True)


# --- parsing ------------------------------------------------------------------------------------------


def test_last_json_line_takes_the_last_object_after_tables_and_noise() -> None:
    text = 'table\n{"a": 1}\nnot json {\n["a list"]\n{"b": 2, "c": {"d": 3}}\n\n'
    assert last_json_line(text) == {"b": 2, "c": {"d": 3}}


def test_last_json_line_refuses_output_without_an_object() -> None:
    with pytest.raises(ValueError, match="no JSON object"):
        last_json_line("only a table\n[1, 2]\n{broken")


def test_generic_summary_splits_floor_ratio_and_figures() -> None:
    raw = {"rate": 10.5, "floor_ms": 2.0, "ratio_to_floor": 5.25, "ok": True, "name": "x", "nested": {"p99_ms": 9}}
    summary = generic_summary(raw)
    assert summary.figures == {"rate": 10.5, "nested.p99_ms": 9}
    assert summary.floor == {"floor_ms": 2.0}
    assert summary.ratio == 5.25


def test_decode_summary_reads_the_decoder_row_against_the_parse_floor() -> None:
    raw = {"results": {"floor: orjson.loads (no validation)": {"us_per_event": 2.0, "events_per_s": 500_000.0},
                       "msgspec (schemas.decoder)": {"us_per_event": 3.0, "events_per_s": 333_333.3}}}
    summary = summarize_decode(raw)
    assert summary.figures == {"us_per_event": 3.0, "events_per_s": 333_333}
    assert summary.floor == {"orjson_us_per_event": 2.0}
    assert summary.ratio == 1.5


def test_serving_summary_has_percentiles_per_rate_and_the_floor() -> None:
    raw = {"rates": [{"rate": 50.0, "p50_ms": 4.0, "p99_ms": 9.0, "errors": 0},
                     {"rate": 100.0, "p50_ms": 5.0, "p99_ms": 30.0, "errors": 2, "shed": 7}],
           "floor": {"floor_ms": 2.0, "ann_ms": 0.5, "label": "x"}, "p50_over_floor": 2.0}
    summary = summarize_serving(raw)
    assert summary.figures["p99_ms@100rps"] == 30.0
    assert summary.figures["errors@100rps"] == 2
    assert summary.figures["shed@100rps"] == 7 and summary.figures["shed@50rps"] == 0
    assert summary.floor == {"floor_ms": 2.0, "ann_ms": 0.5}
    assert summary.ratio == 2.0


def test_freshness_and_eval_summaries() -> None:
    fresh = summarize_freshness({"e2e_p50_ms": 800.0, "e2e_p99_ms": 1500.0, "floor_p50_ms": 600.0,
                                 "ratio_p50": 1.33, "timeouts": 0, "samples_ms": [1.0]})
    assert fresh.figures["e2e_p99_ms"] == 1500.0 and "samples_ms" not in fresh.figures
    assert fresh.floor == {"floor_p50_ms": 600.0} and fresh.ratio == 1.33
    evaluation = summarize_eval({"systems": {"popularity": {"ndcg@10": 0.1, "recall@20": 0.2},
                                             "two_stage": {"ndcg@10": 0.15, "recall@20": 0.3}}})
    assert evaluation.figures["two_stage.ndcg@10"] == 0.15
    assert evaluation.floor == {"popularity.ndcg@10": 0.1, "popularity.recall@20": 0.2}
    assert evaluation.ratio == pytest.approx(1.5)


# --- running ----------------------------------------------------------------------------------------


def test_a_benchmark_that_prints_json_last_is_read(tmp_path: Path, ctx: BenchContext) -> None:
    script = _script(tmp_path, "good", 'import json\nprint("a table")\nprint(json.dumps({"x_per_s": 7.5, '
                                       '"floor_per_s": 10.0, "ratio": 0.75}))\n')
    result = run_benchmark(_spec("good", script), ctx)
    assert result.ok and result.error is None
    assert result.figures == {"x_per_s": 7.5} and result.floor == {"floor_per_s": 10.0} and result.ratio == 0.75
    assert str(script) in result.command
    assert json.loads((ctx.out / "raw" / "good.json").read_text())["x_per_s"] == 7.5
    assert "a table" in (ctx.out / "logs" / "good.out").read_text()


def test_a_crashing_benchmark_is_recorded_with_its_error(tmp_path: Path, ctx: BenchContext) -> None:
    script = _script(tmp_path, "crash", 'import sys\nprint("half a table")\nsys.exit("broker unreachable")\n')
    result = run_benchmark(_spec("crash", script), ctx)
    assert not result.ok
    assert "exit code 1" in (result.error or "") and "broker unreachable" in (result.error or "")


def test_output_without_json_and_a_hang_are_failures(tmp_path: Path, ctx: BenchContext) -> None:
    silent = run_benchmark(_spec("silent", _script(tmp_path, "silent", 'print("no json here")\n')), ctx)
    assert not silent.ok and "no JSON object" in (silent.error or "")
    hang = run_benchmark(_spec("hang", _script(tmp_path, "hang", "import time\ntime.sleep(60)\n"), timeout_s=1), ctx)
    assert not hang.ok and "timed out" in (hang.error or "")


def _process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (``Z``: a zombie), or ``gone``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_timeout_stops_what_the_benchmark_started(tmp_path: Path, ctx: BenchContext) -> None:
    pid_file = tmp_path / "grandchild.pid"
    body = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)\n")
    result = run_benchmark(_spec("spawner", _script(tmp_path, "spawner", body), timeout_s=3), ctx)
    assert not result.ok and "timed out" in (result.error or "")
    grandchild = int(pid_file.read_text())
    # Gone, or at most a zombie waiting for init to reap it (its parent was killed first).
    state = _process_state(grandchild)
    assert state in {"gone", "Z"}, f"the benchmark's child {grandchild} survived the timeout ({state})"


def test_a_process_left_behind_by_a_finished_benchmark_is_stopped(tmp_path: Path, ctx: BenchContext) -> None:
    pid_file = tmp_path / "leftover.pid"
    body = ("import subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('{\"x\": 1}')\n")
    result = run_benchmark(_spec("leaky", _script(tmp_path, "leaky", body)), ctx)
    assert result.ok
    leftover = int(pid_file.read_text())
    state = _process_state(leftover)
    assert state in {"gone", "Z"}, f"the benchmark's leftover {leftover} still runs ({state})"


def test_report_file_benchmarks_read_the_report_not_stdout(tmp_path: Path, ctx: BenchContext) -> None:
    report = tmp_path / "report.json"
    report.write_text('{"stale": 1}')  # left by an earlier run: must not be taken for this run's
    writer = _script(tmp_path, "writer", f"import json\njson.dump({{'hr': 0.5}}, open({str(report)!r}, 'w'))\n")
    assert run_benchmark(_spec("writer", writer, report=report), ctx).figures == {"hr": 0.5}
    report.write_text('{"stale": 1}')
    no_report = _script(tmp_path, "noreport", 'print("{\\"x\\": 1}")\n')
    result = run_benchmark(_spec("noreport", no_report, report=report), ctx)
    assert not result.ok and "could not read the output" in (result.error or "")


def test_run_all_goes_on_after_a_failure_and_writes_results(tmp_path: Path) -> None:
    good = _script(tmp_path, "good", 'print(\'{"events_per_s": 100.0, "floor_events_per_s": 200.0, '
                                     '"ratio_to_floor": 0.5}\')\n')
    bad = _script(tmp_path, "bad", "raise SystemExit(3)\n")
    specs = [_spec("first", bad), _spec("second", good)]
    out = tmp_path / "out"
    doc = run_all(out, quick=True, specs=specs, work=tmp_path / "work", plots=False)
    assert list(doc["benchmarks"]) == ["first", "second"]
    assert doc["benchmarks"]["first"]["ok"] is False and "exit code 3" in doc["benchmarks"]["first"]["error"]
    assert doc["benchmarks"]["second"]["ok"] is True and doc["benchmarks"]["second"]["ratio"] == 0.5
    assert doc["ok"] is False
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["benchmarks"] == doc["benchmarks"]
    assert {"cpu", "cores", "memory_gib", "python", "os", "kafka", "redis"} <= set(on_disk["machine"])
    assert on_disk["quick"] is True and on_disk["started_at"]
    markdown = (out / "results.md").read_text()
    assert "| first | failed |" in markdown and "| second | events_per_s | 100 |" in markdown


def test_run_all_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        run_all(tmp_path / "out", quick=True, only=["nope"], specs=[], work=tmp_path, plots=False)


# --- documents --------------------------------------------------------------------------------------


def test_assemble_and_markdown() -> None:
    ok = BenchResult("replay", "python benchmarks/bench_replay.py --events 10", 3.21, ok=True,
                     figures={"replay_events_per_s": 90_000, "extra": 1.5}, floor={"aiokafka_events_per_s": 180_000},
                     ratio=0.5)
    bad = BenchResult("serving", "python benchmarks/bench_serving.py", 1.0, ok=False, error="exit code 2: a | b")
    setup = BenchResult("train", "streamrec train", 20.0, ok=True)
    doc = assemble({"cpu": "x", "cores": 2}, "2026-01-01T00:00:00+00:00", False, [ok, bad], [setup])
    assert doc["benchmarks"]["replay"] == {
        "figures": {"replay_events_per_s": 90_000, "extra": 1.5}, "floor": {"aiokafka_events_per_s": 180_000},
        "ratio": 0.5, "command": ok.command, "seconds": 3.21, "cpu_seconds": None, "ok": True, "error": None}
    assert doc["benchmarks"]["serving"]["error"] == "exit code 2: a | b"
    assert doc["setup"]["train"]["ok"] and not doc["ok"]
    lines = render_markdown(doc).splitlines()
    assert ("| replay | replay_events_per_s | 90,000 | aiokafka_events_per_s 180,000 | 0.5× | "
            "`python benchmarks/bench_replay.py --events 10` |") in lines
    assert "|  | extra | 1.5 |  |  |  |" in lines
    failed = next(line for line in lines if line.startswith("| serving |"))
    assert "a \\| b" in failed  # a pipe in an error must not break the table
    assert all(line.count("|") - line.count("\\|") == 7 for line in lines if line.startswith("| "))


def test_display_command_shortens_the_interpreter_and_work_dir() -> None:
    command = f"{sys.executable} -m streamrec.cli eval --data /tmp/w1/world"
    assert display_command(command, {"/tmp/w1": "$WORK"}) == "streamrec eval --data $WORK/world"
    script = f"{sys.executable} {Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_decode.py'} --events 5"
    assert display_command(script) == "python benchmarks/bench_decode.py --events 5"


def test_summary_defaults() -> None:
    assert Summary({"a": 1}).floor == {} and Summary({"a": 1}).ratio is None


# --- the freshness benchmark's pure parts (loaded the way `streamrec bench freshness` loads it) -------------


def test_freshness_script_loads_and_summarizes_probes() -> None:
    bench = load_benchmark("bench_freshness")
    assert callable(bench.main)
    assert bench.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert bench.percentile([float(v) for v in range(1, 101)], 99) == 99.0
    probes = [bench.Probe("u1", "i1", e2e_s=0.5, redis_s=0.3, rtts_s=[0.01, 0.03]),
              bench.Probe("u2", "i2", e2e_s=0.9, redis_s=0.5, rtts_s=[0.02]),
              bench.Probe("u3", "i3", e2e_s=None, redis_s=0.4, rtts_s=[0.02])]
    out = bench.summarize(probes)
    assert (out["probes"], out["visible"], out["timeouts"]) == (3, 2, 1)
    assert out["samples_ms"] == [500.0, 900.0]  # the timed-out probe is left out of the percentiles
    assert out["e2e_p50_ms"] == 700.0 and out["e2e_max_ms"] == 900.0
    assert out["redis_p50_ms"] == 400.0 and out["http_rtt_p50_ms"] == 20.0
    assert out["floor_p50_ms"] == 420.0 and out["ratio_p50"] == round(700.0 / 420.0, 2)
    assert out["visible_before_commit"] == 0
    assert bench.summarize([bench.Probe("u", "i")])["timeouts"] == 1
    early = bench.summarize([bench.Probe("u", "i", e2e_s=0.1, redis_s=0.2, rtts_s=[0.01])])
    assert early["visible_before_commit"] == 1


def test_plots_are_drawn_from_what_the_results_hold(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = [
        BenchResult("replay", "c", 1.0, ok=True, figures={"replay_events_per_s": 9e4},
                    floor={"aiokafka_events_per_s": 1.8e5}, ratio=0.5),
        BenchResult("serving", "c", 1.0, ok=True, figures={"p50_ms@50rps": 4.0},
                    raw={"rates": [{"rate": 50.0, "p50_ms": 4.0, "p99_ms": 9.0, "p999_ms": 12.0},
                                   {"rate": 100.0, "p50_ms": 5.0, "p99_ms": 20.0, "p999_ms": 30.0}],
                         "floor": {"floor_ms": 2.0}}),
        BenchResult("freshness", "c", 1.0, ok=True, figures={"e2e_p50_ms": 800.0},
                    raw={"samples_ms": [700.0, 800.0, 900.0], "floor_samples_ms": [500.0, 600.0]}),
        BenchResult("eval", "c", 1.0, ok=False, error="boom", raw=None),
    ]
    made = {p.name for p in write_plots(results, tmp_path / "plots")}
    # No eval (it failed), no eval-stream, no serving samples: those plots are left out rather than empty.
    assert made == {"throughput.png", "serving_latency.png", "freshness_hist.png"}
    for name in made:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
