"""The pure parts of bench_serving's overload bursts: capacity, figures of a schedule, recovery, RSS, goals, report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from tools.bench.runner import load_benchmark, overload_figures, summarize_serving

bench = load_benchmark("bench_serving")


def _rate(rate: float, p99: float, *, errors: int = 0, shed: int = 0, requests: int = 1000) -> Any:
    return bench.RateResult(rate=rate, requests=requests, achieved_rps=rate, p50_ms=p99 / 2, p99_ms=p99,
                            p999_ms=p99, max_ms=p99, errors=errors, p99_send_lag_ms=0.1, shed=shed)


def test_capacity_is_the_highest_rate_under_25ms_p99() -> None:
    results = [_rate(50, 10), _rate(100, 20), _rate(200, 40), _rate(400, 120)]
    assert bench.capacity(results) == {"rps": 100, "how": "highest rate with p99 < 25 ms", "bound": "measured"}
    assert bench.capacity(results[:2])["bound"] == "at_least"  # the highest rate measured met it
    # A rate that met the latency only by shedding (> 1%) or with errors is not capacity.
    assert bench.capacity([_rate(50, 10), _rate(100, 20, shed=11)])["rps"] == 50
    assert bench.capacity([_rate(50, 10), _rate(100, 20, errors=1)])["rps"] == 50
    assert bench.capacity([_rate(50, 10), _rate(100, 20, shed=10)])["rps"] == 100


def test_capacity_falls_back_to_the_knee() -> None:
    cap = bench.capacity([_rate(50, 30), _rate(100, 70)])
    assert cap["rps"] == 75.0 and cap["bound"] == "interpolated" and "knee" in cap["how"]


def _samples(latency_ms: list[float], status: list[int], *, shed: list[bool] | None = None,
             offsets: list[float] | None = None) -> Any:
    n = len(latency_ms)
    return bench.Samples(
        offsets=np.asarray(offsets if offsets is not None else np.arange(n) / 100.0), latency_s=np.asarray(
            latency_ms) / 1000, status=np.asarray(status), shed=np.asarray(shed if shed is not None else
                                                                             [s == 503 for s in status]),
        degraded=np.zeros(n, bool), lag_s=np.zeros(n), stages=[], elapsed_s=1.0, cpu_s=0.5, rss_kb=[])


def test_rate_result_keeps_shed_answers_out_of_the_admitted_tail_and_times_them() -> None:
    samples = _samples([10.0] * 6 + [1.0, 3.0] + [5000.0, 20.0], [200] * 6 + [503, 503] + [0, 500])
    row = bench.rate_result(100.0, samples, seconds=0.5)
    assert row.requests == 10 and row.achieved_rps == 20.0
    assert row.shed == 2 and row.shed_p50_ms == 2.0 and row.shed_p99_ms == pytest.approx(2.98)
    assert row.errors == 2 and row.error_kinds == {"transport": 1, "500": 1}
    assert row.p99_ms > 1000  # the transport failure is admitted work; the 503s are not in it
    assert row.server_cpu_ms_per_request == 50.0
    only = bench.rate_result(100.0, samples, np.arange(10) < 6, seconds=1.0)
    assert only.requests == 6 and only.shed == 0 and only.errors == 0 and only.shed_p99_ms is None


def test_recovery_times() -> None:
    offsets = np.arange(0, 5, 0.1)  # 50 probes over 5 s after the burst
    latency = np.where(offsets < 2.0, 80.0, 10.0)
    ok = np.ones(50, bool)
    shed = offsets < 0.35
    ok[shed] = False
    rec = bench.recovery(offsets, latency, ok, shed, pre_p99_ms=12.0)
    assert rec["p99_recovered_s"] == 2.0 and rec["shed_stopped_s"] == 0.4
    calm = bench.recovery(offsets, np.full(50, 5.0), np.ones(50, bool), np.zeros(50, bool), pre_p99_ms=12.0)
    assert calm == {"p99_recovered_s": 0.0, "shed_stopped_s": 0.0, "window_s": 1.0}
    never = bench.recovery(offsets, np.full(50, 50.0), np.ones(50, bool), offsets > 4.85, pre_p99_ms=12.0)
    assert never["p99_recovered_s"] is None and never["shed_stopped_s"] is None
    # A window with a failed probe has not recovered, however fast the others were.
    failed = np.ones(50, bool)
    failed[5] = False
    assert bench.recovery(offsets, np.full(50, 5.0), failed, np.zeros(50, bool), 12.0)["p99_recovered_s"] == 1.0


def test_vm_rss_and_the_process_tree() -> None:
    assert bench.vm_rss_kb("Name:\tpython\nVmPeak:\t 9 kB\nVmRSS:\t  123456 kB\nThreads: 3\n") == 123456
    assert bench.vm_rss_kb("Name:\tzombie\nState:\tZ\n") is None
    if not os.path.isdir("/proc"):
        pytest.skip("needs Linux /proc")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(100):
            if child.pid in bench.process_tree(os.getpid()):
                break
            time.sleep(0.05)
        rss = bench.rss_kb(os.getpid())
        assert rss[os.getpid()] > 1000 and child.pid in rss
        assert bench.process_tree(os.getpid())[0] == os.getpid()
        assert bench.process_role(os.getpid(), os.getpid()) == "serve"
        assert bench.process_role(child.pid, os.getpid()) == "replica"
    finally:
        child.kill()
        child.wait()
    assert bench.rss_kb(None) == {} and bench.process_tree(None) == []


def _burst(**changes: Any) -> dict[str, Any]:
    rss = bench.rss_report({1: 100_000, 2: 200_000}, {1: 150_000, 2: 260_000}, {1: 160_000, 2: 270_000},
                           {1: 105_000, 2: 215_000}, root=None)
    burst = {"multiplier": 4.0, "rate": 400.0, "achieved_rps": 398.0, "answered_200_rps": 150.0, "p50_ms": 8.0,
             "p99_ms": 30.0, "p999_ms": 45.0, "shed_share": 0.6, "shed_p50_ms": 1.0, "shed_p99_ms": 3.0,
             "other_non_200": 0, "error_kinds": {}, "p99_send_lag_ms": 1.0, "pre_burst": {"p99_ms": 12.0},
             "recovery": {"p99_recovered_s": 1.0, "shed_stopped_s": 0.2}, "rss": {**rss, "after_s": 10.0}}
    burst.update(changes)
    return burst


def test_rss_report_per_process_and_in_all() -> None:
    rss = _burst()["rss"]
    assert [row["after_over_before"] for row in rss["processes"]] == [1.05, 1.075]
    assert rss["total_before_kb"] == 300_000 and rss["total_after_kb"] == 320_000
    assert rss["total_after_over_before"] == pytest.approx(1.067, abs=1e-3)


def test_burst_goals_each_pass_and_fail() -> None:
    assert all(bench.burst_goals(_burst()).values())
    goals = bench.burst_goals(_burst(p99_ms=50.0, shed_p99_ms=5.1, other_non_200=1))
    assert goals == {"admitted_p99_under_50ms": False, "shed_p99_within_5ms": False, "no_other_non_200": False,
                     "rss_within_10pct_10s_after": True}
    assert bench.burst_goals(_burst(shed_p99_ms=None))["shed_p99_within_5ms"]  # nothing shed: nothing late
    grown = _burst()
    grown["rss"]["processes"][1]["after_over_before"] = 1.2  # one replica kept its memory
    assert not bench.burst_goals(grown)["rss_within_10pct_10s_after"]
    grown["rss"]["processes"][1]["after_over_before"] = None  # a replica gone: not a pass
    assert not bench.burst_goals(grown)["rss_within_10pct_10s_after"]


def test_overload_table_and_bench_all_figures() -> None:
    ok, bad = _burst(multiplier=2.0), _burst(p99_ms=80.0, other_non_200=2, error_kinds={"500": 2})
    for burst in (ok, bad):
        burst["goals"] = bench.burst_goals(burst)
        burst["pass"] = all(burst["goals"].values())
    overload = {"capacity": {"rps": 100.0, "how": "highest rate with p99 < 25 ms", "bound": "measured"},
                "probe_rps": 50.0, "seconds": 20.0, "bursts": [ok, bad], "goals_at_multiplier": 4.0, "pass": False}
    text = bench.overload_table(overload, floor_ms=6.5)
    assert "capacity 100.0 rps" in text and "floor 6.5 ms" in text
    assert "2x goals:" in text and "=> PASS" in text
    assert "admitted_p99_under_50ms FAIL" in text and "other: {'500': 2}" in text
    assert "overload goals at 4x capacity: FAIL" in text
    assert text.count("MB (1.05x)") == 2  # RSS per process, for each burst
    figures = overload_figures(overload)
    assert figures["overload_capacity_rps"] == 100.0
    assert figures["overload_admitted_p99_ms@4x"] == 80.0 and figures["overload_goals@4x"] == "FAIL"
    assert figures["overload_goals@2x"] == "PASS" and figures["overload_rss_after_over_before@2x"] == 1.075
    assert figures["overload_other_non_200@4x"] == 2
    summary = summarize_serving({"rates": [{"rate": 50.0, "p50_ms": 4.0, "p99_ms": 9.0, "errors": 0}],
                                 "overload": overload})
    assert summary.figures["overload_shed_p99_ms@4x"] == 3.0
    assert overload_figures(None) == {} and overload_figures({"bursts": []}) == {}


def test_server_side_quantiles_from_two_scrapes() -> None:
    def text(counts: dict[str, list[int]]) -> str:
        lines = ["# HELP streamrec_http_request_seconds x", "# TYPE streamrec_http_request_seconds histogram"]
        for status, (c1, c5, cinf) in counts.items():
            for le, c in (("0.001", c1), ("0.005", c5), ("+Inf", cinf)):
                lines.append(f'streamrec_http_request_seconds_bucket{{endpoint="{bench.REC_ENDPOINT}",'
                             f'le="{le}",status="{status}"}} {c}.0')
        lines.append('streamrec_http_request_seconds_bucket{endpoint="/healthz",le="+Inf",status="200"} 99.0')
        return "\n".join(lines) + "\n"

    before = text({"503": [10, 10, 10], "200": [0, 5, 5]})
    after = text({"503": [108, 110, 110], "200": [0, 5, 105]})
    shed_b, shed_a = bench.latency_buckets(before, "503"), bench.latency_buckets(after, "503")
    assert shed_a == {0.001: 108.0, 0.005: 110.0, float("inf"): 110.0}
    assert bench.bucket_quantile(shed_b, shed_a, 0.5) == 1.0  # 98 of the 100 new 503s took <= 1 ms
    assert bench.bucket_quantile(shed_b, shed_a, 0.99) == 5.0
    ok_b, ok_a = bench.latency_buckets(before, "200"), bench.latency_buckets(after, "200")
    assert bench.bucket_quantile(ok_b, ok_a, 0.5) == float("inf")  # past the last finite bucket
    assert bench.bucket_quantile(ok_a, ok_a, 0.5) is None  # nothing observed between the scrapes
    assert bench.latency_buckets("", "503") == {}
