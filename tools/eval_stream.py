"""`streamrec eval-stream`: prequential ("test, then train") evaluation through the real system.

Protocol:

1. **Split.** The log (``catalog.jsonl`` + ``events.jsonl``, merged in time order) is cut after the
   first ``train_share`` of its interaction records. The prefix is written as a training folder
   (titles released later are not in its catalogue) and a bundle is trained on it.
2. **Warm state.** The prefix is produced into Kafka (topics of its own, named after the run) and one
   worker applies it to Redis database ``online_db``; that state is then copied to ``frozen_db``. Both
   arms so start from the same state: the bundle plus what the workers knew at the cut. On Redis Cluster
   (one database) the arms are two key prefixes of the run instead (:func:`arm_keys`), copied key by key.
3. **Replay with probes.** The rest is produced in order. Just before a sampled target is produced,
   both arms are asked "what would you recommend this user now, in this context?" and the answer is
   scored against the title the user is about to engage with. Point in time: before a probe, every
   earlier record of that user is produced *and applied* (the worker's offsets in Redis cover them);
   records of other users are flushed at least every ``window`` records, so global state (trending,
   new titles) is at most that far behind. After a flush holding catalog records, the run waits until
   the online index has applied what the worker published on ``item-vectors``.

   - ``online``: the worker keeps running on ``online_db`` (user vectors, session, trending, ranking
     features, item vectors of new titles), and its service tails ``item-vectors``.
   - ``frozen``: the same bundle on ``frozen_db``, which nothing writes after the cut, and a service
     that does not tail ``item-vectors``: nothing learned or updated after training.

   Both arms run :class:`serving.service.RecommendationService`, the code behind the HTTP API, in this
   process (no HTTP: it would add the same latency to both and nothing to the quality).
4. **Targets.** A target is an engagement (play, complete, add to list, or a rating >= 4) with a title
   the user never interacted with before (in the prefix or earlier in the rest): a re-watch cannot be
   a hit when watched titles are excluded, in either arm. ``samples`` of them are drawn uniformly.

Metrics per arm: ``hr@10``, ``hr@20`` (the title in the top 10 / 20), ``ndcg@10`` (one relevant
title: ``1 / log2(rank + 2)``), ``n``; and per time window of the rest (equal numbers of targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from foundation.child_env import settings_env
from foundation.kafka_io import KeyedBatchSender, make_producer
from foundation.logs import get_logger
from foundation.redis_io import redis_client
from foundation.settings import Settings
from foundation.topics import delete_topics, ensure_topics
from models.config import TwoStageConfig
from models.recommend.pipeline import RecommendRequest
from models.train import train_bundle
from online_state.keys import DEFAULT_KEYS, DEFAULT_PREFIX, KeyLayout
from schemas.events import AddToList, Complete, Event, Play, Rating
from serving.options import options_from_settings
from serving.service import RecommendationService
from streams.rebuild import delete_state
from tools.bundle_reuse import bundle_trained_on
from tools.catch_up import end_offsets, wait_applied
from tools.replay import LogRecord, RejectsFile, default_rejects_path, log_files, merged_records
from tools.stack.process import terminate

log = get_logger(__name__)

ARMS = ("online", "frozen")
# Kinds whose item counts as "seen" for the target rule (impressions show a title; they are not a choice).
_ITEM_KINDS = frozenset({"play", "progress", "complete", "rating", "click", "skip", "add_to_list"})


@dataclass(frozen=True)
class StreamEvalConfig:
    train_share: float = 0.75
    samples: int = 1500
    window: int = 500
    k: int = 20
    seed: int = 0
    series_windows: int = 10
    online_db: int = 1
    frozen_db: int = 2
    catch_up_timeout_s: float = 180.0
    # Stage budgets of the arms' services: generous, because this measures quality, and a stage
    # timed out by a busy machine (the worker and the producer share its cores) is not a quality.
    stage_timeout_ms: float = 2000.0
    rank_users: int | None = None  # training knobs (None: TwoStageConfig's defaults); --quick lowers them
    ranker_epochs: int | None = None
    reuse_bundle: bool = True  # a bundle in ``artifacts`` trained on the same prefix is used as is
    keep_topics: bool = False


@dataclass
class Split:
    prefix: list[LogRecord]
    rest: list[LogRecord]
    targets: list[int]  # indices into ``rest``
    train_dir: Path

    @property
    def cut_ts(self) -> int:
        return self.rest[0].ts if self.rest else 0


@dataclass
class Probe:
    rest_index: int
    ts: int
    user_id: str
    item_id: str
    context: dict[str, Any] = field(default_factory=dict)  # the target event's device, country, hour; its time
    ranks: dict[str, int] = field(default_factory=dict)  # arm -> rank (0-based; -1 = not in the top k)
    degraded: dict[str, list[str]] = field(default_factory=dict)  # arm -> reasons ([] = a full answer)


def kind_of(event: Event) -> str:
    """The event's ``type`` tag (msgspec keeps it in the struct's config, not on the instance)."""
    return str(event.__struct_config__.tag)


def is_target_kind(event: Event) -> bool:
    if isinstance(event, Play | Complete | AddToList):
        return True
    return isinstance(event, Rating) and event.value >= 4.0


def read_records(data: Path) -> list[LogRecord]:
    rejects = RejectsFile(default_rejects_path(data))
    try:
        return list(merged_records(log_files(data), rejects))
    finally:
        rejects.close()


def split_records(records: list[LogRecord], train_share: float, samples: int, seed: int,
                  train_dir: Path) -> Split:
    """Cut after ``train_share`` of the interaction records; write the prefix; draw the targets."""
    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must be in (0, 1), got {train_share}")
    interaction_rows = [i for i, r in enumerate(records) if not r.is_catalog]
    if len(interaction_rows) < 10:
        raise ValueError("the log holds fewer than 10 interaction records")
    cut = interaction_rows[int(len(interaction_rows) * train_share)]
    prefix, rest = records[:cut], records[cut:]
    train_dir.mkdir(parents=True, exist_ok=True)
    with (train_dir / "catalog.jsonl").open("wb") as cat, (train_dir / "events.jsonl").open("wb") as ev:
        for record in prefix:
            (cat if record.is_catalog else ev).write(record.raw + b"\n")
    seen: set[tuple[str, str]] = set()
    for record in prefix:
        event = record.event
        if kind_of(event) in _ITEM_KINDS:
            seen.add((event.user_id, event.item_id))  # type: ignore[union-attr]
    eligible: list[int] = []
    for index, record in enumerate(rest):
        event = record.event
        if kind_of(event) not in _ITEM_KINDS:
            continue
        pair = (event.user_id, event.item_id)  # type: ignore[union-attr]
        if pair not in seen and is_target_kind(event):
            eligible.append(index)
        seen.add(pair)
    rng = np.random.default_rng(seed)
    chosen = eligible if len(eligible) <= samples else sorted(rng.choice(eligible, samples, replace=False).tolist())
    return Split(prefix, rest, [int(i) for i in chosen], train_dir)


# --- metrics -------------------------------------------------------------------------------------

def arm_metrics(ranks: Sequence[int]) -> dict[str, float | int]:
    """hr@10, hr@20, ndcg@10 of single-target probes from their ranks (-1 = missed)."""
    r = np.asarray(ranks, np.int64)
    n = len(r)
    if n == 0:
        return {"hr@10": 0.0, "hr@20": 0.0, "ndcg@10": 0.0, "n": 0}
    hit = r >= 0
    gain = np.where(hit & (r < 10), 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)
    return {"hr@10": float(np.mean(hit & (r < 10))), "hr@20": float(np.mean(hit & (r < 20))),
            "ndcg@10": float(gain.mean()), "n": int(n)}


def series(probes: Sequence[Probe], n_windows: int) -> dict[str, Any]:
    """Per-arm metrics over consecutive time windows holding equal numbers of probes."""
    ordered = sorted(probes, key=lambda p: (p.ts, p.rest_index))
    chunks = [list(c) for c in np.array_split(np.arange(len(ordered)), max(1, min(n_windows, len(ordered))))]
    out: dict[str, Any] = {"t_start": [], "t_end": [], "n": [], **{arm: {"hr@10": [], "hr@20": [], "ndcg@10": []}
                                                                   for arm in ARMS}}
    for chunk in chunks:
        if not chunk:
            continue
        part = [ordered[i] for i in chunk]
        out["t_start"].append(part[0].ts)
        out["t_end"].append(part[-1].ts)
        out["n"].append(len(part))
        for arm in ARMS:
            m = arm_metrics([p.ranks[arm] for p in part])
            for name in ("hr@10", "hr@20", "ndcg@10"):
                out[arm][name].append(m[name])
    return out


def relative_gain(online: dict[str, Any], frozen: dict[str, Any]) -> dict[str, float | None]:
    return {name: (online[name] / frozen[name] - 1.0) if frozen[name] else None
            for name in ("hr@10", "hr@20", "ndcg@10")}


def plot_series(report: dict[str, Any], path: Path) -> Path:
    # Lazy: matplotlib is optional (the train extra) and slow to import; only drawing needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["series"]
    x = np.arange(1, len(s["n"]) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name in zip(axes, ("hr@10", "hr@20", "ndcg@10"), strict=True):
        for arm, style in (("online", "-o"), ("frozen", "--s")):
            ax.plot(x, s[arm][name], style, label=f"{arm} ({report['arms'][arm][name]:.3f})")
        ax.set_title(name)
        ax.set_xlabel("window of the replayed part (equal probes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"eval-stream: {report['data']} ({report['arms']['online']['n']} probes per arm)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the run -------------------------------------------------------------------------------------

def run_settings(base: Settings, run_id: str, db: int) -> Settings:
    """The run's own topics (so a run neither reads nor pollutes the deployment's) on Redis ``db``; on Redis
    Cluster (database 0 only) the Redis URL stays: the arms are apart by key prefix there (:func:`arm_keys`)."""
    topics = base.with_topic_prefix(f"eval-{run_id}")
    return topics if base.redis_cluster else topics.with_redis_db(db)


def arm_keys(settings: Settings, run_id: str, arm: str) -> KeyLayout:
    """The key layout of an arm's state: the default one in the arm's own database on one redis-server, and on
    Redis Cluster, which has one database, a prefix of the run and arm (``sr-eval-<run>-online``)."""
    return KeyLayout(f"{DEFAULT_PREFIX}-eval-{run_id}-{arm}") if settings.redis_cluster else DEFAULT_KEYS


async def clear_arm(redis: Any, keys: KeyLayout, cluster: bool) -> None:
    """Start an arm empty: ``FLUSHDB`` of its database; on a cluster, every key under its prefix (every master)."""
    if cluster:
        await delete_state(redis, keys)
    else:
        await redis.flushdb()


def _bundle_for(train_dir: Path, artifacts: Path, config: StreamEvalConfig, say: Callable[[str], None]) -> str:
    bundle = bundle_trained_on(train_dir, artifacts) if config.reuse_bundle else None
    if bundle is not None:
        say(f"reusing bundle {bundle.version} (trained on this prefix)")
        return bundle.version
    say("training the bundle on the prefix")
    knobs = {name: value for name in ("rank_users", "ranker_epochs")
             if (value := getattr(config, name)) is not None}
    path, _ = train_bundle(train_dir, artifacts, TwoStageConfig(seed=config.seed, **knobs), progress=say)
    return path.name


class _Publisher:
    """One idempotent producer for the run that knows where every partition ends after what it sent
    (the broker's end offsets at the start plus its own records: no offset query per flush)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ends: dict[tuple[str, int], int] = {}
        self._producer: Any = None
        self._sender: Any = None

    async def start(self) -> None:
        self._producer = make_producer(self.settings, enable_idempotence=True, linger_ms=2)
        await self._producer.start()
        self._sender = KeyedBatchSender(self._producer)
        self.ends = await end_offsets(self.settings)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, records: Sequence[LogRecord]) -> None:
        sender = self._sender
        for record in records:
            topic, raw_key = record.destination(self.settings)
            await sender.add(topic, raw_key, record.raw)
            slot = (topic, await sender._partition(topic, raw_key))  # cached: the partition add() used
            self.ends[slot] = self.ends.get(slot, 0) + 1
        await sender.flush()


async def copy_db(redis: Any, target_db: int, batch: int = 2000) -> int:
    """Copy every key (values and TTLs) of ``redis``'s database into ``target_db`` (Redis >= 6.2 COPY)."""
    copied = 0
    pipe = redis.pipeline(transaction=False)
    async for key in redis.scan_iter(count=batch):
        pipe.copy(key, key, destination_db=target_db, replace=True)
        if len(pipe) >= batch:
            copied += sum(bool(x) for x in await pipe.execute())
    if len(pipe):
        copied += sum(bool(x) for x in await pipe.execute())
    return copied


async def copy_prefix(redis: Any, source: KeyLayout, target: KeyLayout, batch: int = 2000) -> int:
    """Copy every key under ``source``'s prefix (values and TTLs) to the same name under ``target``'s: the
    frozen arm's snapshot on Redis Cluster. ``DUMP`` and ``RESTORE`` rather than ``COPY``: a key and its copy
    under another prefix are in different slots (item and trending keys), which ``COPY`` refuses there; the
    pipelines are split by master by the cluster client."""
    copied = 0
    strip = len(source.prefix)
    names: list[Any] = []

    async def flush() -> int:
        read = redis.pipeline(transaction=False)
        for name in names:
            read.dump(name)
            read.pttl(name)
        replies = await read.execute()
        write = redis.pipeline(transaction=False)
        n = 0
        for i, name in enumerate(names):
            value, ttl = replies[2 * i], replies[2 * i + 1]
            if value is None:  # expired or deleted since the scan
                continue
            text = name.decode() if isinstance(name, bytes) else name
            write.restore(target.prefix + text[strip:], max(int(ttl), 0), value, replace=True)
            n += 1
        if n:
            await write.execute()
        return n

    async for name in redis.scan_iter(match=source.everything, count=batch):
        names.append(name)
        if len(names) >= batch:
            copied += await flush()
            names = []
    if names:
        copied += await flush()
    return copied


def _start_worker(settings: Settings, artifacts: Path, log_path: Path,
                  keys: KeyLayout = DEFAULT_KEYS) -> subprocess.Popen[bytes]:
    env = settings_env(settings.model_copy(update={"artifacts": artifacts}))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamrec.commands.worker", "--artifacts", str(artifacts),
                                 "--metrics-port", "0", "--prefix", keys.prefix], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _rank(answer: dict[str, Any], item_id: str) -> int:
    for rank, item in enumerate(answer.get("items", ())):
        if item.get("item_id") == item_id:
            return rank
    return -1


async def _ask(services: dict[str, Any], probes: list[Probe], k: int) -> None:
    for probe in probes:
        request = RecommendRequest(user_id=probe.user_id, request_id=f"eval-{probe.rest_index}", k=k,
                                   **probe.context)
        for arm, service in services.items():
            answer = await service.recommend(request)
            probe.ranks[arm] = _rank(answer, probe.item_id)
            probe.degraded[arm] = list(answer.get("degraded_reasons") or (["unknown"] if answer.get("degraded")
                                                                           else []))


def eval_stream(data: Path, artifacts: Path, out: Path, settings: Settings,
                config: StreamEvalConfig | None = None,
                progress: Callable[[str], None] | None = None,
                advance: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the protocol of the module docstring; writes ``out`` (JSON) and ``out``'s PNG; returns the report."""
    config = config or StreamEvalConfig()
    say = progress or (lambda message: log.info("eval_stream.stage", stage=message))
    started = time.perf_counter()
    work = out.parent / f"{out.stem}-work"
    say(f"reading {data}")
    split = split_records(read_records(data), config.train_share, config.samples, config.seed, work / "train")
    say(f"prefix {len(split.prefix):,} records, rest {len(split.rest):,}, {len(split.targets):,} probes")
    version = _bundle_for(split.train_dir, artifacts, config, say)
    probes, wait_total = asyncio.run(_replay_with_probes(split, artifacts, settings, config, say, advance,
                                                         work / "worker.log"))
    arms = {arm: arm_metrics([p.ranks[arm] for p in probes]) for arm in ARMS}
    report: dict[str, Any] = {
        "data": str(data), "bundle": version, "config": asdict(config), "cut_ts": split.cut_ts,
        "prefix_records": len(split.prefix), "rest_records": len(split.rest),
        "arms": arms, "relative": relative_gain(arms["online"], arms["frozen"]),
        "degraded": {arm: int(sum(bool(p.degraded.get(arm)) for p in probes)) for arm in ARMS},
        "degraded_reasons": {arm: dict(Counter(r for p in probes for r in p.degraded.get(arm, ()))) for arm in ARMS},
        "series": series(probes, config.series_windows),
        "seconds": time.perf_counter() - started, "worker_wait_seconds": wait_total,
    }
    with contextlib.suppress(ImportError):  # matplotlib comes with the train extra
        report["plot"] = str(plot_series(report, out.with_suffix(".png")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return report


def _probes(split: Split) -> dict[int, Probe]:
    """One probe per target, keyed by its index in ``split.rest``, with the target's request context."""
    probes: dict[int, Probe] = {}
    for index in split.targets:
        record = split.rest[index]
        event = record.event
        ctx = getattr(event, "context", None)
        # Asked as of just before the target (event time): see RecommendRequest.now_ms.
        context = {"device": getattr(ctx, "device", None), "country": getattr(ctx, "country", None),
                   "hour": getattr(ctx, "local_hour", None), "now_ms": record.ts - 1}
        probes[index] = Probe(index, record.ts, event.user_id, event.item_id, context)  # type: ignore[union-attr]
    return probes


async def _replay_with_probes(split: Split, artifacts: Path, settings: Settings, config: StreamEvalConfig,
                              say: Callable[[str], None], advance: Callable[[int, int], None] | None,
                              worker_log: Path) -> tuple[list[Probe], float]:
    run_id = uuid.uuid4().hex[:8]
    online_settings = run_settings(settings, run_id, config.online_db)
    frozen_settings = run_settings(settings, run_id, config.frozen_db)
    cluster = settings.redis_cluster
    online_keys, frozen_keys = arm_keys(settings, run_id, "online"), arm_keys(settings, run_id, "frozen")
    await ensure_topics(online_settings)
    online_redis = redis_client(online_settings)
    frozen_redis = redis_client(frozen_settings)
    worker: subprocess.Popen[bytes] | None = None
    publisher = _Publisher(online_settings)
    services: dict[str, Any] = {}
    probes: list[Probe] = []
    wait_total = 0.0
    try:
        await clear_arm(online_redis, online_keys, cluster)
        await clear_arm(frozen_redis, frozen_keys, cluster)
        say("producing the prefix and applying it with a worker")
        await publisher.start()
        await publisher.send(split.prefix)
        worker = _start_worker(online_settings, artifacts, worker_log, online_keys)
        await wait_applied(online_redis, publisher.ends, config.catch_up_timeout_s, worker, keys=online_keys)
        copied = (await copy_prefix(online_redis, online_keys, frozen_keys) if cluster
                  else await copy_db(online_redis, config.frozen_db))
        say(f"state at the cut copied to the frozen arm ({copied:,} keys)")
        budgets = options_from_settings(online_settings)
        budgets = dataclasses.replace(budgets, candidates_timeout_ms=config.stage_timeout_ms,
                                      features_timeout_ms=config.stage_timeout_ms,
                                      redis_timeout_s=config.stage_timeout_ms / 1000,
                                      # exact point-in-time rows, trending and releases for every probe
                                      item_state_ttl_s=0.0, shared_reads_ttl_s=0.0)
        services["online"] = await RecommendationService.start(
            online_settings, artifacts, tail_index=True, watch_bundle=False,
            options=dataclasses.replace(budgets, redis_prefix=online_keys.prefix))
        services["frozen"] = await RecommendationService.start(
            frozen_settings, artifacts, tail_index=False, watch_bundle=False,
            options=dataclasses.replace(budgets, redis_prefix=frozen_keys.prefix))
        await _wait_ready(services["online"], config.catch_up_timeout_s)
        say(f"replaying the rest ({len(split.rest):,} records) with {len(split.targets):,} probes")
        pending = _probes(split)
        rest = split.rest
        flushed = 0  # rest[:flushed] is produced and applied
        users_since: set[str] = set()  # users with records in rest[flushed:i]
        catalog_since = False

        async def flush(end: int) -> None:
            nonlocal flushed, wait_total, catalog_since
            if end <= flushed:
                return
            await publisher.send(rest[flushed:end])
            wait_total += await wait_applied(online_redis, publisher.ends, config.catch_up_timeout_s, worker,
                                             keys=online_keys)
            if catalog_since:  # new titles: their vectors reach the online index through item-vectors
                await _wait_index(services["online"], 5.0)
            flushed, catalog_since = end, False
            users_since.clear()
            if advance:
                advance(end, len(rest))

        for i, record in enumerate(rest):
            probe = pending.get(i)
            if probe is not None:
                if probe.user_id in users_since:  # the user's own last records must be applied first
                    await flush(i)
                await _ask(services, [probe], config.k)
                probes.append(probe)
            if record.is_catalog:
                catalog_since = True
            else:
                users_since.add(record.event.user_id)  # type: ignore[union-attr]
            if i + 1 - flushed >= config.window:
                await flush(i + 1)
        await flush(len(rest))
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.close()
        if worker is not None:
            terminate(worker)
        await publisher.stop()
        if cluster:  # the arms' keys share the deployment's database there: leave nothing behind
            with contextlib.suppress(Exception):
                for keys in (online_keys, frozen_keys):
                    await delete_state(online_redis, keys)
        await online_redis.aclose()
        await frozen_redis.aclose()
        if not config.keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(online_settings)
    return probes, wait_total


async def _wait_index(service: Any, timeout_s: float) -> None:
    """Until the service's index has applied everything on ``item-vectors`` (bounded: a lag is a result)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        state = await service.readiness()
        if not state.get("index", {}).get("lag"):
            return
        await asyncio.sleep(0.02)


async def _wait_ready(service: Any, timeout_s: float) -> None:
    started = time.perf_counter()
    while True:
        state = await service.readiness()
        if state.get("ready"):
            return
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"the online service did not become ready within {timeout_s:.0f} s: {state}")
        await asyncio.sleep(0.1)
