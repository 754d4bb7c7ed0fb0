"""End-to-end latency of ``GET /v1/recommendations/{user}`` under an open-loop load, beside the component floor.

    streamrec stack up      # or --stack-up: this script starts (and stops) the stack from the STREAMREC_* settings
    python benchmarks/bench_serving.py --artifacts ARTIFACTS [--data DIR] [--rates 50,100,200,400] [--seconds 10]
                                       [--worker] [--replay-events 20000] [--quick] [--poisson]
    python benchmarks/bench_serving.py --compare-frameworks [--rates 250,500,1000] [--quick]

Open loop: requests are *scheduled* at a fixed arrival rate (fixed interval, or Poisson with ``--poisson``) and each
latency is measured from its scheduled send time to the last byte of the answer, so a slow server cannot hide
queueing by slowing the client down (a closed loop would). Errors are non-200 answers and transport failures.
For each rate: p50 / p99 / p99.9, errors, and the achieved rate; then the rate at which p99 crosses 50 ms
(interpolated between the two measured rates around it).

Floor, measured in the same run on the same bundle and Redis (before the load, server idle): one ANN query over the
CF index (the retrieval budget), one ONNX Runtime batch of the candidate rows (~1,000), one pipelined Redis read of
the same user's and candidates' feature state. The end-to-end p50 at the lowest rate is reported as a multiple of
their sum.

The server is ``streamrec serve`` in its own process; with ``--worker`` a ``streamrec worker`` runs beside it (with
``--data``, the first ``--replay-events`` events are replayed into Kafka first, so the worker is busy and Redis
holds real online state). Users are drawn from the bundle's users, 10% unknown (cold start).

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
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from foundation.child_env import settings_env
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


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children (Linux /proc): a cost per request that a busy neighbour
    on this shared machine cannot inflate, unlike latency."""
    if pid is None:
        return float("nan")
    total = 0.0
    pending = [pid]
    while pending:  # the process and its live descendants (`serve --workers N` replicas)
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


async def open_loop(url_for: Callable[[int], str], rate: float, seconds: float, *, poisson: bool = False,
                    timeout_s: float = 5.0, seed: int = 0, server_pid: int | None = None) -> RateResult:
    """Send ``rate * seconds`` GETs at scheduled instants; latency counts from each scheduled instant."""
    n = max(1, int(rate * seconds))
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1.0 / rate, n)) if poisson else np.arange(n) / rate
    latency = np.full(n, np.nan)
    ok = np.zeros(n, bool)
    shed = np.zeros(n, bool)
    lag = np.zeros(n)
    degraded = np.zeros(n, bool)
    stages: list[dict[str, float]] = []  # the server's own per-stage timings, to see where the time goes
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
                    ok[i] = response.status == 200
                    shed[i] = response.status == 503 and "Retry-After" in response.headers
                if ok[i]:
                    body = orjson.loads(raw)
                    degraded[i] = bool(body.get("degraded"))
                    stages.append(body.get("timings_ms") or {})
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok[i] = False
            latency[i] = clock() - at

        cpu_before = cpu_seconds(server_pid)
        start = clock() + 0.05
        tasks = []
        for i, offset in enumerate(offsets.tolist()):
            at = start + offset
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at)))
        await asyncio.gather(*tasks)
        elapsed = clock() - start
        cpu = cpu_seconds(server_pid) - cpu_before
    # Latency of the requests the server took on: a shed request's fast refusal must not flatter the tail.
    ms = latency[~shed] * 1000 if (~shed).any() else latency * 1000
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9]).tolist()
    return RateResult(rate=rate, requests=n, achieved_rps=round(n / elapsed, 1), p50_ms=round(p50, 2),
                      p99_ms=round(p99, 2), p999_ms=round(p999, 2), max_ms=round(float(ms.max()), 2),
                      errors=int((~ok & ~shed).sum()), shed=int(shed.sum()),
                      p99_send_lag_ms=round(float(np.percentile(lag, 99)) * 1000, 2),
                      degraded=int(degraded.sum()),
                      server_cpu_ms_per_request=None if np.isnan(cpu) else round(cpu * 1000 / n, 3),
                      server_stage_p50_ms={k: round(float(np.median([t[k] for t in stages if k in t])), 3)
                                           for k in sorted({k for t in stages for k in t})})


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
    """One ANN query, one ONNX batch of the candidates, one pipelined Redis read of their feature state."""
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

    redis = aioredis.Redis.from_url(settings.redis_url)
    store = RedisFeatureStore(redis, model.static)
    # Two ways to fetch the same keys: one pipelined HMGET per candidate, and the serving core's one-script read
    # (online_state.feature_reads). The floor takes the faster: a floor is what the fetch costs at best.
    readers: dict[str, Any] = {"pipelined_hmget": store, "script": FeatureReader(store)}
    redis_ms: dict[str, float] = {}
    try:
        for name, reader in readers.items():
            await reader.read(user_id, ids, now)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                await reader.read(user_id, ids, now)
                times.append(time.perf_counter() - t0)
            redis_ms[name] = round(float(np.median(times)) * 1000, 3)
    finally:
        await redis.aclose()
    best_redis = min(redis_ms.values())
    return {"candidates": n, "ann_k": ann_k, "ann_ms": ann_ms, "onnx_batch_ms": onnx_ms, "redis_read_ms": best_redis,
            **{f"redis_read_{name}_ms": value for name, value in redis_ms.items()},
            "floor_ms": round(ann_ms + onnx_ms + best_redis, 3), "reps": reps}


# --- the end-to-end run ---------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamrec.cli", *args]


async def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    artifacts = args.artifacts.resolve()
    logs = settings.state_dir.resolve() / "bench-serving"
    logs.mkdir(parents=True, exist_ok=True)
    if args.stack_up:
        await manager.up(settings)
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
            server = stack.enter_context(process(
                _cli("serve", "--artifacts", str(artifacts), "--port", str(port), "--workers", str(args.workers)),
                env, logs / "server.log"))
            await wait_http(f"{base}/readyz", 180)
            if args.settle:
                await asyncio.sleep(args.settle)  # let the worker drain what was replayed, when that is wanted
            results = await run_rates(url_for, args.rates, args.seconds, args.poisson, server_pid=server.pid)
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}; see {logs / 'server.log'}")
    finally:
        if args.stack_up:
            await manager.down(settings)
    lowest = min(results, key=lambda r: r.rate)
    return {"bench": "serving", "mode": "end_to_end", "workers": args.workers, "worker_beside": args.worker,
            "seconds_per_rate": args.seconds, "arrivals": "poisson" if args.poisson else "fixed",
            "rates": [asdict(r) for r in results], "p99_over_50ms_at_rps": knee(results), "floor": floor,
            "p50_over_floor": round(lowest.p50_ms / floor["floor_ms"], 2) if floor["floor_ms"] else None,
            "cpus": os.cpu_count()}


# --- framework comparison on the same request path ------------------------------------------------


class _StubService:
    """A service call of realistic shape: yields to the loop, then top-20 of 1,000 scores into a 20-item body."""

    model_version = "stub"

    def __init__(self) -> None:
        self._scores = np.random.default_rng(0).random(1000).astype(np.float32)
        self._ids = [f"item-{n}" for n in range(1000)]

    async def recommend(self, req: Any) -> dict[str, Any]:
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
    return "\n".join([
        _table(f"GET /v1/recommendations (serve --workers {results['workers']}, worker beside: "
               f"{results['worker_beside']})", results["rates"]),
        f"p99 crosses {P99_KNEE_MS:.0f} ms at: {results['p99_over_50ms_at_rps']}",
        f"floor ({floor['candidates']} candidates): ANN k={floor['ann_k']} {floor['ann_ms']} ms + ONNX batch "
        f"{floor['onnx_batch_ms']} ms + Redis read {floor['redis_read_ms']} ms = {floor['floor_ms']} ms "
        f"(Redis reads: {reads})",
        f"end-to-end p50 at the lowest rate / floor = {results['p50_over_floor']}x",
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
    parser.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait after the server is ready (e.g. for the worker to drain a replay)")
    parser.add_argument("--stack-up", action="store_true", help="start and stop the stack of the STREAMREC_ settings")
    parser.add_argument("--floor-reps", type=int, default=200)
    parser.add_argument("--compare-frameworks", action="store_true")
    parser.add_argument("--serve-stub", choices=("aiohttp", "starlette", "aiohttp-bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 4.0 if args.quick else 10.0
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
