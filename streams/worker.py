"""The stream worker: consumes ``interactions`` and ``catalog``, keeps the online state in Redis.

Runtime (see :mod:`streams.app` for why Faust is only the entry point): one aiokafka consumer in
the group ``streamrec-workers`` (auto-commit off) on both topics, ``getmany`` per round, and each
partition's records handled as ONE batch (:mod:`streams.effects`):

1. ``WATCH sr:offset:{topic}:{partition}`` and ``GET`` it, on a connection held for the batch
   (:mod:`streams.redis_batch`); records at or below it were applied already (a replay after a
   crash) and are skipped;
2. every record is decoded with the topic's decoder; invalid ones become dead letters
   (:mod:`foundation.dead_letters`), produced and acknowledged before step 4 (at least once);
3. every effect's ``read`` and the feature store's user read, in one round trip;
4. one ``MULTI`` with the features' writes (:meth:`RedisFeatureStore.queue_writes`), every effect's
   ``write`` and ``SET`` of the offset; ``EXEC``. Three round trips per batch in all.

Throughput (``benchmarks/bench_worker.py``): the effects queue their writes as one ``FCALL`` per
kind and batch (:mod:`online_state.redis_functions`, loaded at start; ``bulk``) instead of
one command per key: redis-py costs ~20 µs of CPU per command, which was most of the worker's time.
Freshness: the broker holds an empty fetch at most ``fetch_max_wait_ms`` (5 ms; aiokafka's 500 ms
default delayed records of partitions left out of the fetch in flight), and the long-lived tables are
frozen out of the garbage collector after start (its full collections paused the loop).

Exactly once: the state and the offset commit atomically, and the ``WATCH`` fences zombies: a worker
that lost the partition in a rebalance and still commits a batch finds the key changed by the new
owner, its ``EXEC`` is refused and the batch is redone from the new stored offset (so it applies
only records nobody applied). Kafka's committed offsets (``commit`` after ``EXEC``) serve lag
monitoring only: on assignment the position always comes from Redis (stored + 1, or the beginning
when Redis holds nothing, which is also what ``--rebuild`` relies on).

Catalog: every worker follows ALL catalog partitions with a group-less consumer (read to the end
at start-up, then drained before each round) to keep its in-memory :class:`ItemStatic` complete;
the group consumer's catalog partitions are where dead letters and the catalog hooks run (once
per record cluster-wide, at least once across crashes: hooks must be idempotent, e.g. publishing
to a compacted topic keyed by item id). Known gap: an interaction on a title released while the
worker runs may be applied before this worker saw the title's upsert (the two topics are not
ordered), and then counts without genres; a replay with everything already in the log (tests,
``--rebuild``) reads the catalog first and is exact.

Extending (the effect registry): :func:`default_effects` / :func:`default_catalog_hooks` collect,
from every module named in :data:`EFFECT_MODULES` that exists, ``make_effect(ctx: WorkerContext) ->
Effect | None`` and ``make_catalog_hook(ctx) -> CatalogHook | None`` (a hook is called as
``hook(pipe, events, info)`` with the transaction of one owned catalog partition batch: Redis writes
queued on ``pipe`` commit atomically with the offset; anything it awaits happens before the EXEC).
A module that fails to import is skipped; a factory that raises is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from foundation.dead_letters import decode_records, send_dead_letters
from foundation.logs import get_logger
from foundation.settings import Settings
from models.dataset import MATURITY_ORDER
from models.features.state import EventBatch, ItemStatic
from online_state.redis_functions import is_missing_function, load_functions
from schemas.decoder import catalog_decoder, interaction_decoder
from schemas.events import CatalogEvent, InteractionEvent, ItemRemove, ItemUpsert
from streams import metrics
from streams.effects import BatchInfo, Effect, offset_key
from streams.offsets import fresh_records, gap, parse_stored, resume_position
from streams.redis_batch import BatchConnection, recorded

log = get_logger(__name__)

GROUP_ID: Final = "streamrec-workers"
PREFIX: Final = "sr"
EFFECT_MODULES: Final = ("streams.trending", "streams.session", "streams.user_vectors", "streams.item_vectors")

# hook(pipe, events, info): called inside the MULTI of an owned catalog partition's batch (queue Redis
# writes on ``pipe``: they commit with the offset), before EXEC (await external sends there).
CatalogHook = Callable[[Any, Sequence[CatalogEvent], BatchInfo], Awaitable[None] | None]


@dataclass
class WorkerContext:
    """What effect factories may use."""

    settings: Settings
    redis: Any
    static: ItemStatic
    bundle: Any | None = None
    prefix: str = PREFIX
    catalog: Any = None  # the live CatalogTable (grows as titles arrive; read it, never replace it)
    producer: Any = None  # the worker's started idempotent producer (for topics other than Redis)
    # The Redis Functions of online_state.redis_functions are loaded: effects may queue their
    # writes as one FCALL per batch instead of one command per key (what the worker's throughput needs).
    bulk: bool = False


def _discover(attr: str, ctx: WorkerContext, modules: Sequence[str]) -> list[Any]:
    found = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                log.error("worker.effect_import_failed", module=name, error=repr(exc))
            continue
        except Exception as exc:  # a module being written must not stop the features
            log.error("worker.effect_import_failed", module=name, error=repr(exc))
            continue
        factory = getattr(module, attr, None)
        if factory is None:
            continue
        try:
            made = factory(ctx)
        except Exception as exc:  # one broken effect must not stop the features
            log.error("worker.effect_factory_failed", module=name, error=repr(exc))
            continue
        if made is not None:
            found.append(made)
    return found


def default_effects(ctx: WorkerContext, modules: Sequence[str] = EFFECT_MODULES) -> list[Effect]:
    """The effects of every module of ``modules`` that exists and defines ``make_effect``."""
    return _discover("make_effect", ctx, modules)


def default_catalog_hooks(ctx: WorkerContext, modules: Sequence[str] = EFFECT_MODULES) -> list[CatalogHook]:
    return _discover("make_catalog_hook", ctx, modules)


# --------------------------------------------------------------------------------------------------
# The in-memory catalogue


@dataclass
class CatalogTable:
    """Latest metadata per title, in order of first sight (bundle titles first); builds ItemStatic.

    Like :func:`models.dataset.load_catalog`: a removed title keeps its row (its events still need
    its genres), an upsert replaces the metadata but not ``first_seen_ts``. Rows follow the order the
    catalog partitions were read in, which varies; nothing stored depends on a row number.
    """

    item_ids: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    genres: list[list[str]] = field(default_factory=list)
    release_ts: list[int] = field(default_factory=list)
    first_seen_ts: list[int] = field(default_factory=list)
    maturity: list[int] = field(default_factory=list)
    is_original: list[bool] = field(default_factory=list)
    genre_vocab: list[str] = field(default_factory=list)  # the bundle's, in its order
    extra_genres: set[str] = field(default_factory=set)  # genres seen since, sorted after the bundle's
    version: int = 0

    @classmethod
    def from_static(cls, static: ItemStatic, genres: Sequence[Sequence[str]]) -> CatalogTable:
        n = static.n_items
        return cls(
            item_ids=list(static.item_ids), index=dict(static.index), genres=[list(g) for g in genres],
            release_ts=static.release_ts[:n].tolist(), first_seen_ts=static.first_seen_ts[:n].tolist(),
            maturity=static.maturity[:n].tolist(), is_original=static.is_original[:n].tolist(),
            genre_vocab=list(static.genre_vocab),
        )

    def apply(self, events: Sequence[CatalogEvent]) -> int:
        """Apply catalog events; returns how many changed the table."""
        maturity_pos = {m: i for i, m in enumerate(MATURITY_ORDER)}
        known_genres = set(self.genre_vocab) | self.extra_genres
        changed = 0
        for event in events:
            if isinstance(event, ItemRemove) or not isinstance(event, ItemUpsert):
                continue
            row = self.index.get(event.item_id)
            if row is None:
                row = self.index[event.item_id] = len(self.item_ids)
                self.item_ids.append(event.item_id)
                self.genres.append([])
                self.release_ts.append(0)
                self.first_seen_ts.append(event.ts)
                self.maturity.append(0)
                self.is_original.append(False)
            self.genres[row] = list(event.genres)
            self.release_ts[row] = event.release_ts
            self.maturity[row] = maturity_pos[event.maturity_rating]
            self.is_original[row] = event.is_original
            new_genres = [g for g in event.genres if g not in known_genres]
            if new_genres:
                known_genres.update(new_genres)
                self.extra_genres.update(new_genres)
            changed += 1
        if changed:
            self.version += 1
        return changed

    def static(self) -> ItemStatic:
        return ItemStatic.build(
            self.item_ids, self.genres, np.array(self.release_ts, np.int64), np.array(self.first_seen_ts, np.int64),
            np.array(self.maturity, np.int8), np.array(self.is_original, np.bool_), self.vocab(),
        )

    def vocab(self) -> list[str]:
        """Bundle genres, then the others sorted: the same list whatever order the catalog partitions
        were read in (stored genre sums are keyed by name, but a deterministic order keeps the user
        values byte-identical across rebuilds)."""
        return self.genre_vocab + sorted(self.extra_genres)


def catalog_from_bundle(bundle: Any) -> CatalogTable:
    """The bundle's titles (items.npz, catalog.json, item_ids.json) as a catalogue table."""
    items = bundle.arrays("items")
    meta = bundle.json("catalog")
    item_ids = bundle.json("item_ids")
    table = CatalogTable(
        item_ids=list(item_ids), index={i: k for k, i in enumerate(item_ids)},
        genres=[list(g) for g in meta["genres"]], release_ts=items["release_ts"].astype(np.int64).tolist(),
        first_seen_ts=items["first_seen_ts"].astype(np.int64).tolist(),
        maturity=items["maturity"].astype(np.int8).tolist(), is_original=items["is_original"].astype(bool).tolist(),
        genre_vocab=list(meta["genre_vocab"]),
    )
    return table


def load_bundle(artifacts: Path | None) -> Any | None:
    if artifacts is None:
        return None
    from models.bundle import BundleError, open_bundle

    try:
        return open_bundle(artifacts)
    except (BundleError, FileNotFoundError, OSError) as exc:
        log.warning("worker.no_bundle", artifacts=str(artifacts), reason=str(exc))
        return None


# --------------------------------------------------------------------------------------------------
# Redis plumbing


@dataclass
class _Prepared:
    """A partition batch decoded, with its reads queued (:meth:`Worker._prepare_interactions`)."""

    info: BatchInfo
    events: list[InteractionEvent]
    letters: list[Any]
    store: Any
    plan: Any
    reads: Any  # a redis-py pipeline used as a recorder
    counts: list[int]  # commands each effect queued on ``reads`` (its replies come first, in effect order)
    n_store: int  # then the feature store's


class _Fenced(Exception):
    """Another worker advanced the partition's offset while this batch was prepared."""


async def delete_state(client: Any, prefix: str = PREFIX) -> int:
    """Delete every ``{prefix}:*`` key (state and offsets); returns how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await client.unlink(*batch)
            batch = []
    if batch:
        deleted += await client.unlink(*batch)
    return deleted


async def ensure_topics_retrying(settings: Settings, attempts: int = 20) -> None:
    """Create missing topics; retried, since a broker that just started refuses for a moment
    (KRaft: "All brokers are currently fenced")."""
    from foundation.topics import ensure_topics
    from tools.stack.errors import StackError

    for attempt in range(attempts):
        try:
            await ensure_topics(settings)
            return
        except StackError as exc:
            if attempt == attempts - 1:
                raise
            log.info("worker.topics_retry", reason=str(exc))
            await asyncio.sleep(1.0)


# --------------------------------------------------------------------------------------------------
# The worker


@dataclass
class WorkerOptions:
    artifacts: Path | None = None
    concurrency: int = 4  # partition batches handled at once (their Redis round trips overlap)
    max_records: int = 2000  # records per getmany round (per partition batches are its slices)
    fetch_timeout_ms: int = 200
    # How long the broker holds a fetch that found no new record (aiokafka's default is 500 ms).
    fetch_max_wait_ms: int = 5
    metrics_port: int = 0
    rebuild: bool = False
    group_id: str = GROUP_ID
    prefix: str = PREFIX
    effects: bool = True  # discover the other effects (default_effects); False: features only
    bulk: bool = True  # writes as Redis Functions when the server runs them (False: one command per key)
    session_timeout_ms: int = 10_000  # how soon the group notices a killed worker
    commit_interval_s: float = 1.0  # Kafka offset commits (monitoring only)
    # BLAS threads of this process, set once the bundle (and with it scipy's OpenBLAS) is loaded; None:
    # leave them (in-process use by tests and tools). See foundation/blas_threads.py.
    blas_threads: int | None = None


class Worker:
    def __init__(self, settings: Settings, options: WorkerOptions | None = None, *,
                 effects: Sequence[Effect] | None = None, catalog_hooks: Sequence[CatalogHook] | None = None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self._effects_given = effects
        self._hooks_given = catalog_hooks
        self.effects: list[Effect] = []
        self.catalog_hooks: list[CatalogHook] = []
        self.stopping = asyncio.Event()
        self.redis: Any = None
        self.bundle: Any = None
        self.bulk = False
        self._lock = asyncio.Lock()
        self._committed_at = 0.0
        self.processed = 0
        self.rejected = 0
        self._fresh_clients()

    def _fresh_clients(self) -> None:
        """No Kafka clients, an empty catalogue and no per-partition state: before :meth:`start`, and
        again when :meth:`restart` replaces everything a dead client may have left behind."""
        self.consumer: Any = None
        self.follower: Any = None
        self.producer: Any = None
        self.catalog = CatalogTable()
        self.static = self.catalog.static()
        self._stores: dict[tuple[str, int], tuple[Any, int]] = {}
        self._redis_warm = False
        self._last: dict[Any, int] = {}
        self._uncommitted: set[Any] = set()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        import redis.asyncio as aioredis
        from aiokafka import TopicPartition

        from foundation.kafka_io import make_consumer, make_producer
        s, o = self.settings, self.options
        self.redis = aioredis.Redis.from_url(s.redis_url)
        await self.redis.ping()
        if o.rebuild:
            deleted = await delete_state(self.redis, o.prefix)
            log.warning("worker.rebuild", deleted_keys=deleted)
        from online_state.redis_functions import functions_available

        self.bulk = o.bulk and await functions_available(self.redis)
        if o.bulk and not self.bulk:
            log.warning("worker.no_redis_functions", reason="FUNCTION LOAD failed: one command per key (slower)")
        await ensure_topics_retrying(s)
        self.bundle = load_bundle(o.artifacts)
        if self.bundle is not None:
            self.catalog = catalog_from_bundle(self.bundle)
            log.info("worker.bundle", version=self.bundle.version, items=len(self.catalog.item_ids))
        if o.blas_threads is not None:
            from foundation.blas_threads import limit_blas_threads

            limit_blas_threads(o.blas_threads)
        self.producer = make_producer(s, enable_idempotence=True)
        await self.producer.start()
        # The catalogue follower: every catalog partition, from the beginning, no group.
        self.follower = make_consumer(s, group_id=None, enable_auto_commit=False)
        await self.follower.start()
        parts = await self.producer.partitions_for(s.topic_catalog)
        tps = [TopicPartition(s.topic_catalog, p) for p in sorted(parts)]
        self.follower.assign(tps)
        await self.follower.seek_to_beginning(*tps)
        await self._bootstrap_catalog(tps)
        ctx = WorkerContext(settings=s, redis=self.redis, static=self.static, bundle=self.bundle, prefix=o.prefix,
                            catalog=self.catalog, producer=self.producer, bulk=self.bulk)
        if self._effects_given is not None:
            self.effects = list(self._effects_given)
        elif o.effects:
            self.effects = default_effects(ctx)
        if self._hooks_given is not None:
            self.catalog_hooks = list(self._hooks_given)
        elif o.effects:
            self.catalog_hooks = default_catalog_hooks(ctx)
        log.info("worker.effects", effects=[getattr(e, "name", type(e).__name__) for e in self.effects],
                 catalog_hooks=len(self.catalog_hooks))
        self.consumer = make_consumer(s, group_id=o.group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_poll_records=o.max_records,
                                      fetch_max_wait_ms=o.fetch_max_wait_ms,
                                      session_timeout_ms=o.session_timeout_ms,
                                      heartbeat_interval_ms=max(100, o.session_timeout_ms // 3))
        self.consumer.subscribe([s.topic_interactions, s.topic_catalog], listener=_Listener(self))
        await self.consumer.start()
        if metrics.serve(o.metrics_port):
            log.info("worker.metrics", port=o.metrics_port)
        # The bundle, catalogue and effect tables are long-lived: out of the collector's sight, so that the
        # full collections the per-batch garbage triggers do not walk them (pauses of 100+ ms otherwise).
        gc.collect()
        gc.freeze()
        log.info("worker.started", group=o.group_id, items=self.static.n_items, genres=self.static.n_genres)

    async def stop(self) -> None:
        if self.consumer is not None and self._uncommitted:
            with contextlib.suppress(Exception):
                await self._commit_kafka()
        for client in (self.consumer, self.follower, self.producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        log.info("worker.stopped", processed=self.processed, rejected=self.rejected)

    async def run(self) -> None:
        """Start, consume until :attr:`stopping` is set (SIGTERM), stop.

        A producer whose sender task died fails every later send (aiokafka does not recover it), so
        every batch with a dead letter or an item vector would fail forever: the worker restarts
        itself instead (new clients and effects; Redis' stored offsets make the redo exact).
        """
        from foundation.kafka_io import producer_failure

        try:
            await self.start()
            while not self.stopping.is_set():
                await self.round()
                failure = producer_failure(self.producer)
                if failure is not None and not self.stopping.is_set():
                    await self.restart(f"producer failed: {failure!r}")
        finally:
            await self.stop()

    async def restart(self, reason: str) -> None:
        """Stop every client and start afresh (what a supervisor would do, without losing the process)."""
        log.error("worker.restarting", reason=reason)
        metrics.RESTARTS.inc()
        await self.stop()
        self._fresh_clients()
        await self.start()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)

    # --- catalogue ---------------------------------------------------------------------------------

    async def _bootstrap_catalog(self, tps: list[Any]) -> None:
        if not tps:
            return
        ends = await self.follower.end_offsets(tps)
        started = time.perf_counter()
        while True:
            positions = [await self.follower.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            await self._follow_catalog(timeout_ms=500, rebuild_static=False)
        self.static = self.catalog.static()
        log.info("worker.catalog_loaded", items=self.static.n_items, seconds=round(time.perf_counter() - started, 2))

    async def _follow_catalog(self, timeout_ms: int = 0, rebuild_static: bool = True) -> None:
        fetched = await self.follower.getmany(timeout_ms=timeout_ms)
        changed = 0
        for records in fetched.values():
            changed += self.catalog.apply(decode_records(records, catalog_decoder).events)
        if changed and rebuild_static:
            self.static = self.catalog.static()

    # --- consumption -------------------------------------------------------------------------------

    async def round(self) -> int:
        """One ``getmany`` and its partition batches; returns the records handled."""
        fetched = await self.consumer.getmany(timeout_ms=self.options.fetch_timeout_ms,
                                              max_records=self.options.max_records)
        if not fetched:
            await self._follow_catalog()
            return 0
        async with self._lock:
            await self._follow_catalog()
            sem = asyncio.Semaphore(max(1, self.options.concurrency))

            async def one(tp: Any, records: list[Any]) -> tuple[Any, int | None]:
                async with sem:
                    return tp, await self._handle(tp, records)

            results = await asyncio.gather(*(one(tp, records) for tp, records in fetched.items()))
            for tp, last in results:
                if last is not None:
                    self._last[tp] = last
                    self._uncommitted.add(tp)
            if time.monotonic() - self._committed_at >= self.options.commit_interval_s:
                await self._commit_kafka()
            self._update_lag()
        return sum(len(r) for r in fetched.values())

    async def _commit_kafka(self) -> None:
        """Commit the handled positions to the group (for lag tools only: Redis holds the truth), at most
        every ``commit_interval_s``: a commit is a round trip to the coordinator, not worth one per round."""
        from aiokafka.structs import OffsetAndMetadata

        self._committed_at = time.monotonic()
        commits = {tp: OffsetAndMetadata(self._last[tp] + 1, "") for tp in self._uncommitted if tp in self._last}
        self._uncommitted.clear()
        if commits:
            try:
                await self.consumer.commit(commits)
            except Exception as exc:  # rebalance in progress etc.
                log.info("worker.commit_skipped", reason=repr(exc))

    def _update_lag(self) -> None:
        for tp, last in self._last.items():
            high = self.consumer.highwater(tp)
            if high is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - last - 1))

    async def _handle(self, tp: Any, records: list[Any]) -> int | None:
        """Handle one partition's batch; returns its last offset, or None after a failure (the
        partition is then rewound to the batch's first record and retried in a later round)."""
        started = time.perf_counter()
        topic = tp.topic
        try:
            while True:
                try:
                    if topic == self.settings.topic_catalog:
                        await self._apply_catalog(tp, records)
                    else:
                        await self._apply_interactions(tp, records)
                    break
                except _Fenced:
                    metrics.FENCED.labels(topic).inc()
                    log.info("worker.fenced", topic=topic, partition=tp.partition)
        except Exception as exc:
            metrics.FAILURES.labels(topic).inc()
            log.error("worker.batch_failed", topic=topic, partition=tp.partition, error=repr(exc))
            if self.bulk and is_missing_function(exc):  # a Redis restarted without persistence lost them
                with contextlib.suppress(Exception):
                    await load_functions(self.redis)
            with contextlib.suppress(Exception):
                self.consumer.seek(tp, records[0].offset)
            await asyncio.sleep(1.0)
            return None
        metrics.BATCH_SECONDS.labels(topic).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(topic).observe(len(records))
        return records[-1].offset

    @contextlib.asynccontextmanager
    async def _offset_transaction(self, key: str) -> AsyncIterator[tuple[Any, int]]:
        """A pipeline WATCHing the partition's offset key, and the offset stored there.

        A concurrent commit of that key (a zombie owner after a rebalance) makes our EXEC fail:
        that surfaces as ``_Fenced`` and the batch is redone from the newly stored offset.
        """
        from redis.exceptions import WatchError

        pipe = self.redis.pipeline(transaction=True)
        try:
            await pipe.watch(key)
            yield pipe, parse_stored(await pipe.get(key))
        except WatchError as exc:
            raise _Fenced() from exc
        finally:
            await pipe.reset()

    async def _dead_letters(self, topic: str, letters: list[Any]) -> None:
        if letters:
            await send_dead_letters(self.producer, self.settings.topic_dead_letters, letters)
            metrics.DEAD_LETTERS.labels(topic).inc(len(letters))
            metrics.EVENTS.labels(topic, "rejected").inc(len(letters))
            self.rejected += len(letters)

    def _store(self, tp: Any) -> Any:
        """The partition's feature store (its pending epoch clean-ups are per partition), rebuilt when the
        catalogue changed."""
        from online_state.redis_store import RedisFeatureStore

        key = (tp.topic, tp.partition)
        found = self._stores.get(key)
        if found is None or found[1] != id(self.static):
            store = RedisFeatureStore(self.redis, self.static, prefix=self.options.prefix, bulk=self.bulk)
            if found is not None:
                store._cleanup = found[0]._cleanup  # keep the pending epoch clean-ups
            found = self._stores[key] = (store, id(self.static))
        return found[0]

    async def _apply_interactions(self, tp: Any, records: list[Any]) -> None:
        """Three round trips on one connection (:mod:`streams.redis_batch`): WATCH + the stored offset,
        every effect's and the features' reads, the MULTI."""
        from redis.exceptions import WatchError

        key = offset_key(self.options.prefix, tp.topic, tp.partition)
        if not self._redis_warm:
            self._redis_warm = True
            await self._warm_redis()
        async with BatchConnection(self.redis) as conn:
            stored = parse_stored(await conn.watch(key))
            fresh = fresh_records(records, stored)
            skipped = len(records) - len(fresh)
            if skipped:
                metrics.EVENTS.labels(tp.topic, "skipped").inc(skipped)
            if not fresh:
                return
            prepared = self._prepare_interactions(tp, fresh)
            replies = await conn.read(recorded(prepared.reads))
            if gap(fresh, stored):
                log.warning("worker.offset_gap", topic=tp.topic, partition=tp.partition, stored=stored,
                            first=fresh[0].offset)
            await self._dead_letters(tp.topic, prepared.letters)
            redis_started = time.perf_counter()
            events, info, plan, store = prepared.events, prepared.info, prepared.plan, prepared.store
            # One MULTI: the features first (the store finds its replies at the front), every effect's
            # writes, the offset.
            writes = self.redis.pipeline(transaction=True)  # a recorder: BatchConnection sends it
            if plan is not None:
                store.queue_writes(writes, plan, replies[len(replies) - prepared.n_store:])
            pos = 0
            for effect, n in zip(self.effects, prepared.counts, strict=True):
                effect.write(writes, events, info, replies[pos:pos + n])
                pos += n
            writes.set(key, info.last_offset)
            try:
                written = await conn.commit(recorded(writes))
            except BaseException as exc:
                if plan is not None:
                    store.failed(plan)
                if isinstance(exc, WatchError):
                    raise _Fenced() from exc
                raise
            if plan is not None:
                store.committed(plan, written)
            metrics.REDIS_APPLY_SECONDS.observe(time.perf_counter() - redis_started)
            metrics.EVENTS.labels(tp.topic, "processed").inc(len(events))
            self.processed += len(events)

    async def _warm_redis(self) -> None:
        """Open, at once, the connections the concurrent batches will hold: setting one up is several round
        trips, which a batch would otherwise spend between its WATCH and its EXEC."""
        pool = self.redis.connection_pool
        conns = await asyncio.gather(*(pool.get_connection() for _ in range(max(1, self.options.concurrency) + 1)),
                                     return_exceptions=True)
        for conn in conns:
            if not isinstance(conn, BaseException):
                await pool.release(conn)

    def _prepare_interactions(self, tp: Any, records: Sequence[Any]) -> _Prepared:
        """Decode ``records`` and queue every read their effects and features need (on a recorder)."""
        info = BatchInfo(tp.topic, tp.partition, records[0].offset, records[-1].offset)
        decoded = decode_records(records, interaction_decoder)
        events: list[InteractionEvent] = decoded.events
        batch = EventBatch.from_events(events, self.static)
        store = self._store(tp)
        plan = store.plan(batch) if len(batch) else None
        reads = self.redis.pipeline(transaction=False)  # a recorder: BatchConnection sends it
        counts = [effect.read(reads, events, info) if events else 0 for effect in self.effects]
        n_store = store.queue_reads(reads, plan) if plan is not None else 0
        return _Prepared(info, events, decoded.letters, store, plan, reads, counts, n_store)

    async def _apply_catalog(self, tp: Any, records: list[Any]) -> None:
        key = offset_key(self.options.prefix, tp.topic, tp.partition)
        async with self._offset_transaction(key) as (pipe, stored):
            fresh = fresh_records(records, stored)
            if len(fresh) < len(records):
                metrics.EVENTS.labels(tp.topic, "skipped").inc(len(records) - len(fresh))
            if not fresh:
                return
            info = BatchInfo(tp.topic, tp.partition, fresh[0].offset, fresh[-1].offset)
            decoded = decode_records(fresh, catalog_decoder)
            await self._dead_letters(tp.topic, decoded.letters)
            pipe.multi()
            for hook in self.catalog_hooks:
                result = hook(pipe, decoded.events, info)
                if inspect.isawaitable(result):
                    await result
            pipe.set(key, info.last_offset)
            await pipe.execute()
            metrics.EVENTS.labels(tp.topic, "processed").inc(len(decoded.events))

    # --- rebalancing -------------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[Any]) -> None:
        if not assigned:
            return
        tps = sorted(assigned)
        keys = [offset_key(self.options.prefix, tp.topic, tp.partition) for tp in tps]
        stored = await self.redis.mget(keys)
        to_start = []
        for tp, raw in zip(tps, stored, strict=True):
            position = resume_position(parse_stored(raw))
            if position is None:
                to_start.append(tp)
            else:
                self.consumer.seek(tp, position)
        if to_start:
            await self.consumer.seek_to_beginning(*to_start)
        log.info("worker.assigned", partitions=[f"{tp.topic}:{tp.partition}" for tp in tps])

    async def on_revoked(self, revoked: set[Any]) -> None:
        async with self._lock:  # let the round in flight finish (the WATCH fences it anyway)
            if self._uncommitted:
                await self._commit_kafka()
            for tp in revoked:
                self._last.pop(tp, None)
                self._stores.pop((tp.topic, tp.partition), None)
        if revoked:
            log.info("worker.revoked", partitions=[f"{tp.topic}:{tp.partition}" for tp in sorted(revoked)])


def _listener_base() -> type:
    from aiokafka import ConsumerRebalanceListener

    return ConsumerRebalanceListener


class _Listener(_listener_base()):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self.worker.on_assigned(assigned)


async def run_worker(settings: Settings, options: WorkerOptions) -> Worker:
    """Run a worker until SIGTERM/SIGINT (the ``streamrec worker`` command)."""
    worker = Worker(settings, options)
    worker.install_signal_handlers()
    await worker.run()
    return worker


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m streams.worker [--artifacts PATH] [--concurrency N] [--metrics-port P] [--rebuild]``."""
    import typer

    from streamrec.commands.worker import worker as command

    app = typer.Typer(add_completion=False)
    app.command()(command)
    app(args=list(argv) if argv is not None else None, prog_name="streams.worker")


if __name__ == "__main__":
    main()
