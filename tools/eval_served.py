"""`streamrec eval --served`: the offline protocol's two-stage row measured through the HTTP API.

What a user of the deployed system would measure, beside what ``streamrec eval`` measures in process:

1. **Same split, same fit.** The offline run's split (``models.split``) and its fitted two-stage model are
   reused: the model is published as a bundle (``models.train.write_bundle``) into the run's own artifacts
   folder, so the served and the offline system hold the very same weights. The lines of ``events.jsonl``
   the split trains on are written as a log folder beside it.
2. **Online state.** That training log is produced into Kafka (topics of the run, named after it, deleted
   afterwards) and a real worker applies it to Redis database ``db`` (flushed first), on the stack the
   settings name (``streamrec stack up``). The run waits until the worker's offsets in Redis cover every
   record (:func:`tools.catch_up.wait_applied`).
3. **Served.** ``streamrec serve`` starts on a free loopback port against that database and bundle. Every
   test user is asked ``GET /v1/recommendations/{user}`` with the request the offline system makes
   (``TwoStageRecommender._requests``: just after the user's last training event, in that event's device,
   country and hour; ``now`` is the API's request clock), by an aiohttp client at bounded concurrency. A
   503 (admission control) or 429 is retried after its ``Retry-After``; anything else is a failed request.
4. **Scored alike.** The answers' item ids become item rows and go through the offline protocol's own code
   (:func:`models.eval.protocol.evaluate_system`, :func:`~models.eval.protocol.top_title`), so every metric
   is computed as for the offline rows. Agreement with the offline lists: the share of users whose served
   top 10 (and whole list) equals the offline one exactly, and the mean overlap of the top 10s.
5. **Parity.** The same requests through the recommend pipeline in this process, on the bundle with the item
   vectors the workers published (applied by the server's own tail code) and on the same Redis state, read
   through the online-state layer: the served lists must equal these (``parity``), whatever the state. All of
   them do in most runs; in some, lists differ at near ties: a live index that applied the workers' item vectors
   does not always end with the same HNSW graph (two copies built here from the same topic can differ too).

Where the served and the offline lists differ (by design of the online system, not of the pipeline): the
served pipeline reads the online state, the offline one an empty snapshot and the replayed log. Redis's
new-releases list is scored by recency where the offline source scores the model's new titles by popularity;
the popular source reads the live trending counters rather than the bundle's popularity; the worker's online
user vectors start from the bundle's and fold the replayed training events in once more; and Redis holds the
whole training log, where the offline replay stops at each user's request time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from foundation.child_env import settings_env
from foundation.logs import get_logger
from foundation.redis_io import redis_client
from foundation.settings import Settings
from foundation.topics import delete_topics, ensure_topics
from models.bundle import BundleWriter, fingerprint_files
from models.dataset import EventLog, read_events
from models.eval.metrics import MAX_K
from models.eval.protocol import evaluate_system, recommend_lists, top_title
from models.features.spec import FEATURE_SPEC_VERSION
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RankingState, RecommendRequest, rank_and_answer, retrieve
from models.split import Split
from models.train import write_bundle
from models.two_stage import TwoStageModel
from online_state.feature_reads import FeatureReader
from online_state.keys import DEFAULT_KEYS
from online_state.reads import RequestScopes, SharedReads, read_online_state
from online_state.redis_store import RedisFeatureStore
from serving.live_tail import LiveTail
from serving.options import ServingOptions
from tools.catch_up import end_offsets, wait_applied
from tools.eval_stream import _start_worker, clear_arm, run_settings
from tools.replay import ReplayOptions, replay_log
from tools.stack.process import tail, terminate

log = get_logger(__name__)

SERVED_NAME = "two_stage@http"


@dataclass(frozen=True)
class ServedConfig:
    db: int = 5  # Redis database the run's worker writes and its server reads (flushed at the start)
    concurrency: int = 8  # requests in flight (the machine's cores are shared with the server)
    k: int = MAX_K  # the offline protocol's list length
    # Stage budgets: generous, because this measures quality; a stage cut short by a busy machine
    # answers degraded, which is a latency, not a quality.
    stage_timeout_ms: float = 2000.0
    request_timeout_s: float = 30.0
    retries: int = 5  # of a 503/429 (admission control), after its Retry-After
    catch_up_timeout_s: float = 900.0
    ready_timeout_s: float = 180.0
    keep_topics: bool = False


class RecordingRecommender:
    """A list recommender that keeps what it answered, per user row: the offline lists to compare with.

    Everything else (``candidates``, ``extra``) is the wrapped system's, so the protocol sees the same system.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lists: dict[int, NDArray[np.int32]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def recommend(self, users: NDArray[np.int32], k: int, exclude: sp.csr_matrix) -> NDArray[np.int32]:
        lists = np.asarray(self.inner.recommend(users, k, exclude), np.int32)
        for user, row in zip(np.asarray(users).tolist(), lists, strict=True):
            self.lists[int(user)] = row.copy()
        return lists


class AnsweredLists:
    """The served answers as a list recommender, so the protocol's own code scores them."""

    def __init__(self, lists: dict[int, NDArray[np.int32]]) -> None:
        self.lists = lists

    def recommend(self, users: NDArray[np.int32], k: int, exclude: sp.csr_matrix) -> NDArray[np.int32]:
        out = np.full((len(users), k), -1, np.int32)
        for i, user in enumerate(np.asarray(users).tolist()):
            row = self.lists.get(int(user), np.zeros(0, np.int32))[:k]
            out[i, : len(row)] = row
        return out


@dataclass
class Answers:
    """What the server answered: item rows per user row, and what went wrong."""

    lists: dict[int, NDArray[np.int32]] = field(default_factory=dict)
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count
    retried: int = 0
    degraded: int = 0
    degraded_reasons: Counter[str] = field(default_factory=Counter)
    unknown_items: int = 0  # ids the offline catalogue does not hold (a title added by the tail)
    latencies_ms: list[float] = field(default_factory=list)


# --- the training part as a log folder and a bundle ----------------------------------------------------------

def training_lines(data: Path, split: Split) -> list[bytes]:
    """The lines of ``data/events.jsonl`` that ``split`` trains on, in file order.

    A row of the log is a line ``load_log`` kept (decodable, an interaction's title in the catalogue), in time
    order (a stable sort of the file order): the same rule here maps each line to its row, checked by count.
    """
    index = split.log.catalog.index
    kept: list[bytes] = []
    ts: list[int] = []
    for line, event in read_events(data / "events.jsonl"):
        if event is None:
            continue
        item_id = getattr(event, "item_id", None)  # impressions and profile upserts name no single title
        if item_id is not None and item_id not in index:
            continue
        kept.append(line)
        ts.append(event.ts)
    if len(kept) != split.log.n_events:
        raise ValueError(f"{data}: {len(kept)} lines map to log rows, the log holds {split.log.n_events}")
    order = np.argsort(np.asarray(ts, np.int64), kind="stable")
    row_of_line = np.empty_like(order)
    row_of_line[order] = np.arange(len(order))
    trains = split.train_mask[row_of_line]
    return [line for line, keep in zip(kept, trains.tolist(), strict=True) if keep]


def write_training_log(data: Path, split: Split, out: Path) -> Path:
    """``out`` as a log folder: the whole catalogue and the training lines of ``split``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalog.jsonl").write_bytes((data / "catalog.jsonl").read_bytes())
    lines = training_lines(data, split)
    (out / "events.jsonl").write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    return out


def publish_model(model: TwoStageModel, train: EventLog, train_dir: Path, artifacts: Path) -> Path:
    """Publish an already fitted model as a bundle (what ``models.train.train_bundle`` writes after its fit)."""
    files = [train_dir / "catalog.jsonl", train_dir / "events.jsonl"]
    with BundleWriter(artifacts, fingerprint_files(files), FEATURE_SPEC_VERSION,
                      params=dataclasses.asdict(model.config), metrics=model.metrics,
                      extra={"feature_layout": model.layout.to_dict()}) as writer:
        write_bundle(writer, train, model)
        return writer.publish()


# --- the server and the client --------------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_settings(settings: Settings, artifacts: Path, config: ServedConfig) -> Settings:
    """The run's server: its bundle, generous stage budgets, exact point-in-time reads (each request has its
    own clock, so nothing read for one may be reused for another) and an admission limit that admits the
    client's concurrency (shedding is a latency figure, measured by ``streamrec bench``)."""
    return settings.model_copy(update={
        "artifacts": artifacts, "serving_candidates_timeout_ms": config.stage_timeout_ms,
        "serving_features_timeout_ms": config.stage_timeout_ms, "serving_item_state_ttl_s": 0.0,
        "serving_shared_reads_ttl_s": 0.0, "auth_reads": False,
        "serving_admission_initial_limit": max(settings.serving_admission_initial_limit, config.concurrency),
        "serving_admission_min_limit": max(settings.serving_admission_min_limit, config.concurrency),
        "serving_admission_max_limit": max(settings.serving_admission_max_limit, config.concurrency),
    })


def start_server(settings: Settings, artifacts: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve", "--artifacts", str(artifacts),
                                 "--host", "127.0.0.1", "--port", str(port)], env=settings_env(settings),
                                stdout=out, stderr=subprocess.STDOUT)


async def wait_ready(base_url: str, server: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Until ``/readyz`` answers 200 (the bundle loaded, Redis and the item state read)."""
    started = time.monotonic()
    last: Any = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < timeout_s:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}:\n{tail(str(log_path))}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{base_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    last = await response.json(content_type=None)
                    if response.status == 200:
                        return
            await asyncio.sleep(0.25)
    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s (last /readyz: {last}):\n"
                       f"{tail(str(log_path))}")


def query_of(request: RecommendRequest) -> dict[str, str]:
    """The HTTP query of a pipeline request: k, its clock and its context (only the parts it has)."""
    params = {"k": str(request.k)}
    for name, value in (("now", request.now_ms), ("device", request.device), ("country", request.country),
                        ("hour", request.hour)):
        if value is not None:
            params[name] = str(value)
    return params


async def ask_all(base_url: str, requests: list[tuple[int, RecommendRequest]], item_rows: dict[str, int],
                  config: ServedConfig) -> Answers:
    """Every request through the API at ``config.concurrency`` in flight; the answers as item rows."""
    answers = Answers()
    gate = asyncio.Semaphore(config.concurrency)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)

    async def one(session: aiohttp.ClientSession, user: int, request: RecommendRequest) -> None:
        url = f"{base_url}/v1/recommendations/{quote(request.user_id, safe='')}"
        async with gate:
            for attempt in range(config.retries + 1):
                started = time.perf_counter()
                try:
                    async with session.get(url, params=query_of(request)) as response:
                        body = await response.json(content_type=None)
                        status, retry_after = response.status, response.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                    answers.failed += 1
                    answers.failures[type(error).__name__] += 1
                    return
                if status in (429, 503) and attempt < config.retries:
                    answers.retried += 1
                    await asyncio.sleep(min(float(retry_after or 0.2), 2.0))
                    continue
                if status != 200:
                    answers.failed += 1
                    answers.failures[f"http {status}"] += 1
                    return
                answers.latencies_ms.append((time.perf_counter() - started) * 1000)
                break
        if body.get("degraded"):
            answers.degraded += 1
            answers.degraded_reasons.update(body.get("degraded_reasons") or ["unknown"])
        rows = [item_rows.get(item["item_id"], -1) for item in body.get("items", ())]
        answers.unknown_items += sum(r < 0 for r in rows)
        answers.lists[user] = np.asarray([r for r in rows if r >= 0], np.int32)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, user, request) for user, request in requests))
    return answers


# --- the run --------------------------------------------------------------------------------------------------

def agreement(offline: dict[int, NDArray[np.int32]], served: dict[int, NDArray[np.int32]],
              users: NDArray[np.int32], k: int = 10) -> dict[str, float | int]:
    """How alike the served and the offline lists are, over ``users``: the share whose top ``k`` (and whole
    list) is the same sequence, and the mean share of the offline top ``k`` found in the served top ``k``."""
    same_k = same_all = 0
    overlap = 0.0
    for user in np.asarray(users).tolist():
        a = offline.get(user, np.zeros(0, np.int32))
        a = a[a >= 0]
        b = served.get(user, np.zeros(0, np.int32))
        same_k += int(np.array_equal(a[:k], b[:k]))
        same_all += int(np.array_equal(a, b))
        overlap += len(set(a[:k].tolist()) & set(b[:k].tolist())) / max(1, min(k, len(a)))
    n = max(1, len(users))
    return {f"exact@{k}": same_k / n, "exact_list": same_all / n, f"overlap@{k}": overlap / n,
            "users": len(users)}


async def live_model(settings: Settings, artifacts: Path, timeout_s: float) -> RecommenderModel:
    """The bundle as a server holds it once its tail caught up: with the catalogue records and the item vectors the
    workers published (``item-vectors``: titles learned online) applied, by the server's own tail."""
    model = RecommenderModel.load(artifacts)

    def apply(events: Any, vectors: Any) -> None:
        model.apply_catalog(events)
        model.apply_vectors(vectors)

    tail = LiveTail(settings, apply)
    tail.start()
    try:
        started = time.monotonic()
        while not (tail.caught_up and tail.lag == 0):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the tail did not catch up within {timeout_s:.0f} s (lag {tail.lag}, "
                                   f"error {tail.error})")
            await asyncio.sleep(0.05)
    finally:
        await tail.close()
    return model


async def pipeline_on_state(redis: Any, model: RecommenderModel, requests: list[tuple[int, RecommendRequest]],
                            item_rows: dict[str, int], blas_threads: int = 1) -> dict[int, NDArray[np.int32]]:
    """The recommend pipeline run here, on the model and the online state the server read: what the server must
    answer, item for item (a server that adds, drops or changes a step answers otherwise). The reads are the
    online-state layer's, with the server's arguments; nothing is cached between requests (each has its clock).

    With the server's BLAS threads (``blas_threads``): a product summed by more threads rounds differently in
    its last bits, enough to swap two near-tied titles deep in a list."""
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return await _pipeline_on_state(redis, model, requests, item_rows)


async def _pipeline_on_state(redis: Any, model: RecommenderModel, requests: list[tuple[int, RecommendRequest]],
                             item_rows: dict[str, int]) -> dict[int, NDArray[np.int32]]:
    cfg = model.config.candidates
    keys = DEFAULT_KEYS
    reader = FeatureReader(RedisFeatureStore(redis, model.static, keys=keys), 0)
    window = ServingOptions().trending_window
    out: dict[int, NDArray[np.int32]] = {}
    for user, request in requests:
        now = int(request.now_ms or 0)
        online = await read_online_state(redis, keys, request.user_id,
                                         RequestScopes(request.country, request.device, request.hour), now,
                                         trending_k=cfg.popular, new_k=2 * cfg.new_releases, window=window,
                                         space=model.space, dim=model.dim, shared=SharedReads(0))
        retrieved = retrieve(model, request, online.snapshot(), now)
        state = await reader.read(request.user_id, retrieved.item_ids(model), now, user=online.features_user)
        ranked = rank_and_answer(model, request, retrieved, RankingState(state.user, state.items, state.static), now,
                                 model.config.post)
        ids = [item["item_id"] for item in ranked.answer.items(model)[: request.k]]
        out[user] = np.asarray([item_rows.get(i, -1) for i in ids], np.int32)
    return out


async def _serve_and_ask(train_dir: Path, artifacts: Path, requests: list[tuple[int, RecommendRequest]],
                         item_rows: dict[str, int], settings: Settings, config: ServedConfig, work: Path,
                         say: Callable[[str], None]
                         ) -> tuple[Answers, dict[int, NDArray[np.int32]], dict[str, float]]:
    if settings.redis_cluster:  # the server's key prefix is not a setting: the run needs a database of its own
        raise ValueError("eval --served runs on a single-node Redis (a database of its own), not a cluster")
    run_settings_ = run_settings(settings, uuid.uuid4().hex[:8], config.db).model_copy(
        update={"artifacts": artifacts})
    await ensure_topics(run_settings_)
    redis = redis_client(run_settings_)
    worker: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    seconds: dict[str, float] = {}
    try:
        await clear_arm(redis, DEFAULT_KEYS, cluster=False)
        started = time.perf_counter()
        say(f"producing the training log into Kafka (topics {run_settings_.topic_interactions}, ...)")
        await replay_log(train_dir, run_settings_, ReplayOptions())
        ends = await end_offsets(run_settings_)
        seconds["replay"] = time.perf_counter() - started
        say(f"a worker applies {sum(ends.values()):,} records to Redis db {config.db}")
        worker = _start_worker(run_settings_, artifacts, work / "worker.log")
        seconds["apply"] = await wait_applied(redis, ends, config.catch_up_timeout_s, worker)
        terminate(worker)  # everything is applied: its cores go to the server
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        server_log = work / "server.log"
        server = start_server(server_settings(run_settings_, artifacts, config), artifacts, port, server_log)
        await wait_ready(base_url, server, server_log, config.ready_timeout_s)
        say(f"asking {base_url} for {len(requests):,} users, {config.concurrency} at a time")
        started = time.perf_counter()
        answers = await ask_all(base_url, requests, item_rows, config)
        seconds["ask"] = time.perf_counter() - started
        started = time.perf_counter()
        say("the pipeline in process on the same state, for parity")
        model = await live_model(run_settings_, artifacts, config.ready_timeout_s)
        same_state = await pipeline_on_state(redis, model, requests, item_rows, run_settings_.blas_threads)
        seconds["parity"] = time.perf_counter() - started
        return answers, same_state, seconds
    finally:
        for child in (server, worker):
            if child is not None:
                terminate(child)
        await redis.aclose()
        if not config.keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(run_settings_)


def eval_served(data: Path, split: Split, system: Any, offline_lists: dict[int, NDArray[np.int32]],
                settings: Settings, work: Path, ks: tuple[int, ...] = (10, 20), config: ServedConfig | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The served row (metrics as the offline protocol computes them, plus requests, failures, agreement) and its
    curves. ``system`` is the fitted offline two-stage system (``TwoStageSystem``), ``offline_lists`` its lists
    for the split's test users (item rows by user row)."""
    config = config or ServedConfig()
    say = progress or (lambda message: log.info("eval_served.stage", stage=message))
    started = time.perf_counter()
    model: TwoStageModel = system.model
    train_dir = write_training_log(data, split, work / "train")
    artifacts = work / "artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)  # the run's own folder: an earlier run's bundles serve no one
    bundle = publish_model(model, split.train, train_dir, artifacts)
    say(f"bundle {bundle.name} published from the offline fit")
    k = max(config.k, *ks)
    requests = system._requests(split.test_users, k)  # the offline system's own requests: its clock and context
    item_rows = split.log.catalog.index
    answers, same_state, seconds = asyncio.run(_serve_and_ask(train_dir, artifacts, requests, item_rows, settings,
                                                              config, work, say))
    served = AnsweredLists(answers.lists)
    metrics, curves = evaluate_system(served, split, ks)
    lists = recommend_lists(served, split, max(MAX_K, *ks))
    latency = np.asarray(answers.latencies_ms or [0.0])
    row: dict[str, Any] = {
        **metrics, "top_title": top_title(lists, split), "seconds": time.perf_counter() - started,
        "requests": len(requests), "failed": answers.failed, "failures": dict(answers.failures),
        "retried": answers.retried, "degraded": answers.degraded, "degraded_reasons": dict(answers.degraded_reasons),
        "unknown_items": answers.unknown_items, "bundle": bundle.name,
        "latency_ms": {"p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99))},
        "stages_seconds": {name: round(value, 1) for name, value in seconds.items()},
    }
    row["agreement"] = agree = agreement(offline_lists, answers.lists, split.test_users)
    row["parity"] = agreement(same_state, answers.lists, split.test_users)
    # The two agreement figures again as plain scalars, so the printed table shows them beside the metrics.
    row["same_top10_share"], row["top10_overlap"] = agree["exact@10"], agree["overlap@10"]
    return row, curves
