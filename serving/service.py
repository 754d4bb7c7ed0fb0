"""The serving core: ``RecommendationService`` reads the online state and answers with THE pipeline.

One request (``recommend``): one Redis command, the ``MGET`` of the user's online state (:mod:`online_state.reads`)
under ``candidates_timeout_ms`` (the trending lists and new releases are process state, refreshed in the
background); :func:`models.recommend.pipeline.retrieve`; the candidates' feature state from this process's copy
of every title's state (:mod:`online_state.item_state`, fed by :mod:`serving.item_state_tail`; read from Redis
under ``features_timeout_ms`` only until the copy is loaded); :func:`models.recommend.pipeline.rank_and_answer`.
Offline evaluation calls the same two pipeline functions.

Degrading, not failing: a Redis read that fails or times out is replaced by what the process has (the last
trending and new-release lists, the bundle's history and vector of the user, the features' defaults) and the
answer says ``"degraded": true``; a ranker failure falls back to source ranks; anything else unexpected gets
the one fallback answer (:meth:`RecommendationService.fallback`). Live index and hot reload: the
:class:`serving.live_tail.LiveTail` applies ``catalog`` and ``item-vectors`` records to the current model; a
watcher loads a new ``latest`` bundle in a thread and swaps one reference. A request keeps its model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foundation.logs import get_logger
from foundation.redis_io import redis_client
from foundation.settings import Settings
from models.bundle import BundleError, latest_version
from models.experiments.assignment import Assignment, merged_changes
from models.experiments.config import Changes
from models.experiments.interleave import team_draft
from models.postprocess import PostConfig
from models.recommend.homepage import HomepageRequest, Row, build_rows, row_payload
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import (
    Ranked,
    RankingState,
    RecommendRequest,
    Retrieved,
    Snapshot,
    answer,
    fallback_scores,
    rank,
    rank_and_answer,
    retrieve,
    source_counts,
    top_up,
    unknown_state,
)
from online_state.feature_codec import StoredUser
from online_state.feature_reads import FeatureReader
from online_state.item_state import ItemStateTable
from online_state.keys import KeyLayout
from online_state.reads import OnlineState, RequestScopes, SharedReads, read_online_state, refresh_shared
from online_state.redis_store import RedisFeatureStore
from serving import metrics
from serving.item_state_tail import ItemStateTail
from serving.live_tail import LiveTail
from serving.options import ServingOptions, options_from_settings

log = get_logger(__name__)


class NoBundleError(RuntimeError):
    """There is no model bundle to serve (run ``streamrec train`` first)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Prepared:
    """A request after its online-state read and retrieval, before ranking."""

    now: int
    online: OnlineState
    snapshot: Snapshot
    retrieved: Retrieved
    state: RankingState
    degraded: list[str]
    seconds: dict[str, float]  # "candidates", "features"


@dataclass
class _Served:
    """The current model and what belongs to it (swapped as one reference)."""

    model: RecommenderModel
    store: RedisFeatureStore
    post: PostConfig
    reader: FeatureReader | None = None

    def __post_init__(self) -> None:
        if self.reader is None:
            self.reader = FeatureReader(self.store)


class RecommendationService:
    def __init__(self, settings: Settings, artifacts: Path, served: _Served, redis: Any,
                 options: ServingOptions) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.options = options
        self.redis = redis
        self._served = served
        self.tail: LiveTail | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._failed_version: str | None = None
        # Trending lists and new releases, shared by every request for shared_reads_ttl_s (not model state),
        # and the last ones read, for answers while Redis cannot be read.
        self.shared_reads = SharedReads(options.shared_reads_ttl_s)
        self._shared_task: asyncio.Task[None] | None = None
        # Every title's feature state, held here (None: read from Redis per request); fed by item_tail.
        self.item_states: ItemStateTable | None = served.reader.table if served.reader is not None else None
        self.item_tail: ItemStateTail | None = None
        self.reloads = 0
        self._post_changes: dict[str, Any] = {}
        # Other bundle versions experiments' variants serve (loaded off the loop on first use; None: failed).
        self._variants: dict[str, _Served | None] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    @classmethod
    async def start(cls, settings: Settings, artifacts: Path | None = None, *, tail_index: bool = True,
                    watch_bundle: bool = True, options: ServingOptions | None = None) -> RecommendationService:
        """Open the Redis pool, load the bundle (``latest``), start the tail and the bundle watcher.

        ``options`` defaults to the settings' ``serving_*`` fields (see :mod:`serving.options`).
        """
        options = options or options_from_settings(settings)
        root = Path(artifacts if artifacts is not None else settings.artifacts)
        try:
            model = await asyncio.to_thread(RecommenderModel.load, root)
        except (BundleError, FileNotFoundError) as exc:
            raise NoBundleError(f"no model bundle to serve under {root}: {exc} (run `streamrec train`)") from exc
        # Short socket timeouts: a dead or hung Redis must fail inside the stage budget, not after seconds. (On
        # Redis Cluster the client's own retries follow a failover; redis_io drops retry_on_timeout there.)
        redis = redis_client(settings, socket_connect_timeout=options.redis_timeout_s,
                             socket_timeout=options.redis_timeout_s, retry_on_timeout=False)
        table = ItemStateTable() if options.item_state_in_process else None
        service = cls(settings, root, cls._serve(model, redis, options, table), redis, options)
        # Open a connection now so that the first request does not pay the connect inside its budget.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(options.redis_timeout_s):
                await redis.ping()
        if table is not None:
            service.item_tail = ItemStateTail(settings, table, redis, KeyLayout(options.redis_prefix),
                                              kafka=tail_index, resync_s=options.item_state_resync_s)
            if not tail_index:  # no Kafka: the snapshot is the feed; take the first one before serving
                with contextlib.suppress(Exception):
                    await service.item_tail.load()
            service.item_tail.start()
        if options.shared_reads_ttl_s > 0:
            service._shared_task = asyncio.create_task(service._refresh_shared(), name="serving-shared-lists")
        if tail_index:
            service.tail = LiveTail(settings, service._apply_live)
            service.tail.start()
        if watch_bundle:
            service._watch_task = asyncio.create_task(service._watch_latest(), name="serving-bundle-watch")
        metrics.INDEX_ITEMS.set(model.cf_index.n_live)
        log.info("serving.started", bundle=model.version, items=len(model.items), tail=tail_index,
                 watch=watch_bundle)
        return service

    @staticmethod
    def _serve(model: RecommenderModel, redis: Any, options: ServingOptions,
               table: ItemStateTable | None = None) -> _Served:
        post = model.config.post
        changes = {"diversity": options.diversity, "original_boost": options.original_boost,
                   "new_release_boost": options.new_release_boost,
                   "freshness_half_life_days": options.freshness_half_life_days,
                   "reason_titles": None if options.reason_titles else False}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            post = dataclasses.replace(post, **changes)
        store = RedisFeatureStore(redis, model.static, keys=KeyLayout(options.redis_prefix))
        return _Served(model, store, post, FeatureReader(store, options.item_state_ttl_s, table=table))

    async def close(self) -> None:
        for task in (self._watch_task, self._shared_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.item_tail is not None:
            await self.item_tail.close()
        if self.tail is not None:
            await self.tail.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def set_post(self, **changes: Any) -> None:
        """Change post-processing knobs at runtime (diversity, boosts, freshness) for later requests."""
        self._post_changes.update(changes)  # kept across hot reloads
        served = self._served
        self._served = _Served(served.model, served.store, dataclasses.replace(served.post, **changes), served.reader)

    async def use_redis(self, client: Any) -> None:
        """Point the service at another Redis client (failover; tests redirect it to a dead port)."""
        old, self.redis = self.redis, client
        if self.item_tail is not None:
            self.item_tail.redis = client
        served = self._served
        store = RedisFeatureStore(client, served.model.static, keys=served.store.keys)
        self._served = _Served(served.model, store, served.post,
                               FeatureReader(store, self.options.item_state_ttl_s, table=self.item_states))
        with contextlib.suppress(Exception):
            await old.aclose()

    @property
    def model_version(self) -> str:
        return self._served.model.version

    @property
    def model(self) -> RecommenderModel:
        return self._served.model

    async def _refresh_shared(self) -> None:
        """Keep the shared lists (trending per scope, new releases) fresh off the request path: every
        ``shared_reads_ttl_s / 2``, one round trip for every list requests wanted (online_state.reads)."""
        period = max(self.options.shared_reads_ttl_s / 2, 0.05)
        failing = False
        while True:
            await asyncio.sleep(period)
            try:
                async with asyncio.timeout(self.options.redis_timeout_s * 4):
                    await refresh_shared(self.redis, self._served.store.keys, self.shared_reads, _now_ms())
                failing = False
            except Exception as exc:  # Redis away: requests read (and degrade) themselves; log once per outage
                if not failing:
                    log.warning("serving.shared_lists_failed", error=repr(exc))
                failing = True

    # -- live index and hot reload ---------------------------------------------------------------------

    def _apply_live(self, events: Any, vectors: Any) -> None:
        model = self._served.model
        try:
            model.apply_catalog(events)
            model.apply_vectors(vectors)
        except Exception as exc:  # one bad record must not stop the tail
            log.error("serving.live_apply_failed", error=repr(exc))
        metrics.INDEX_ITEMS.set(model.cf_index.n_live)
        if self.tail is not None:
            metrics.INDEX_LAG.set(max(self.tail.lag, 0))

    async def _watch_latest(self) -> None:
        while True:
            await asyncio.sleep(self.options.bundle_poll_s)
            try:
                version = await asyncio.to_thread(latest_version, self.artifacts)
            except Exception:
                continue  # `latest` being replaced, or the folder gone for a moment
            if version in (self.model_version, self._failed_version):
                continue
            await self.reload(version)

    async def reload(self, version: str | None = None) -> bool:
        """Load ``version`` (default: ``latest``) off the loop and swap it in; ``False`` if it failed."""
        started = time.perf_counter()
        seq = self.tail.state.seq if self.tail is not None else 0
        live = self.tail.state.since(0) if self.tail is not None else ([], [])

        def build() -> RecommenderModel:
            model = RecommenderModel.load(self.artifacts, version)
            return model.with_live_state(*live)

        try:
            model = await asyncio.to_thread(build)
        except Exception as exc:
            self._failed_version = version
            metrics.RELOADS.labels("failed").inc()
            log.error("serving.reload_failed", version=version, error=repr(exc))
            return False
        if self.tail is not None:  # what arrived while the new model was built
            events, vectors = self.tail.state.since(seq)
            model.apply_catalog(events)
            model.apply_vectors(vectors)
        old = self.model_version
        served = self._serve(model, self.redis, self.options, self.item_states)
        if self._post_changes:
            served = _Served(model, served.store, dataclasses.replace(served.post, **self._post_changes),
                             served.reader)
        self._served = served  # the swap: one reference
        self.reloads += 1
        metrics.RELOADS.labels("ok").inc()
        metrics.INDEX_ITEMS.set(model.cf_index.n_live)
        log.info("serving.reloaded", old=old, new=model.version, seconds=round(time.perf_counter() - started, 3))
        return True

    # -- requests -----------------------------------------------------------------------------------

    async def recommend(self, req: RecommendRequest, assignments: Sequence[Assignment] = ()) -> dict[str, Any]:
        """The response body; never raises for a valid request. ``assignments``: the user's experiments (their
        variants' changes apply; the body says which ones ran, see :meth:`_recommend`)."""
        served = self._served  # this request's model, whatever a reload swaps in meanwhile
        t0 = time.perf_counter()
        try:
            return await self._recommend(served, req, t0, assignments)
        except Exception as exc:  # last line of defence: still answer
            log.error("serving.recommend_failed", user_id=req.user_id, request_id=req.request_id, error=repr(exc))
            return self.fallback(req, "internal", time.perf_counter() - t0)

    async def _retrieve(self, served: _Served, req: RecommendRequest, t0: float,
                        changes: Changes | None = None) -> _Prepared:
        """Stage 1 and the ranking state of one request: the online state's one read, retrieval, the candidates'
        feature state (shared by the list and the homepage). ``changes``: an experiment variant's (candidate
        budgets; ``online_state=False``: retrieval ignores the online vector and recent titles, as a frozen
        model would)."""
        model, opts = served.model, self.options
        now = req.now_ms if req.now_ms is not None else _now_ms()
        degraded: list[str] = []
        cfg = model.config.candidates
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop the inner task's own error when the
            # budget and redis-py's socket timeout fire together ("Task exception was never retrieved").
            async with asyncio.timeout(opts.candidates_timeout_ms / 1000):
                online = await read_online_state(
                    self.redis, served.store.keys, req.user_id, RequestScopes(req.country, req.device, req.hour), now,
                    trending_k=cfg.popular, new_k=2 * cfg.new_releases, window=opts.trending_window,
                    space=model.space, dim=model.dim, shared=self.shared_reads)
        except Exception as exc:
            degraded.append("redis_timeout_candidates" if isinstance(exc, TimeoutError) else "redis_candidates")
            online = self.shared_reads.last_known()
        snapshot = online.snapshot()
        budgets = None
        if changes is not None:
            if changes.online_state is False:
                snapshot = dataclasses.replace(snapshot, vector=None, recent=())
            if changes.candidates:
                budgets = dataclasses.replace(model.config.candidates, **changes.candidates)
        retrieved = retrieve(model, req, snapshot, now, budgets)
        t1 = time.perf_counter()
        state, problem = await self._ranking_state(served, req, retrieved, now, online.features_user)
        if problem:
            degraded.append(problem)
        for source, count in source_counts(retrieved.candidates).items():
            _candidates_metric(source).observe(count)
        return _Prepared(now, online, snapshot, retrieved, state, degraded,
                         {"candidates": t1 - t0, "features": time.perf_counter() - t1})

    def _finish(self, req: RecommendRequest, model: RecommenderModel, prepared: _Prepared, seconds: dict[str, float],
                t0: float, body: dict[str, Any]) -> dict[str, Any]:
        """The body's common part: version, degraded flags, stage timings (and their metrics)."""
        degraded = prepared.degraded
        timings = {"candidates": prepared.seconds["candidates"],
                   "features": prepared.seconds["features"] + seconds.pop("features"), **seconds,
                   "total": time.perf_counter() - t0}
        for stage, value in timings.items():
            _stage_metric(stage).observe(value)
        for reason in degraded:
            metrics.DEGRADED.labels(reason).inc()
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": model.version, **body,
                "degraded": bool(degraded), "timings_ms": _ms(timings),
                **({"degraded_reasons": degraded} if degraded else {})}

    async def _recommend(self, served: _Served, req: RecommendRequest, t0: float,
                         assignments: Sequence[Assignment] = ()) -> dict[str, Any]:
        """The list, with the user's experiments applied: the A/B variants' changes merged, and an interleaving
        experiment's two rankings drafted into one list. The body's ``experiments`` lists the ones that ran (a
        variant whose bundle is still loading is left out, and so is its exposure); ``_teams`` (popped by the HTTP
        layer for the exposure) holds each interleaving's team per position."""
        ran = list(assignments)
        changes = merged_changes(ran)
        if changes.bundle is not None:
            variant = self._variant_served(changes.bundle)
            if variant is None:  # not loaded (yet): the default system, and no exposure for those experiments
                ran = [a for a in ran if a.kind != "ab" or a.changes.bundle is None]
                changes = merged_changes(ran)
            else:
                served = variant
        model = served.model
        prepared = await self._retrieve(served, req, t0, changes)
        interleave = next((a for a in ran if a.kind == "interleave"), None)
        teams_of: dict[str, list[str]] = {}
        if interleave is None:
            ranked = self._rank(served, req, prepared, changes)
            items = ranked.answer.items(model)
        else:
            ranked, items, teams = await self._interleave(served, req, t0, prepared, changes, interleave)
            teams_of[interleave.experiment] = teams
        if ranked.ranker_error is not None:
            log.error("serving.ranker_failed", error=repr(ranked.ranker_error))
            prepared.degraded.append("ranking")
        body = self._finish(req, model, prepared, dict(ranked.seconds), t0, {"items": items})
        if ran:
            body["experiments"] = [{"name": a.experiment, "variant": a.variant} for a in ran]
            body["_teams"] = teams_of
        return body

    def _rank(self, served: _Served, req: RecommendRequest, prepared: _Prepared, changes: Changes) -> Ranked:
        """Stages 2 and 3 under a variant's changes (post-processing knobs; ``ranker=False``: retrieval order)."""
        post = dataclasses.replace(served.post, **changes.post()) if changes.post() else served.post
        model = served.model
        if changes.ranker is False:
            t0 = time.perf_counter()
            picked = answer(model, req, prepared.retrieved, fallback_scores(prepared.retrieved.candidates),
                            prepared.now, post)
            return Ranked(picked, None, {"features": 0.0, "ranking": 0.0, "postprocess": time.perf_counter() - t0})
        return rank_and_answer(model, req, prepared.retrieved, prepared.state, prepared.now, post)

    async def _interleave(self, served: _Served, req: RecommendRequest, t0: float, prepared: _Prepared,
                          changes: Changes, exp: Assignment) -> tuple[Ranked, list[dict[str, Any]], list[str]]:
        """Both teams' lists (one retrieval when their retrieval changes agree), drafted into one (team draft)."""
        answers: list[Ranked] = []
        for _, team_changes in exp.teams:
            merged = changes.merged(team_changes)
            same = (merged.candidates == changes.candidates and merged.online_state == changes.online_state)
            mine = prepared if same else await self._retrieve(served, req, t0, merged)
            answers.append(self._rank(served, req, mine, merged))
        model = served.model
        rows, teams = team_draft(answers[0].answer.rows, answers[1].answer.rows, req.k,
                                 f"{exp.experiment}:{req.request_id or req.user_id}")
        by_row: dict[int, dict[str, Any]] = {}
        for ranked in reversed(answers):  # team A's item payload wins for a title both ranked
            by_row.update(zip(ranked.answer.rows.tolist(), ranked.answer.items(model), strict=True))
        items = [by_row[r] for r in rows.tolist()]
        names = [exp.teams[t][0] for t in teams.tolist()]
        seconds = {k: sum(r.seconds.get(k, 0.0) for r in answers) for k in answers[0].seconds}
        error = next((r.ranker_error for r in answers if r.ranker_error is not None), None)
        return Ranked(answers[0].answer, error, seconds), items, names

    def _variant_served(self, version: str) -> _Served | None:
        """The bundle ``version`` an experiment's variant serves, or ``None`` while it loads (or failed)."""
        if version == self.model_version:
            return self._served
        if version in self._variants:
            return self._variants[version]
        if version not in self._loading:
            self._loading[version] = asyncio.create_task(self._load_variant(version), name=f"variant-{version}")
        return None

    async def _load_variant(self, version: str) -> None:
        try:
            model = await asyncio.to_thread(RecommenderModel.load, self.artifacts, version)
            self._variants[version] = self._serve(model, self.redis, self.options, self.item_states)
            log.info("serving.variant_bundle_loaded", version=version)
        except Exception as exc:
            self._variants[version] = None  # not retried: a missing version is a configuration error
            log.error("serving.variant_bundle_failed", version=version, error=repr(exc))

    async def homepage(self, hreq: HomepageRequest) -> dict[str, Any]:
        """The homepage's body (rows; see :mod:`models.recommend.homepage`); never raises for a valid request."""
        served = self._served
        t0 = time.perf_counter()
        req = hreq.base
        try:
            model = served.model
            prepared = await self._retrieve(served, req, t0)
            scores, error, seconds = rank(model, req, prepared.retrieved, prepared.state, prepared.now)
            if error is not None:
                log.error("serving.ranker_failed", error=repr(error))
                prepared.degraded.append("ranking")
            t1 = time.perf_counter()
            rows = build_rows(model, hreq, prepared.retrieved, prepared.snapshot, scores, prepared.now, served.post,
                              prepared.online.continue_watching)
            payload = [row_payload(model, prepared.retrieved, row) for row in rows]
            seconds["rows"] = time.perf_counter() - t1
            return self._finish(req, model, prepared, seconds, t0, {"rows": payload})
        except Exception as exc:  # last line of defence: still answer (the fallback list as one row)
            log.error("serving.homepage_failed", user_id=req.user_id, request_id=req.request_id, error=repr(exc))
            return self.homepage_fallback(hreq, "internal", time.perf_counter() - t0)

    def homepage_fallback(self, hreq: HomepageRequest, reason: str, seconds: float) -> dict[str, Any]:
        """The homepage when the service failed or ran out of time: one row of the fallback list, degraded."""
        body = self.fallback(hreq.base, reason, seconds)
        model = self._served.model
        listed = body.pop("items")[: hreq.per_row]
        index = model.items.index
        rows = np.array([index[i["item_id"]] for i in listed], np.int64)
        scores = np.array([i["score"] for i in listed], np.float64)
        row = Row("popular", "Popular on streamrec", "popular", rows, scores)
        return {**body, "rows": [row_payload(model, None, row)]}

    async def _ranking_state(self, served: _Served, req: RecommendRequest, retrieved: Retrieved, now: int,
                             user_value: StoredUser | None) -> tuple[RankingState, str | None]:
        """The user's and the candidates' feature state, or the features' defaults when it cannot be read."""
        model = served.model
        reader = served.reader
        assert reader is not None
        items = model.items
        rows = retrieved.candidates.items.astype(np.int64)
        if user_value is not None:  # the usual case: every candidate's row from this process, no I/O
            held = reader.held(req.user_id, user_value, rows, (items.ids, items.index), retrieved.static_lookup(model),
                               now)
            if held is not None:
                return RankingState(held.user, held.items, held.static), None
        ids = retrieved.item_ids(model)
        try:
            async with asyncio.timeout(self.options.features_timeout_ms / 1000):
                snap = await reader.read(req.user_id, ids, now, user=user_value)
            return RankingState(snap.user, snap.items, snap.static), None
        except Exception as exc:
            problem = "redis_timeout_features" if isinstance(exc, TimeoutError) else "redis_features"
            return unknown_state(model, ids, now), problem

    def fallback(self, req: RecommendRequest, reason: str, seconds: float) -> dict[str, Any]:
        """THE fallback answer (the service failed or ran out of time): popular available titles, degraded."""
        model = self._served.model
        metrics.DEGRADED.labels(reason).inc()
        try:
            items = top_up(model, np.zeros(0, np.int64), np.zeros(0, np.int64), req.k).items(model)
        except Exception:
            items = []
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": model.version,
                "items": items, "degraded": True, "degraded_reasons": [reason],
                "timings_ms": _ms({"candidates": 0.0, "features": 0.0, "ranking": 0.0, "postprocess": 0.0,
                                   "total": seconds})}

    async def similar(self, item_id: str, k: int) -> dict[str, Any] | None:
        """Titles like ``item_id`` (CF neighbours; content neighbours when it has no CF vector yet)."""
        model = self._served.model
        row = model.items.index.get(item_id)
        if row is None:
            return None
        t = model.items
        index = model.neighbour_index
        if row < len(index.live) and index.live[row]:
            labels, sims = index.query(index.vectors[row], k + 1 + min(k, int((~t.available).sum())))
            rows, scores = labels[0].astype(np.int64), sims[0]
            how = "Viewers of {} also watch this"
        else:  # a title with metadata but no vector yet: content similarity
            scores_all = t.content @ t.content[row]
            rows = np.argsort(-scores_all, kind="stable")[: k + 1 + int((~t.available).sum())].astype(np.int64)
            scores = scores_all[rows]
            how = "Similar in content to {}"
        inside = rows < len(t)
        rows, scores = rows[inside], scores[inside]
        keep = (rows != row) & t.available[rows]
        rows, scores = rows[keep][:k], scores[keep][:k]
        title = t.titles[row]
        items = [{"item_id": t.item_ids[r], "score": round(float(s), 6), "title": t.titles[r],
                  "reason": how.format(title)} for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]
        return {"item_id": item_id, "model_version": model.version, "items": items, "degraded": False}

    async def readiness(self) -> dict[str, Any]:
        model = self._served.model
        redis_ok = False
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.options.redis_timeout_s):
                redis_ok = bool(await self.redis.ping())
        caught_up = self.tail.caught_up if self.tail is not None else True
        lag = max(self.tail.lag, 0) if self.tail is not None else 0
        metrics.INDEX_LAG.set(lag)
        table = self.item_states
        return {"ready": caught_up, "bundle": model.version, "redis": redis_ok,
                "index": {"size": model.cf_index.n_live, "lag": lag, "caught_up": caught_up},
                # Until loaded, the candidates' rows are read from Redis (answers are the same, slower).
                "item_state": {"in_process": table is not None, "loaded": bool(table is not None and table.loaded),
                               "items": len(table) if table is not None else 0,
                               "reads_held": self._served.reader.held_reads if self._served.reader else 0}}


@functools.cache
def _stage_metric(stage: str) -> Any:
    """The stage's histogram child, looked up once (``labels()`` takes a lock and hashes per call)."""
    return metrics.STAGE_SECONDS.labels(stage)


@functools.cache
def _candidates_metric(source: str) -> Any:
    return metrics.CANDIDATES.labels(source)


def _ms(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in timings.items()}
