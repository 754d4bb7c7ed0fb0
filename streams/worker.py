"""The stream worker process: consumes ``interactions`` and ``catalog``, keeps the online state in Redis.

One aiokafka consumer in the group ``streamrec-workers`` (auto-commit off) on both topics. A round is one
``getmany``; each partition's records in it are one batch (:mod:`streams.intake`), applied through the
explicit list of effects (:mod:`streams.effects_registry`) by the exactly-once protocol
(:mod:`streams.batch_protocol`), several partitions at once. This module holds the process around that:
start-up and shutdown, rounds, retries of failed or fenced batches, rebalancing. On assignment the position
always comes from Redis (stored offset + 1, or the beginning when Redis holds nothing, which is what
``--rebuild`` relies on); Kafka's committed offsets serve lag monitoring only.

The catalogue: every worker follows every catalog partition (:mod:`streams.catalogue`); the catalog
partitions this worker owns in the group are where the catalogue's dead letters and effects run (once per
record cluster-wide; effects that send elsewhere than Redis, e.g. item vectors, at least once).

Interaction events are also de-duplicated by ``event_id`` (:mod:`streams.dedupe`), so a client's retry counts
once. A Redis that refuses writes for memory (``maxmemory`` with ``noeviction``: an ``OOM`` error) pauses the
worker (:class:`OomPause`): the refused batch is rewound and retried, with a capped exponential back-off, until
the writes succeed again; no batch is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from redis.exceptions import OutOfMemoryError

from foundation.blas_threads import limit_blas_threads
from foundation.kafka_io import make_consumer, make_producer, producer_failure, stop_quietly
from foundation.logs import get_logger
from foundation.redis_io import mget_any, redis_client
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import Bundle, BundleError, latest_version, open_bundle
from online_state.keys import DEFAULT_PREFIX, KeyLayout
from online_state.offsets import parse_stored
from online_state.redis_functions import functions_available, is_missing_function, load_functions
from online_state.redis_store import DEFAULT_USER_TTL_S
from online_state.slot_markers import load_slot_functions
from schemas.decoder import catalog_decoder, interaction_decoder
from streams import metrics
from streams.batch_protocol import Fenced, Outcome, apply_batch
from streams.catalogue import CatalogueFollower, LiveCatalogue
from streams.dedupe import EventWindows
from streams.effects import Effect, EffectContext
from streams.effects_registry import CATALOG_EFFECTS, FEATURES_ONLY, INTERACTION_EFFECTS, build_effects
from streams.intake import Intake
from streams.offsets import resume_position
from streams.rebuild import delete_state
from streams.slot_protocol import SlotProtocol

log = get_logger(__name__)

GROUP_ID: Final = "streamrec-workers"


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
    prefix: str = DEFAULT_PREFIX  # of every Redis key (online_state.keys.KeyLayout)
    effects: bool = True  # every effect of the list; False: the features only
    bulk: bool = True  # writes as Redis Functions when the server runs them (False: one command per key)
    session_timeout_ms: int = 10_000  # how soon the group notices a killed worker
    commit_interval_s: float = 1.0  # Kafka offset commits (monitoring only)
    # At most this long per Kafka commit: the commit runs inside the round, and aiokafka waits for the group
    # coordinator without limit (seen: minutes of a stalled worker after a broker restart, on a commit that only
    # feeds lag tools). A commit cut short is retried at the next interval.
    commit_timeout_s: float = 2.0
    # BLAS threads of this process, set once the bundle (and with it scipy's OpenBLAS) is loaded; None:
    # leave them (in-process use by tests and tools). See foundation/blas_threads.py.
    blas_threads: int | None = None
    # Back-off while Redis refuses writes for memory (OomPause): first wait, doubled per refused round up to the cap.
    oom_backoff_s: float = 0.1
    oom_backoff_max_s: float = 5.0
    # How often `latest` under ``artifacts`` is checked for a new bundle, swapped in between rounds (reload_bundle);
    # 0: never (the bundle of the start stays).
    bundle_poll_s: float = 5.0


class OomPause:
    """The worker's pause while Redis refuses writes with ``OOM`` (``maxmemory`` reached under ``noeviction``).

    A refused batch wrote nothing (its ``EXEC`` was aborted), so it is rewound and retried: nothing is dropped.
    Between refused rounds the worker waits ``first_s``, doubled each time up to ``max_s``; the gauge
    ``streamrec_worker_paused{reason="redis_oom"}`` is 1 from the first refusal to the next commit, and one
    ERROR line says so (then at most one per ``log_every_s``, with the refusals since), so an outage of
    hours logs a few lines, not one per retry.
    """

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0, log_every_s: float = 30.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.log_every_s = log_every_s
        self.since: float | None = None  # monotonic time of the first refusal of this pause
        self.refusals = 0  # refused batches in this pause
        self._unlogged = 0
        self._logged_at = 0.0
        self._rounds = 0  # refused rounds in this pause (the back-off's exponent)
        self._hit = False  # a batch of the current round was refused

    @property
    def paused(self) -> bool:
        return self.since is not None

    def refused(self, topic: str, partition: int, exc: BaseException) -> None:
        """A batch's writes were refused for memory."""
        now = time.monotonic()
        metrics.OOM_REFUSED.labels(topic).inc()
        self._hit = True
        self.refusals += 1
        self._unlogged += 1
        if self.since is None:
            self.since = now
            metrics.PAUSED.labels("redis_oom").set(1)
        if self._unlogged == self.refusals or now - self._logged_at >= self.log_every_s:
            log.error("worker.paused_redis_oom", topic=topic, partition=partition, refused=self._unlogged,
                      paused_s=round(now - self.since, 1), error=str(exc))
            self._logged_at, self._unlogged = now, 0

    def end_round(self, committed: bool) -> float | None:
        """After a round: the seconds to wait before the next one when a batch was refused; else ``None``
        (and the pause ends when a batch committed)."""
        if self._hit:
            self._hit = False
            delay = min(self.max_s, self.first_s * 2 ** min(self._rounds, 30))
            self._rounds += 1
            return delay
        if committed and self.since is not None:
            log.warning("worker.resumed_redis_oom", paused_s=round(time.monotonic() - self.since, 2),
                        refused=self.refusals)
            metrics.PAUSED.labels("redis_oom").set(0)
            self.since, self.refusals, self._unlogged, self._rounds = None, 0, 0, 0
        return None


def load_bundle(artifacts: Path | None) -> Bundle | None:
    """The bundle under ``artifacts``, or ``None`` (the worker then keeps the features and the trending only)."""
    if artifacts is None:
        return None
    try:
        return open_bundle(artifacts)
    except (BundleError, FileNotFoundError, OSError) as exc:
        log.warning("worker.no_bundle", artifacts=str(artifacts), reason=str(exc))
        return None


class Worker:
    """One worker process's consumption (see the module docstring). ``effects`` / ``catalog_effects``
    replace the lists the registry builds (tests)."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None, *,
                 effects: Sequence[Effect[Any]] | None = None,
                 catalog_effects: Sequence[Effect[Any]] | None = None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.keys = KeyLayout(self.options.prefix)
        self._effects_given = effects
        self._catalog_effects_given = catalog_effects
        self.effects: list[Effect[Any]] = list(effects or [])
        self.catalog_effects: list[Effect[Any]] = list(catalog_effects or [])
        self.stopping = asyncio.Event()
        self.redis: Any = None
        self.bundle: Bundle | None = None
        self.bulk = False
        self._lock = asyncio.Lock()
        self._committed_at = 0.0
        self.processed = 0
        self.duplicates = 0  # interaction events dropped as already applied (streams.dedupe)
        self.windows: EventWindows | None = None
        # The per-slot protocol (streams.slot_protocol), or None: one MULTI per batch (streams.batch_protocol).
        self.slots: SlotProtocol | None = None
        self.oom = OomPause(self.options.oom_backoff_s, self.options.oom_backoff_max_s)
        self._committed_round = False
        self._metrics_served = False
        self._bundle_checked_at = time.monotonic()
        self._failed_bundle: str | None = None  # a version that failed to load: not retried until `latest` moves
        self.bundle_reloads = 0
        self._fresh_clients()

    def _fresh_clients(self) -> None:
        """No Kafka clients, an empty catalogue and no per-partition state: before :meth:`start`, and
        again when :meth:`restart` replaces everything a dead client may have left behind."""
        self.consumer: Any = None
        self.follower: CatalogueFollower | None = None
        self.producer: Any = None
        self.intake = Intake(None, self.settings.topic_dead_letters)
        self.catalog = LiveCatalogue()
        self._redis_warm = False
        self._last: dict[Any, int] = {}
        self._uncommitted: set[Any] = set()
        self._position: dict[Any, int] = {}  # per partition, the last offset this worker applied (slot protocol)

    @property
    def rejected(self) -> int:
        """Records dead-lettered since the last (re)start."""
        return self.intake.rejected

    # --- lifecycle ---------------------------------------------------------------------------------

    def _serve_metrics(self) -> None:
        """Bind the metrics port: first of all, so that a taken port (a second worker on the host) stops this
        one with :class:`~streams.metrics.MetricsPortInUse` before it touches Redis or joins the group, where
        it would take partitions and then die (issue 12). Once per process: a restart keeps the server."""
        o, host = self.options, self.settings.worker_metrics_host
        if not self._metrics_served and metrics.serve(o.metrics_port, host):
            self._metrics_served = True
            log.info("worker.metrics", host=host, port=o.metrics_port)

    async def start(self) -> None:
        s, o = self.settings, self.options
        self._serve_metrics()
        self.redis = redis_client(s)
        await self.redis.ping()
        if o.rebuild:
            deleted = await delete_state(self.redis, self.keys)
            log.warning("worker.rebuild", deleted_keys=deleted)
        if s.redis_cluster or s.worker_protocol == "slots":
            # Per-slot units carry one command per key (a bulk FCALL spans slots), and run as a Redis Function.
            await load_slot_functions(self.redis)
            self.slots = SlotProtocol(self.redis, self.keys)
            self.bulk = False
        else:
            self.bulk = o.bulk and await functions_available(self.redis)
            if o.bulk and not self.bulk:
                log.warning("worker.no_redis_functions", reason="FUNCTION LOAD failed: one command per key (slower)")
        self.windows = (EventWindows(self.keys, s.worker_dedupe_window, DEFAULT_USER_TTL_S, bulk=self.bulk)
                        if s.worker_dedupe_window > 0 else None)
        await ensure_topics_retrying(s)
        self.bundle = load_bundle(o.artifacts)
        self.catalog = LiveCatalogue.from_bundle(self.bundle)
        if self.bundle is not None:
            log.info("worker.bundle", version=self.bundle.version, items=len(self.catalog.table))
        if o.blas_threads is not None:
            limit_blas_threads(o.blas_threads)
        self.producer = make_producer(s, enable_idempotence=True)
        await self.producer.start()
        self.intake = Intake(self.producer, s.topic_dead_letters)
        # The catalogue follower: every catalog partition, from the beginning, no group.
        follower = make_consumer(s, group_id=None, enable_auto_commit=False)
        await follower.start()
        self.follower = CatalogueFollower(follower, self.catalog)
        parts = await self.producer.partitions_for(s.topic_catalog)
        tps = [TopicPartition(s.topic_catalog, p) for p in sorted(parts)]
        follower.assign(tps)
        await follower.seek_to_beginning(*tps)
        await self.follower.read_to_end(tps)
        self._build_effects()
        self.consumer = make_consumer(s, group_id=o.group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_poll_records=o.max_records,
                                      fetch_max_wait_ms=o.fetch_max_wait_ms,
                                      session_timeout_ms=o.session_timeout_ms,
                                      heartbeat_interval_ms=max(100, o.session_timeout_ms // 3))
        self.consumer.subscribe([s.topic_interactions, s.topic_catalog], listener=_Listener(self))
        await self.consumer.start()
        # The bundle, catalogue and effect tables are long-lived: out of the collector's sight, so that the
        # full collections the per-batch garbage triggers do not walk them (pauses of 100+ ms otherwise).
        gc.collect()
        gc.freeze()
        static = self.catalog.static()
        log.info("worker.started", group=o.group_id, items=static.n_items, genres=static.n_genres)

    def _build_effects(self) -> None:
        """The effects of the registry (or the ones given), built against the started clients; a factory
        that fails stops the start-up (:class:`~streams.effects_registry.EffectBuildError`)."""
        self.effects, self.catalog_effects = self._effects_for(self.bundle, self.catalog)
        log.info("worker.effects", effects=[e.name for e in self.effects],
                 catalog_effects=[e.name for e in self.catalog_effects])

    def _effects_for(self, bundle: Bundle | None, catalog: LiveCatalogue) -> tuple[list[Effect[Any]],
                                                                                    list[Effect[Any]]]:
        ctx = EffectContext(settings=self.settings, redis=self.redis, bundle=bundle, keys=self.keys,
                            catalog=catalog, producer=self.producer, bulk=self.bulk)
        effects, catalog_effects = self.effects, self.catalog_effects
        if self._effects_given is None:
            effects = build_effects(INTERACTION_EFFECTS if self.options.effects else FEATURES_ONLY, ctx)
        if self._catalog_effects_given is None:
            catalog_effects = build_effects(CATALOG_EFFECTS if self.options.effects else (), ctx)
        return list(effects), list(catalog_effects)

    # --- bundle hot reload -------------------------------------------------------------------------

    async def _maybe_reload(self) -> None:
        """Every ``bundle_poll_s``: if `latest` names another bundle than the one in use, swap it in."""
        o = self.options
        if o.artifacts is None or o.bundle_poll_s <= 0 or time.monotonic() - self._bundle_checked_at < o.bundle_poll_s:
            return
        self._bundle_checked_at = time.monotonic()
        try:
            version = await asyncio.to_thread(latest_version, o.artifacts)
        except Exception:
            return  # no bundle yet, or `latest` being replaced this instant: the next poll sees it
        if version in (self.bundle.version if self.bundle is not None else None, self._failed_bundle):
            return
        await self.reload_bundle(version)

    async def reload_bundle(self, version: str | None = None) -> bool:
        """Swap in bundle ``version`` (default: `latest`) between rounds; ``False`` (old bundle kept) if it failed.

        Called between rounds (no batch in flight) and under the rebalance lock, so each batch is applied whole
        with one bundle's effects and the Redis offsets move as always: nothing is lost or applied twice. What
        depends on the bundle is rebuilt the way a start builds it: the catalogue (the new bundle's titles, then
        every ``catalog`` record since, read by a new follower before the swap) and the effects (their user
        vectors, item learning's ``bundle_version``/``dim``/``space`` come from the new bundle). A new CF space
        is handled as the effects and the server already expect of a retrained bundle: online user vectors of
        the old space read as absent (the user restarts from their new bundle vector, or zeros), item vectors
        are published under the new version, and servers ignore another version's vectors.
        """
        s, o = self.settings, self.options
        assert o.artifacts is not None
        started = time.perf_counter()
        old = self.bundle.version if self.bundle is not None else None
        follower: Any = None
        try:
            bundle = await asyncio.to_thread(open_bundle, o.artifacts, version)
            catalog = await asyncio.to_thread(LiveCatalogue.from_bundle, bundle)
            follower = make_consumer(s, group_id=None, enable_auto_commit=False)
            await follower.start()
            parts = await self.producer.partitions_for(s.topic_catalog)
            tps = [TopicPartition(s.topic_catalog, p) for p in sorted(parts)]
            follower.assign(tps)
            await follower.seek_to_beginning(*tps)
            new_follower = CatalogueFollower(follower, catalog)
            await new_follower.read_to_end(tps)
            effects, catalog_effects = self._effects_for(bundle, catalog)
        except Exception as exc:
            if follower is not None:
                await stop_quietly(follower)
            self._failed_bundle = version
            metrics.BUNDLE_RELOADS.labels("failed").inc()
            log.error("worker.bundle_reload_failed", old=old, new=version, error=repr(exc))
            return False
        async with self._lock:
            for effect in [*self.effects, *self.catalog_effects]:
                with contextlib.suppress(Exception):
                    await effect.idle()  # what the old effects send after their commits goes out first
            previous = self.follower.consumer if self.follower is not None else None
            self.bundle, self.catalog, self.follower = bundle, catalog, new_follower
            self.effects, self.catalog_effects = effects, catalog_effects
        if previous is not None:
            await stop_quietly(previous)
        self._failed_bundle = None
        self.bundle_reloads += 1
        metrics.BUNDLE_RELOADS.labels("ok").inc()
        # The old bundle was frozen out of the collector's sight at start: unfreeze so that its cycles can go.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info("worker.bundle_reloaded", old=old, new=bundle.version, items=len(catalog.table),
                 seconds=round(time.perf_counter() - started, 3))
        return True

    async def stop(self) -> None:
        for effect in [*self.effects, *self.catalog_effects]:
            with contextlib.suppress(Exception):
                await effect.idle()
        if self.consumer is not None and self._uncommitted:
            with contextlib.suppress(Exception):
                await self._commit_kafka()
        follower = self.follower.consumer if self.follower is not None else None
        for client in (self.consumer, follower, self.producer):
            if client is not None:
                await stop_quietly(client)
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
        self._serve_metrics()  # before the try: a taken port has nothing to stop (and logs no "stopped")
        try:
            await self.start()
            while not self.stopping.is_set():
                await self.round()
                await self._maybe_reload()  # between rounds: no batch in flight
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
                    return tp, await self.handle(tp, records)

            results = await asyncio.gather(*(one(tp, records) for tp, records in fetched.items()))
            for tp, last in results:
                if last is not None:
                    self._last[tp] = last
                    self._uncommitted.add(tp)
            if time.monotonic() - self._committed_at >= self.options.commit_interval_s:
                await self._commit_kafka()
            self._update_lag()
        committed, self._committed_round = self._committed_round, False
        delay = self.oom.end_round(committed)
        if delay is not None:  # Redis is full: wait (outside the lock: a rebalance may proceed) and retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
        return sum(len(r) for r in fetched.values())

    async def _follow_catalog(self) -> None:
        if self.follower is not None:
            await self.follower.follow()

    async def handle(self, tp: Any, records: list[Any]) -> int | None:
        """Apply one partition's batch; returns its last offset, or None after a failure (the partition is
        then rewound to the batch's first record and retried in a later round). A fenced batch is redone
        at once, from the offset the other worker stored."""
        started = time.perf_counter()
        topic = tp.topic
        catalog = topic == self.settings.topic_catalog
        decoder = catalog_decoder if catalog else interaction_decoder
        effects = self.catalog_effects if catalog else self.effects
        windows = None if catalog else self.windows  # catalogue events are upserts/removes: idempotent as they are
        if not self._redis_warm:
            self._redis_warm = True
            await self._warm_redis()
        prepare = partial(self.intake.batch, tp, decoder)
        try:
            if self.slots is not None:
                slotted = await self.slots.apply(topic, tp.partition, records, prepare, effects, windows,
                                                 position=self._position.get(tp))
                self._position[tp] = slotted.position
                if slotted.recuts:
                    metrics.FENCED.labels(topic).inc(slotted.recuts)
                outcome: Outcome = slotted
            else:
                outcome = await self._apply_transaction(tp, records, prepare, effects, windows)
        except OutOfMemoryError as exc:  # nothing was written: rewind, the round backs off (OomPause)
            self.oom.refused(topic, tp.partition, exc)
            with contextlib.suppress(Exception):
                self.consumer.seek(tp, records[0].offset)
            return None
        except Exception as exc:
            metrics.FAILURES.labels(topic).inc()
            log.error("worker.batch_failed", topic=topic, partition=tp.partition, error=repr(exc))
            if is_missing_function(exc):  # a Redis restarted without persistence lost them
                with contextlib.suppress(Exception):
                    await (load_slot_functions(self.redis) if self.slots is not None else load_functions(self.redis))
            with contextlib.suppress(Exception):
                self.consumer.seek(tp, records[0].offset)
            await asyncio.sleep(1.0)
            return None
        if outcome.skipped:
            metrics.EVENTS.labels(topic, "skipped").inc(outcome.skipped)
        if outcome.duplicates:
            metrics.EVENTS.labels(topic, "duplicate").inc(outcome.duplicates)
            self.duplicates += outcome.duplicates
        if outcome.commit_seconds is not None:  # fresh records were committed
            self._committed_round = True
            metrics.EVENTS.labels(topic, "processed").inc(outcome.applied)
            if not catalog:
                self.processed += outcome.applied
                metrics.REDIS_APPLY_SECONDS.observe(outcome.commit_seconds)
        metrics.BATCH_SECONDS.labels(topic).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(topic).observe(len(records))
        return records[-1].offset

    async def _apply_transaction(self, tp: Any, records: list[Any], prepare: Any, effects: Sequence[Effect[Any]],
                                 windows: EventWindows | None) -> Outcome:
        """One ``MULTI`` per batch (``worker_protocol=transaction``); a fenced batch is redone at once, from the
        offset the other worker stored."""
        while True:
            try:
                return await apply_batch(self.redis, self.keys.offset(tp.topic, tp.partition), records, prepare,
                                         effects, windows)
            except Fenced:
                metrics.FENCED.labels(tp.topic).inc()
                log.info("worker.fenced", topic=tp.topic, partition=tp.partition)

    async def _warm_redis(self) -> None:
        """Open, at once, the connections the concurrent batches will hold: setting one up is several round
        trips, which a batch would otherwise spend between its WATCH and its EXEC."""
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None:  # a cluster client: its nodes' connections open on first use
            return
        conns = await asyncio.gather(*(pool.get_connection() for _ in range(max(1, self.options.concurrency) + 1)),
                                     return_exceptions=True)
        for conn in conns:
            if not isinstance(conn, BaseException):
                await pool.release(conn)

    async def _commit_kafka(self) -> None:
        """Commit the handled positions to the group (for lag tools only: Redis holds the truth), at most
        every ``commit_interval_s``: a commit is a round trip to the coordinator, not worth one per round."""
        self._committed_at = time.monotonic()
        commits = {tp: OffsetAndMetadata(self._last[tp] + 1, "") for tp in self._uncommitted if tp in self._last}
        self._uncommitted.clear()
        if commits:
            try:
                await asyncio.wait_for(self.consumer.commit(commits), self.options.commit_timeout_s)
            except Exception as exc:  # rebalance in progress, coordinator unknown (TimeoutError) etc.
                log.info("worker.commit_skipped", reason=repr(exc))
                self._uncommitted.update(tp for tp in commits if tp in self._last)

    def _update_lag(self) -> None:
        for tp, last in self._last.items():
            high = self.consumer.highwater(tp)
            if high is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - last - 1))

    # --- rebalancing -------------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[Any]) -> None:
        if not assigned:
            return
        tps = sorted(assigned)
        stored = await mget_any(self.redis, [self.keys.offset(tp.topic, tp.partition) for tp in tps])
        to_start = []
        for tp, raw in zip(tps, stored, strict=True):
            self._position[tp] = parse_stored(raw)
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
                self._position.pop(tp, None)
        if revoked:
            log.info("worker.revoked", partitions=[f"{tp.topic}:{tp.partition}" for tp in sorted(revoked)])


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self.worker.on_assigned(assigned)


async def run_worker(settings: Settings, options: WorkerOptions) -> Worker:
    """Run a worker until SIGTERM/SIGINT (what ``streamrec worker`` runs)."""
    worker = Worker(settings, options)
    worker.install_signal_handlers()
    await worker.run()
    return worker
