"""End-to-end latency of ``GET /v1/recommendations/{user}`` under an open-loop load, beside the component floor.

    streamrec stack up      # or --stack-up: this script starts (and stops) the stack from the STREAMREC_* settings
    python benchmarks/bench_serving.py --artifacts ARTIFACTS [--data DIR] [--rates 50,100,200,400] [--seconds 10]
                                       [--worker] [--replay-events 20000] [--quick] [--poisson] [--workers N]
                                       [--overload-seconds 20] [--overload-multipliers 2,4] [--capacity RPS]
    python benchmarks/bench_serving.py --compare-frameworks [--rates 250,500,1000] [--quick]

Open loop: requests are *scheduled* at a fixed arrival rate (fixed interval, or Poisson with ``--poisson``) and each
latency is measured from its scheduled send time to the last byte of the answer, so a slow server cannot hide
queueing by slowing the client down (a closed loop would). Errors are non-200 answers and transport failures.
For each rate: p50 / p99 / p99.9, errors, and the achieved rate; then the rate at which p99 crosses 50 ms
(interpolated between the two measured rates around it).

Floor, measured in the same run on the same bundle and Redis (before the load, server idle): one ANN query over the
CF index (the retrieval budget), one ONNX Runtime batch of the candidate rows (~1,000), one ``MGET`` of the same
user's three online values (the server's one Redis command per request; the candidates' state is in its memory).
The end-to-end p50 at the lowest rate is reported as a multiple of their sum. For reference, the reads of the
candidates' rows the server used to make (a pipelined ``HMGET`` each, and the one-script read).

The server is ``streamrec serve`` in its own process; with ``--worker`` a ``streamrec worker`` runs beside it (with
``--data``, the first ``--replay-events`` events are replayed into Kafka first, so the worker is busy and Redis
holds real online state; with ``--worker-rate R`` the rest of the log then arrives at R events/s through the whole
load, so the worker stays busy). Users are drawn from the bundle's users, 10% unknown (cold start).

Overload (after the rates; ``--overload-seconds 0`` skips it): the measured capacity is the highest rate with p99
under 25 ms (no errors, at most 1% shed), or where p99 crosses the 50 ms knee when none is (``--capacity`` gives it
instead). For each ``--overload-multipliers`` (2x and 4x) in turn: a low probe rate (``--probe-rate``, default the
lowest rate) for ``--pre-burst-seconds`` gives the pre-burst p99; then one open-loop schedule, the burst at that
multiple of the capacity for ``--overload-seconds`` (20 s, 5 with ``--quick``) followed at once by the probe rate for
``--recovery-seconds`` (10). Per burst: the rate sent, 200s per second, the admitted (non-503) p50/p99/p99.9, the
shed share (503 capacity with Retry-After) and time to shed (p50/p99 latency of those 503s themselves), any other
non-200 by status (``transport``: no answer in 5 s), the recovery (``p99_recovered_s``: the first 1 s window of
probes all 200 with p99 under the pre-burst p99; ``shed_stopped_s``: the first probe after the last one shed), the
server's own time for its 503s and 200s (``server_side``: bucket bounds of its request histogram, scraped before and
after; the client's figures hold in addition the time in sockets, in the server loop's queue and the client's lag), and
the server's RSS (``/proc/<pid>/status`` VmRSS of every server process, each ``serve --workers N`` replica on its
own) before the burst, at its end, its peak, and 10 s after its end. Goals, each printed PASS/FAIL: admitted p99
< 50 ms, 503s within 5 ms (p99), no other non-200, every process's RSS within 10% of before 10 s after.

``--compare-frameworks``: the same request path (validation, a service call, an orjson body of 20 items, the
request-latency histogram) served by our aiohttp app and by Starlette on uvicorn (uvloop + httptools), both with a
stub service, one process each, at the same rates; beside them the floor, a bare aiohttp route answering a constant
body (no validation, service or metrics). Server CPU per request is the figure to compare on a shared machine: a
neighbour's load inflates latency, not CPU time. It needs ``starlette``, ``uvicorn`` and ``httptools``, which are not
dependencies.

Prints a table and one JSON line; ``main(argv)`` returns the same results as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import uvloop
from aiohttp import web

from foundation.child_env import settings_env
from foundation.redis_io import redis_client
from foundation.settings import Settings, get_settings
from models.bundle import open_bundle
from models.features.hashing import hash_str
from models.features.rows import RequestContext, feature_batch
from models.features.state import ITEM_COUNT_NAMES, ItemStates, UserStates
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RecommendRequest, Snapshot, extra_dense, retrieve
from online_state.feature_reads import FeatureReader
from online_state.redis_store import RedisFeatureStore
from serving.app import create_app
from serving.http_metrics import REQUEST_SECONDS
from serving.http_validation import ParamError, parse_recommend_request, request_id_from
from tools.stack import manager
from tools.stack.probes import free_port

REPO = Path(__file__).resolve().parents[1]
P99_KNEE_MS = 50.0


# --- the open-loop load generator -----------------------------------------------------------------


@dataclass
class RateResult:
    rate: float
    requests: int
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    # How late the generator itself sent (p99): the latency includes it (open loop), but a large value says the
    # client machine, not the server, was the bottleneck at this rate.
    p99_send_lag_ms: float
    degraded: int = 0  # 200 answers with "degraded": true
    shed: int = 0  # refused at once by admission control (503 with Retry-After); not in the percentiles
    server_cpu_ms_per_request: float | None = None  # the server process's CPU time over the run / requests
    server_stage_p50_ms: dict[str, float] | None = None  # medians of the answers' timings_ms
    shed_p50_ms: float | None = None  # time to shed: latency of the 503 capacity answers themselves
    shed_p99_ms: float | None = None
    error_kinds: dict[str, int] | None = None  # the errors by status ("transport": no HTTP answer / client timeout)


def process_tree(pid: int | None) -> list[int]:
    """``pid`` and its live descendants (``serve --workers N``: the replicas), parents first (Linux /proc)."""
    if pid is None:
        return []
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop(0)
        try:
            children = [int(child) for task in Path(f"/proc/{current}/task").iterdir()
                        for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.append(current)
        pending += children
    return found


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children (Linux /proc): a cost per request that a busy neighbour
    on this shared machine cannot inflate, unlike latency."""
    if pid is None:
        return float("nan")
    total = 0.0
    for current in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def vm_rss_kb(status_text: str) -> int | None:
    """The ``VmRSS`` of a ``/proc/<pid>/status`` text, in kB (``None`` for a process without one: a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def rss_kb(pid: int | None) -> dict[int, int]:
    """Resident memory (kB) of the server process and each of its descendants, by pid."""
    out: dict[int, int] = {}
    for current in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            value = vm_rss_kb(Path(f"/proc/{current}/status").read_text())
            if value is not None:
                out[current] = value
    return out


def process_role(pid: int, root: int) -> str:
    """``serve`` (the process the bench started), ``replica`` (a ``serve --workers N`` child) or ``helper``."""
    if pid == root:
        return "serve"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "gone"
    return "helper" if b"resource_tracker" in cmdline else "replica"


@dataclass
class Samples:
    """What an open-loop schedule gave, one entry per request (arrays indexed like the schedule's offsets)."""

    offsets: np.ndarray  # scheduled send instants, seconds after the start
    latency_s: np.ndarray  # scheduled instant -> last byte of the answer (or the failure)
    status: np.ndarray  # HTTP status; 0: a transport failure or the client timeout
    shed: np.ndarray  # 503 with Retry-After: refused by admission control
    degraded: np.ndarray
    lag_s: np.ndarray  # how late the generator sent
    stages: list[dict[str, float]]  # the 200 answers' timings_ms
    elapsed_s: float  # start -> the last answer
    cpu_s: float  # the server processes' CPU time over the schedule (nan without a pid)
    rss_kb: list[tuple[float, dict[int, int]]]  # (seconds after the start, {pid: VmRSS kB}) samples of the server


async def send_schedule(url_for: Callable[[int], str], offsets: np.ndarray, *, timeout_s: float = 5.0,
                        server_pid: int | None = None, rss_every_s: float | None = None) -> Samples:
    """Send one GET at each scheduled instant (``offsets``, seconds); latency counts from the scheduled instant.

    With ``rss_every_s`` the server processes' resident memory is sampled that often while the schedule runs."""
    n = len(offsets)
    latency = np.full(n, np.nan)
    status = np.zeros(n, np.int32)
    shed = np.zeros(n, bool)
    lag = np.zeros(n)
    degraded = np.zeros(n, bool)
    stages: list[dict[str, float]] = []  # the server's own per-stage timings, to see where the time goes
    rss: list[tuple[float, dict[int, int]]] = []
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    clock = time.perf_counter
    # No connection cap: a capped pool would queue inside the client, which is the closed loop we avoid.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(i: int, at: float) -> None:
            lag[i] = clock() - at
            try:
                async with session.get(url_for(i)) as response:
                    raw = await response.read()
                    status[i] = response.status
                    shed[i] = response.status == 503 and "Retry-After" in response.headers
                if status[i] == 200:
                    body = orjson.loads(raw)
                    degraded[i] = bool(body.get("degraded"))
                    stages.append(body.get("timings_ms") or {})
            except (aiohttp.ClientError, TimeoutError, OSError):
                status[i] = 0
            latency[i] = clock() - at

        cpu_before = cpu_seconds(server_pid)
        start = clock() + 0.05
        sampler = None
        if rss_every_s is not None and server_pid is not None:
            async def sample() -> None:
                while True:
                    rss.append((clock() - start, rss_kb(server_pid)))
                    await asyncio.sleep(rss_every_s)

            sampler = asyncio.create_task(sample())
        tasks = []
        try:
            for i, offset in enumerate(offsets.tolist()):
                at = start + offset
                delay = at - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, at)))
            await asyncio.gather(*tasks)
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        elapsed = clock() - start
        cpu = cpu_seconds(server_pid) - cpu_before
    return Samples(offsets=offsets, latency_s=latency, status=status, shed=shed, degraded=degraded, lag_s=lag,
                   stages=stages, elapsed_s=elapsed, cpu_s=cpu, rss_kb=rss)


def _schedule(rate: float, seconds: float, *, poisson: bool = False, seed: int = 0) -> np.ndarray:
    n = max(1, int(rate * seconds))
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / rate, n)) if poisson else np.arange(n) / rate


def rate_result(rate: float, samples: Samples, select: np.ndarray | None = None, seconds: float | None = None
                ) -> RateResult:
    """The figures of the requests ``select`` picks (all by default) of ``samples``, offered at ``rate``."""
    pick = np.ones(len(samples.offsets), bool) if select is None else select
    n = int(pick.sum())
    ok = (samples.status == 200) & pick
    shed = samples.shed & pick
    admitted = pick & ~samples.shed
    # Latency of the requests the server took on: a shed request's fast refusal must not flatter the tail.
    ms = samples.latency_s[admitted] * 1000 if admitted.any() else samples.latency_s[pick] * 1000
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9]).tolist()
    shed_ms = samples.latency_s[shed] * 1000
    shed_p50, shed_p99 = np.percentile(shed_ms, [50, 99]).tolist() if shed.any() else (None, None)
    other = pick & ~ok & ~shed
    kinds: dict[str, int] = {}
    for code in samples.status[other].tolist():
        key = "transport" if code == 0 else str(code)
        kinds[key] = kinds.get(key, 0) + 1
    if seconds is None:
        seconds = samples.elapsed_s
    cpu = samples.cpu_s
    stages = samples.stages
    return RateResult(rate=rate, requests=n, achieved_rps=round(n / seconds, 1), p50_ms=round(p50, 2),
                      p99_ms=round(p99, 2), p999_ms=round(p999, 2), max_ms=round(float(ms.max()), 2),
                      errors=int(other.sum()), shed=int(shed.sum()),
                      p99_send_lag_ms=round(float(np.percentile(samples.lag_s[pick], 99)) * 1000, 2),
                      degraded=int((samples.degraded & pick).sum()),
                      # per request of the whole schedule (the server's CPU is not split by request)
                      server_cpu_ms_per_request=None if np.isnan(cpu) else round(
                          cpu * 1000 / len(samples.offsets), 3),
                      server_stage_p50_ms={k: round(float(np.median([t[k] for t in stages if k in t])), 3)
                                           for k in sorted({k for t in stages for k in t})},
                      shed_p50_ms=None if shed_p50 is None else round(shed_p50, 2),
                      shed_p99_ms=None if shed_p99 is None else round(shed_p99, 2),
                      error_kinds=kinds)


async def open_loop(url_for: Callable[[int], str], rate: float, seconds: float, *, poisson: bool = False,
                    timeout_s: float = 5.0, seed: int = 0, server_pid: int | None = None) -> RateResult:
    """Send ``rate * seconds`` GETs at scheduled instants; latency counts from each scheduled instant."""
    samples = await send_schedule(url_for, _schedule(rate, seconds, poisson=poisson, seed=seed),
                                  timeout_s=timeout_s, server_pid=server_pid)
    return rate_result(rate, samples)


def knee(results: list[RateResult], limit_ms: float = P99_KNEE_MS) -> dict[str, Any]:
    """The rate at which p99 crosses ``limit_ms``: interpolated between the last rate under it and the first over."""
    ordered = sorted(results, key=lambda r: r.rate)
    for low, high in itertools.pairwise(ordered):
        if low.p99_ms < limit_ms <= high.p99_ms:
            share = (limit_ms - low.p99_ms) / (high.p99_ms - low.p99_ms)
            return {"rps": round(low.rate + share * (high.rate - low.rate), 1), "bound": "interpolated"}
    if ordered and ordered[0].p99_ms >= limit_ms:
        return {"rps": ordered[0].rate, "bound": "below"}  # already over at the lowest rate measured
    return {"rps": ordered[-1].rate if ordered else None, "bound": "above"}  # never crossed: at least this


async def run_rates(url_for: Callable[[int], str], rates: list[float], seconds: float, poisson: bool,
                    warmup_s: float = 2.0, server_pid: int | None = None) -> list[RateResult]:
    await open_loop(url_for, min(rates), warmup_s, poisson=poisson)  # connections, caches, ORT arenas
    results = []
    for rate in rates:
        results.append(await open_loop(url_for, rate, seconds, poisson=poisson, seed=int(rate),
                                       server_pid=server_pid))
        await asyncio.sleep(0.5)  # let the previous rate's backlog drain before the next
    return results


# --- overload: bursts past the measured capacity ----------------------------------------------------

CAPACITY_P99_MS = 25.0  # the latency goal: capacity is the highest rate that meets it
CAPACITY_MAX_SHED = 0.01  # ... while admission control refuses at most this share of it
# Goals of an overload burst (checked at every multiplier; the issue states them at 4x capacity).
GOAL_ADMITTED_P99_MS = 50.0
GOAL_SHED_P99_MS = 5.0
GOAL_RSS_RATIO = 1.10  # RSS this long after a burst, over the RSS before it
RSS_AFTER_S = 10.0


def capacity(results: list[RateResult], goal_ms: float = CAPACITY_P99_MS) -> dict[str, Any]:
    """The measured capacity: the highest rate with p99 under ``goal_ms`` (no errors, at most 1% shed); when no
    rate meets it, the rate where p99 crosses the 50 ms knee. ``bound``: ``measured`` (a higher rate was measured
    and missed the goal), ``at_least`` (the highest rate measured met it), or the knee's bound."""
    ordered = sorted(results, key=lambda r: r.rate)
    meets = [r for r in ordered if r.p99_ms < goal_ms and r.errors == 0 and r.shed <= CAPACITY_MAX_SHED * r.requests]
    if meets:
        best = meets[-1]
        return {"rps": best.rate, "how": f"highest rate with p99 < {goal_ms:g} ms",
                "bound": "at_least" if best is ordered[-1] else "measured"}
    crossing = knee(ordered)
    return {"rps": crossing["rps"], "how": f"p99 crosses {P99_KNEE_MS:g} ms (knee)", "bound": crossing["bound"]}


def recovery(offsets_s: np.ndarray, latency_ms: np.ndarray, ok: np.ndarray, shed: np.ndarray, pre_p99_ms: float,
             window_s: float = 1.0) -> dict[str, float | None]:
    """How long after a burst its effects lasted, from the probe requests sent after it (``offsets_s``: seconds
    after the burst's end).

    ``p99_recovered_s``: the start of the first ``window_s`` window whose probes were all answered 200 with a p99
    under the pre-burst p99 (``None``: not within the probes). ``shed_stopped_s``: the send time of the first probe
    after the last one shed (0 when none was; ``None`` when the last probe was still shed)."""
    if len(offsets_s) == 0:
        return {"p99_recovered_s": None, "shed_stopped_s": None, "window_s": window_s}
    windows = np.floor(offsets_s / window_s).astype(np.int64)
    recovered = None
    for w in np.unique(windows).tolist():
        inside = windows == w
        if ok[inside].all() and float(np.percentile(latency_ms[inside], 99)) < pre_p99_ms:
            recovered = round(w * window_s, 3)
            break
    order = np.argsort(offsets_s, kind="stable")
    shed_sorted = shed[order]
    if not shed_sorted.any():
        stopped: float | None = 0.0
    elif shed_sorted[-1]:
        stopped = None
    else:
        last = int(np.flatnonzero(shed_sorted)[-1])
        stopped = round(float(offsets_s[order][last + 1]), 3)
    return {"p99_recovered_s": recovered, "shed_stopped_s": stopped, "window_s": window_s}


def rss_report(before: dict[int, int], end: dict[int, int], peak: dict[int, int], after: dict[int, int],
               root: int | None) -> dict[str, Any]:
    """Per server process (and in all): RSS before a burst, at its end, the peak, and ``RSS_AFTER_S`` after it."""
    rows = []
    for pid in sorted(before, key=lambda p: (p != root, p)):
        b, a = before[pid], after.get(pid)
        rows.append({"pid": pid, "role": process_role(pid, root) if root is not None else "serve",
                     "before_kb": b, "end_kb": end.get(pid), "peak_kb": peak.get(pid), "after_kb": a,
                     "after_over_before": round(a / b, 3) if a is not None and b else None})
    total_before = sum(before.values())
    total_after = sum(after.get(pid, 0) for pid in before)
    return {"processes": rows, "total_before_kb": total_before,
            "total_end_kb": sum(end.get(pid, 0) for pid in before), "total_after_kb": total_after,
            "total_after_over_before": round(total_after / total_before, 3) if total_before else None}


def burst_goals(burst: dict[str, Any]) -> dict[str, bool]:
    """The overload goals, each pass (``True``) or fail, of one burst's figures."""
    shed_p99 = burst["shed_p99_ms"]
    ratios = [row["after_over_before"] for row in burst["rss"]["processes"]]
    return {
        f"admitted_p99_under_{GOAL_ADMITTED_P99_MS:g}ms": burst["p99_ms"] < GOAL_ADMITTED_P99_MS,
        f"shed_p99_within_{GOAL_SHED_P99_MS:g}ms": shed_p99 is None or shed_p99 <= GOAL_SHED_P99_MS,
        "no_other_non_200": burst["other_non_200"] == 0,
        f"rss_within_{round((GOAL_RSS_RATIO - 1) * 100)}pct_{RSS_AFTER_S:g}s_after": bool(ratios) and all(
            r is not None and r <= GOAL_RSS_RATIO for r in ratios),
    }


REC_ENDPOINT = "/v1/recommendations/{user_id}"


def latency_buckets(exposition: str, status: str, endpoint: str = REC_ENDPOINT) -> dict[float, float]:
    """The cumulative ``streamrec_http_request_seconds`` buckets (upper bound s -> count) of one endpoint and status
    in a /metrics text (every replica's, in ``serve --workers N``'s multiprocess mode)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "streamrec_http_request_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (sample.name.endswith("_bucket") and labels.get("endpoint") == endpoint
                    and labels.get("status") == status):
                bound = float(labels["le"])
                out[bound] = out.get(bound, 0.0) + sample.value
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the histogram bucket holding quantile ``q`` of what was observed between two scrapes
    (``None``: nothing was); ``inf`` when it lies past the last finite bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    bound = next(b for b, c in zip(bounds, counts, strict=True) if c >= rank)
    return round(bound * 1000, 3) if bound != float("inf") else float("inf")


async def scrape(metrics_url: str | None) -> str:
    if metrics_url is None:
        return ""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        async with aiohttp.ClientSession() as session, session.get(
                metrics_url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return await response.text()
    return ""


def _at_or_after(samples: list[tuple[float, dict[int, int]]], t: float) -> dict[int, int]:
    return next((rss for at, rss in samples if at >= t), samples[-1][1] if samples else {})


async def overload_burst(url_for: Callable[[int], str], multiplier: float, capacity_rps: float, probe_rps: float,
                         seconds: float, pre_s: float, recovery_s: float, server_pid: int | None,
                         metrics_url: str | None = None) -> dict[str, Any]:
    """A probe at ``probe_rps`` (the pre-burst p99), the burst at ``multiplier`` x capacity for ``seconds``, the
    probe again at once for ``recovery_s`` (recovery), RSS read all along and ``RSS_AFTER_S`` after the burst."""
    pre = rate_result(probe_rps, await send_schedule(url_for, _schedule(probe_rps, pre_s), server_pid=server_pid))
    rate = round(multiplier * capacity_rps, 1)
    burst_offsets = _schedule(rate, seconds)
    probe_offsets = seconds + _schedule(probe_rps, recovery_s)
    rss_before = rss_kb(server_pid)
    metrics_before = await scrape(metrics_url)
    samples = await send_schedule(url_for, np.concatenate([burst_offsets, probe_offsets]), server_pid=server_pid,
                                  rss_every_s=0.25)
    metrics_after = await scrape(metrics_url)
    since_end = samples.elapsed_s - seconds
    if since_end < RSS_AFTER_S:
        await asyncio.sleep(RSS_AFTER_S - since_end)
    rss_after = rss_kb(server_pid)
    in_burst = np.arange(len(samples.offsets)) < len(burst_offsets)
    sent_for_s = max(float((samples.offsets + samples.lag_s)[in_burst].max()), 1e-9)
    row = asdict(rate_result(rate, samples, in_burst, seconds=sent_for_s))
    ok = samples.status == 200
    probe = ~in_burst
    peak: dict[int, int] = {}
    for _, sample in samples.rss_kb:
        for pid, kb in sample.items():
            peak[pid] = max(peak.get(pid, 0), kb)
    row.update({
        "multiplier": multiplier, "seconds": seconds, "shed_share": round(row["shed"] / max(row["requests"], 1), 4),
        "answered_200_rps": round(int((ok & in_burst).sum()) / seconds, 1), "other_non_200": row["errors"],
        "pre_burst": {"rate": probe_rps, "seconds": pre_s, "p50_ms": pre.p50_ms, "p99_ms": pre.p99_ms,
                      "errors": pre.errors, "shed": pre.shed},
        "recovery": {"probe_rps": probe_rps, "probe_seconds": recovery_s, "pre_burst_p99_ms": pre.p99_ms,
                     **recovery(samples.offsets[probe] - seconds, samples.latency_s[probe] * 1000, ok[probe],
                                samples.shed[probe], pre.p99_ms)},
        "rss": {**rss_report(rss_before, _at_or_after(samples.rss_kb, seconds), peak, rss_after, server_pid),
                "after_s": round(max(since_end, RSS_AFTER_S), 2)},
    })
    if metrics_before and metrics_after:
        # The server's own time (middleware in -> answer ready, over burst and probe): what the client's figures
        # hold beyond it is waiting in sockets and in the loop's queue (or the client's own lag).
        row["server_side"] = {
            f"{name}_{label}_ms_le": bucket_quantile(latency_buckets(metrics_before, status),
                                                     latency_buckets(metrics_after, status), q)
            for name, status in (("shed", "503"), ("admitted", "200")) for label, q in (("p50", 0.5), ("p99", 0.99))}
    row["goals"] = burst_goals(row)
    row["pass"] = all(row["goals"].values())
    return row


async def run_overload(url_for: Callable[[int], str], results: list[RateResult], args: argparse.Namespace,
                       server_pid: int | None, metrics_url: str | None = None) -> dict[str, Any]:
    cap = {"rps": args.capacity, "how": "given (--capacity)", "bound": "given"} if args.capacity else capacity(results)
    probe_rps = args.probe_rate or min(r.rate for r in results)
    bursts = []
    for multiplier in args.overload_multipliers:
        bursts.append(await overload_burst(url_for, multiplier, cap["rps"], probe_rps, args.overload_seconds,
                                           args.pre_burst_seconds, args.recovery_seconds, server_pid, metrics_url))
        await asyncio.sleep(1.0)
    verdict = max(bursts, key=lambda b: b["multiplier"]) if bursts else None
    return {"capacity": cap, "probe_rps": probe_rps, "seconds": args.overload_seconds, "bursts": bursts,
            "goals_at_multiplier": verdict["multiplier"] if verdict else None,
            "pass": verdict["pass"] if verdict else None}


# --- processes ------------------------------------------------------------------------------------


async def wait_http(url: str, seconds: float, want: int = 200) -> None:
    deadline = time.monotonic() + seconds
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status == want:
                        return
                    last = f"{response.status} {await response.text()}"
            except (aiohttp.ClientError, OSError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{url} not {want} within {seconds}s: {last}")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped with SIGTERM (then SIGKILL) when the block ends."""
    with log_path.open("wb") as log:
        child = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


# --- the floor ------------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 3)


async def measure_floor(settings: Any, artifacts: Path, user_ids: list[str], reps: int) -> dict[str, Any]:
    """One ANN query, one ONNX batch of the candidates, one MGET of the user's online values."""
    model = RecommenderModel.load(artifacts)
    user_id = user_ids[0]
    now = int(time.time() * 1000)
    stage1 = retrieve(model, RecommendRequest(user_id), Snapshot(), now)
    rows = stage1.candidates.items
    ids = model.items.ids[rows].tolist()
    query = model.user_vectors[model.user_row(user_id) or 0][None, :]
    ann_k = model.config.candidates.ann_cf
    ann_ms = _median_ms(lambda: model.cf_index.query(query, ann_k), reps)

    n = len(ids)
    epochs = ItemStates.epochs_at(now)
    states = ItemStates(counts=np.zeros((n, len(ITEM_COUNT_NAMES)), np.int64),
                        pop=np.zeros((n, len(epochs), 2), np.int64), epoch=epochs)
    static = model.static.rows(*model.static.lookup(ids))
    batch = feature_batch(hash_str(user_id), UserStates.empty(1, model.static.n_genres), states, static,
                          RequestContext(device=0, country=0, hour=-1), now, extra_dense(model, stage1))
    onnx_ms = _median_ms(lambda: model.ranker.score(batch), reps)

    redis = redis_client(settings)
    store = RedisFeatureStore(redis, model.static)
    keys = store.keys
    user_keys = [keys.user_vector(user_id), keys.session(user_id), keys.user_state(user_id)]
    # The server's one Redis command per request (the MGET of the user's values: the items' state is in process
    # memory), raw; for reference, the reads of the candidates' rows the server no longer makes: one pipelined HMGET
    # per candidate, and the one-script read (online_state.feature_reads).
    reads: dict[str, Any] = {"user_mget": lambda: redis.mget(user_keys),
                             "items_pipelined_hmget": lambda: store.read(user_id, ids, now),
                             "items_script": lambda: FeatureReader(store).read(user_id, ids, now)}
    redis_ms: dict[str, float] = {}
    try:
        for name, read in reads.items():
            await read()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                await read()
                times.append(time.perf_counter() - t0)
            redis_ms[name] = round(float(np.median(times)) * 1000, 3)
    finally:
        await redis.aclose()
    user_read = redis_ms["user_mget"]
    return {"candidates": n, "ann_k": ann_k, "ann_ms": ann_ms, "onnx_batch_ms": onnx_ms, "redis_read_ms": user_read,
            **{f"redis_read_{name}_ms": value for name, value in redis_ms.items()},
            "floor_ms": round(ann_ms + onnx_ms + user_read, 3), "reps": reps}


# --- the end-to-end run ---------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamrec.cli", *args]


async def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    artifacts = args.artifacts.resolve()
    logs = settings.state_dir.resolve() / "bench-serving"
    logs.mkdir(parents=True, exist_ok=True)
    if args.stack_up:
        settings = (await manager.up(settings)).settings  # with the stack's credentials
    env = settings_env(settings.model_copy(update={"log_level": "WARNING"}))
    try:
        # Set-up steps, before any timing: blocking the loop here costs nothing.
        subprocess.run(_cli("stack", "topics"), env=env, check=True, cwd=REPO, capture_output=True)  # noqa: ASYNC221
        if args.data is not None and args.replay_events:
            for log_file, extra in ((args.data / "catalog.jsonl", []),
                                    (args.data / "events.jsonl", ["--limit", str(args.replay_events)])):
                subprocess.run(_cli("replay", str(log_file), "--max", *extra),  # noqa: ASYNC221
                               env=env, check=True, cwd=REPO, capture_output=True)
        users: list[str] = open_bundle(artifacts).json("user_ids")
        rng = np.random.default_rng(7)
        picks = rng.choice(users, size=4096).tolist()
        unknown = rng.random(4096) < 0.10
        picks = [f"cold-{n}" if cold else u for n, (u, cold) in enumerate(zip(picks, unknown, strict=True))]
        floor = await measure_floor(settings, artifacts, users, args.floor_reps)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        query = "?k=20&device=tv&country=US&hour=20"

        def url_for(i: int) -> str:
            return f"{base}/v1/recommendations/{picks[i % len(picks)]}{query}"

        with contextlib.ExitStack() as stack:
            if args.worker:
                stack.enter_context(process(_cli("worker", "--artifacts", str(artifacts), "--metrics-port", "0"),
                                            env, logs / "worker.log"))
            if args.worker and args.data is not None and args.worker_rate:
                # A worker that stays busy through the load: the rest of the log arrives at a steady rate.
                stack.enter_context(process(_cli("replay", str(args.data / "events.jsonl"), "--skip",
                                                 str(args.replay_events), "--rate", str(args.worker_rate)),
                                            env, logs / "replay.log"))
            server = stack.enter_context(process(
                _cli("serve", "--artifacts", str(artifacts), "--port", str(port), "--workers", str(args.workers)),
                env, logs / "server.log"))
            await wait_http(f"{base}/readyz", 180)
            if args.settle:
                await asyncio.sleep(args.settle)  # let the worker drain what was replayed, when that is wanted
            results = await run_rates(url_for, args.rates, args.seconds, args.poisson, server_pid=server.pid)
            overload = (await run_overload(url_for, results, args, server.pid, f"{base}/metrics")
                        if args.overload_seconds > 0 and args.overload_multipliers else None)
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}; see {logs / 'server.log'}")
    finally:
        if args.stack_up:
            await manager.down(settings)
    lowest = min(results, key=lambda r: r.rate)
    return {"bench": "serving", "mode": "end_to_end", "workers": args.workers, "worker_beside": args.worker,
            "worker_events_per_s": args.worker_rate if args.worker and args.data is not None else 0,
            "seconds_per_rate": args.seconds, "arrivals": "poisson" if args.poisson else "fixed",
            "rates": [asdict(r) for r in results], "p99_over_50ms_at_rps": knee(results), "floor": floor,
            "p50_over_floor": round(lowest.p50_ms / floor["floor_ms"], 2) if floor["floor_ms"] else None,
            "overload": overload, "cpus": os.cpu_count()}


# --- framework comparison on the same request path ------------------------------------------------


class _StubService:
    """A service call of realistic shape: yields to the loop, then top-20 of 1,000 scores into a 20-item body."""

    model_version = "stub"

    def __init__(self) -> None:
        self._scores = np.random.default_rng(0).random(1000).astype(np.float32)
        self._ids = [f"item-{n}" for n in range(1000)]

    async def recommend(self, req: Any, assignments: Any = ()) -> dict[str, Any]:
        await asyncio.sleep(0)
        top = np.argpartition(-self._scores, req.k)[: req.k]
        top = top[np.argsort(-self._scores[top])]
        items = [{"item_id": self._ids[i], "score": float(self._scores[i]), "sources": ["ann"], "reason": "stub"}
                 for i in top.tolist()]
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": "stub", "items": items,
                "degraded": False, "timings_ms": {"total": 0.0}}

    async def similar(self, item_id: str, k: int) -> None:
        return None

    async def readiness(self) -> dict[str, Any]:
        return {"ready": True}

    async def close(self) -> None:
        pass


class _StubPublisher:
    connected = True

    def start_background(self) -> None:
        pass

    async def publish(self, events: Any) -> None:
        pass

    async def close(self) -> None:
        pass


def serve_stub(framework: str, port: int) -> None:
    """The stub server of one framework, in this process (``--serve-stub``)."""
    settings = Settings(log_level="WARNING")
    if framework == "aiohttp-bare":
        # The floor of any aiohttp server: one route, a constant 20-item body, no validation, service or metrics.

        body = orjson.dumps({"items": [{"item_id": f"item-{n}", "score": 0.5, "sources": ["ann"], "reason": "stub"}
                                       for n in range(20)], "degraded": False})

        async def constant(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        bare = web.Application()
        bare.router.add_get("/v1/recommendations/{user_id}", constant)
        bare.router.add_get("/readyz", constant)
        web.run_app(bare, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())
        return
    if framework == "aiohttp":
        async def stub_service(_settings: Any, _artifacts: Any) -> _StubService:
            return _StubService()

        app = create_app(settings, service_factory=stub_service, publisher_factory=lambda _s: _StubPublisher())
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())
        return
    # Lazy: Starlette and uvicorn are not dependencies; only --compare-frameworks runs them.
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    service = _StubService()

    async def recommend(request: Request) -> Response:
        # The same steps as serving/app.py's middleware + handler, inline (Starlette's BaseHTTPMiddleware is slower).
        started = time.perf_counter()
        request_id = request_id_from(request.headers.get("x-request-id"))
        try:
            body = await service.recommend(parse_recommend_request(request.path_params["user_id"], request_id,
                                                                   request.query_params))
            response = Response(orjson.dumps(body), media_type="application/json")
        except ParamError as exc:
            response = Response(orjson.dumps({"error": {"field": exc.field, "message": exc.message},
                                              "request_id": request_id}), 400, media_type="application/json")
        response.headers["X-Request-ID"] = request_id
        REQUEST_SECONDS.labels("/v1/recommendations/{user_id}", str(response.status_code)).observe(
            time.perf_counter() - started)
        return response

    async def readyz(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    app = Starlette(routes=[Route("/v1/recommendations/{user_id}", recommend), Route("/readyz", readyz)])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, lifespan="off")


async def compare_frameworks(args: argparse.Namespace) -> dict[str, Any]:
    """Every server up at once (an idle one costs nothing); at each rate all are loaded back to back, the first one
    rotating, so a neighbour's load on this shared machine hits them alike."""
    names = ("aiohttp", "starlette", "aiohttp-bare")
    logs = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    ports = {name: free_port() for name in names}
    by_name: dict[str, list[RateResult]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        pids = {}
        for name in names:
            cmd = [sys.executable, __file__, "--serve-stub", name, "--port", str(ports[name])]
            pids[name] = stack.enter_context(process(cmd, settings_env(get_settings()), logs / f"{name}.log")).pid
        for name in names:
            await wait_http(f"http://127.0.0.1:{ports[name]}/readyz", 60)

        def url_maker(name: str) -> Callable[[int], str]:
            base = f"http://127.0.0.1:{ports[name]}"
            return lambda i: f"{base}/v1/recommendations/u{i % 997}?k=20&device=tv&country=US"

        for name in names:  # warm-up: connections, first-request paths
            await open_loop(url_maker(name), min(args.rates), 2.0)
        for n, rate in enumerate(args.rates):
            for name in names[n % len(names):] + names[:n % len(names)]:  # rotate who goes first
                by_name[name].append(await open_loop(url_maker(name), rate, args.seconds, poisson=args.poisson,
                                                     seed=int(rate), server_pid=pids[name]))
                await asyncio.sleep(0.5)
    return {"bench": "serving", "mode": "frameworks", "seconds_per_rate": args.seconds,
            "arrivals": "poisson" if args.poisson else "fixed",
            "frameworks": {name: {"rates": [asdict(r) for r in sorted(res, key=lambda r: r.rate)],
                                  "p99_over_50ms_at_rps": knee(res)} for name, res in by_name.items()}}


# --- report ---------------------------------------------------------------------------------------


def _table(title: str, rates: list[dict[str, Any]]) -> str:
    lines = [title, f"{'rate':>7} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} "
                    f"{'errors':>7} {'shed':>6} {'degraded':>9} {'p99 send lag':>13} {'cpu ms/req':>11}  "
                    "server stages p50 ms"]
    for r in rates:
        lines.append(f"{r['rate']:>7.0f} {r['achieved_rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                     f"{r['p999_ms']:>9.2f} {r['max_ms']:>8.2f} {r['errors']:>7d} {r.get('shed', 0):>6d} "
                     f"{r['degraded']:>9d} "
                     f"{r['p99_send_lag_ms']:>13.2f} {r['server_cpu_ms_per_request'] or float('nan'):>11.3f}  "
                     f"{r['server_stage_p50_ms'] or ''}")
    return "\n".join(lines)


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def overload_table(overload: dict[str, Any], floor_ms: float | None = None) -> str:
    """The overload bursts: one row per burst, then its RSS per server process and its goals (pass/fail)."""
    cap = overload["capacity"]
    lines = [f"overload bursts at x capacity: capacity {cap['rps']} rps ({cap['how']}, {cap['bound']}); "
             f"{overload['seconds']:g} s each; probe {overload['probe_rps']:g} rps before and after"
             + (f"; floor {floor_ms} ms" if floor_ms is not None else ""),
             f"{'x':>4} {'offered':>8} {'achieved':>9} {'200/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
             f"{'shed %':>7} {'shed p50':>9} {'shed p99':>9} {'other':>6} {'send lag p99':>13} {'pre p99':>8} "
             f"{'recovered s':>12} {'shed stop s':>12}"]

    def opt(value: float | None, width: int, digits: int = 2) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for b in overload["bursts"]:
        rec = b["recovery"]
        lines.append(f"{b['multiplier']:>4g} {b['rate']:>8.0f} {b['achieved_rps']:>9.1f} {b['answered_200_rps']:>7.1f} "
                     f"{b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f} {b['p999_ms']:>9.2f} {b['shed_share'] * 100:>7.1f} "
                     f"{opt(b['shed_p50_ms'], 9)} {opt(b['shed_p99_ms'], 9)} {b['other_non_200']:>6d} "
                     f"{b['p99_send_lag_ms']:>13.2f} {b['pre_burst']['p99_ms']:>8.2f} "
                     f"{opt(rec['p99_recovered_s'], 12, 1)} {opt(rec['shed_stopped_s'], 12, 2)}"
                     + (f"  other: {b['error_kinds']}" if b["other_non_200"] else ""))
    for b in overload["bursts"]:
        rss = b["rss"]
        procs = "; ".join(f"{r['role']} {r['pid']}: {_mb(r['before_kb'])} -> end {_mb(r['end_kb'])} "
                          f"(peak {_mb(r['peak_kb'])}) -> {_mb(r['after_kb'])} MB ({r['after_over_before']}x)"
                          for r in rss["processes"])
        if b.get("server_side"):
            side = b["server_side"]
            lines.append(f"  {b['multiplier']:g}x server-side (histogram bucket bounds, ms): 503 p50 <= "
                         f"{side['shed_p50_ms_le']} p99 <= {side['shed_p99_ms_le']}; 200 p50 <= "
                         f"{side['admitted_p50_ms_le']} p99 <= {side['admitted_p99_ms_le']}")
        lines.append(f"  {b['multiplier']:g}x RSS before -> end -> {rss['after_s']:g} s after: {procs}")
        goals = ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in b["goals"].items())
        lines.append(f"  {b['multiplier']:g}x goals: {goals} => {'PASS' if b['pass'] else 'FAIL'}")
    if overload.get("goals_at_multiplier") is not None:
        lines.append(f"overload goals at {overload['goals_at_multiplier']:g}x capacity: "
                     f"{'PASS' if overload['pass'] else 'FAIL'}")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    if results["mode"] == "frameworks":
        parts = []
        for name, res in results["frameworks"].items():
            what = "floor: constant body" if name.endswith("-bare") else "stub service"
            parts.append(_table(f"{name} ({what}, 1 process)", res["rates"]))
            parts.append(f"p99 crosses {P99_KNEE_MS:.0f} ms at: {res['p99_over_50ms_at_rps']}")
        return "\n".join(parts)
    floor = results["floor"]
    reads = ", ".join(f"{k[len('redis_read_'):-3]} {v} ms" for k, v in floor.items()
                      if k.startswith("redis_read_") and k != "redis_read_ms")
    overload = results.get("overload")
    return "\n".join([
        _table(f"GET /v1/recommendations (serve --workers {results['workers']}, worker beside: "
               f"{results['worker_beside']})", results["rates"]),
        f"p99 crosses {P99_KNEE_MS:.0f} ms at: {results['p99_over_50ms_at_rps']}",
        f"floor ({floor['candidates']} candidates): ANN k={floor['ann_k']} {floor['ann_ms']} ms + ONNX batch "
        f"{floor['onnx_batch_ms']} ms + Redis MGET {floor['redis_read_ms']} ms = {floor['floor_ms']} ms "
        f"(Redis reads: {reads})",
        f"end-to-end p50 at the lowest rate / floor = {results['p50_over_floor']}x",
        *([overload_table(overload, floor["floor_ms"])] if overload else []),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="bundle root (with `latest`) the server loads")
    parser.add_argument("--data", type=Path, help="event-log folder to replay into Kafka first (with --replay-events)")
    parser.add_argument("--replay-events", type=int, default=20_000)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per rate (default 10, --quick 4)")
    parser.add_argument("--quick", action="store_true", help="short runs at fewer rates")
    parser.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of a fixed interval")
    parser.add_argument("--worker", action="store_true", help="run `streamrec worker` beside the server")
    parser.add_argument("--worker-rate", type=float, default=0.0,
                        help="with --worker and --data: replay the rest of the log at this many events/s during the "
                             "load, so the worker stays busy (0: only the --replay-events before it)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait after the server is ready (e.g. for the worker to drain a replay)")
    parser.add_argument("--stack-up", action="store_true", help="start and stop the stack of the STREAMREC_ settings")
    parser.add_argument("--floor-reps", type=int, default=200)
    parser.add_argument("--overload-seconds", type=float, default=None,
                        help="length of each overload burst (default 20, --quick 5; 0: no overload bursts)")
    parser.add_argument("--overload-multipliers", type=lambda s: [float(x) for x in s.split(",") if x],
                        default=[2.0, 4.0],
                        help="burst rates as multiples of the measured capacity (default 2,4)")
    parser.add_argument("--capacity", type=float, default=None,
                        help="the capacity (requests/s) the bursts multiply, instead of the one measured")
    parser.add_argument("--probe-rate", type=float, default=None,
                        help="the low rate before and after each burst (default: the lowest of --rates)")
    parser.add_argument("--pre-burst-seconds", type=float, default=None, help="probe before a burst (3, --quick 2)")
    parser.add_argument("--recovery-seconds", type=float, default=RSS_AFTER_S,
                        help=f"probe after a burst, for the recovery time (default {RSS_AFTER_S:g})")
    parser.add_argument("--compare-frameworks", action="store_true")
    parser.add_argument("--serve-stub", choices=("aiohttp", "starlette", "aiohttp-bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 4.0 if args.quick else 10.0
    if args.overload_seconds is None:
        args.overload_seconds = 5.0 if args.quick else 20.0
    if args.pre_burst_seconds is None:
        args.pre_burst_seconds = 2.0 if args.quick else 3.0
    if args.rates is None:
        if args.compare_frameworks:
            args.rates = [250.0, 500.0, 1000.0] if args.quick else [250.0, 500.0, 1000.0, 1500.0, 2000.0]
        else:
            args.rates = [50.0, 100.0, 200.0] if args.quick else [50.0, 100.0, 200.0, 400.0]
    if not args.compare_frameworks and args.serve_stub is None and args.artifacts is None:
        parser.error("--artifacts is required (or --compare-frameworks)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.serve_stub:
        serve_stub(args.serve_stub, args.port)
        return {}

    runner = compare_frameworks if args.compare_frameworks else end_to_end
    results = uvloop.run(runner(args))
    print(report(results))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
