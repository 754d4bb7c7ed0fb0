"""The serving core: ``RecommendationService`` (the contract the HTTP layer codes against).

One request (``recommend``):

1. candidates — ONE pipelined Redis read (:mod:`serving.online_reads`: online user vector, session,
   recent items, trending for the request's context, new releases) under ``candidates_timeout_ms``,
   then every source in memory (:func:`serving.pipeline.generate`), merged with source bits;
2. features — ONE round trip for the user's and the candidates' feature state
   (:class:`serving.feature_read.FeatureReader`: the store's keys, one server-side script instead of
   one ``HMGET`` per candidate) under ``features_timeout_ms``, then
   :func:`models.features.rows.feature_batch`, the one feature definition;
3. ranking — ONNX Runtime over the whole batch (one ``run``; one intra-op thread);
4. post-processing — boosts, freshness, MMR, reasons.

Degrading, not failing: a Redis read that fails or times out is replaced by what the process has
(the last trending / new-releases answer, the bundle's history and vector of the user, empty
feature state) and the answer says ``"degraded": true``; a ranker failure falls back to source
ranks; anything else unexpected still returns the cached popular titles. Unknown users get the
cold-start mix (trending, new releases) and are not degraded.

Live index and hot reload: :class:`serving.live_tail.LiveTail` applies ``catalog`` and
``item-vectors`` records to the current model; a watcher polls the bundle's ``latest`` every
``bundle_poll_s``, builds the new :class:`~serving.model_state.ServingModel` in a thread, replays
the tailed state onto it and swaps one reference. Requests hold the model they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foundation.logs import get_logger
from foundation.settings import Settings
from models.bundle import BundleError, latest_version
from models.dataset import DEVICE_CODE, MATURITY_ORDER
from models.features.batch import FeatureBatch
from models.features.hashing import hash_str
from models.features.rows import RequestContext, feature_batch
from models.features.spec import country_code
from models.features.state import ITEM_COUNT_NAMES, ItemStates, UserStates
from models.postprocess import PostConfig
from online_state.redis_store import RedisFeatureStore
from serving import metrics
from serving.feature_read import FeatureReader
from serving.live_tail import LiveTail
from serving.model_state import ServingModel
from serving.online_reads import OnlineState, RequestScopes, SharedReads, read_online_state
from serving.options import ServingOptions, options_from_settings
from serving.pipeline import (
    Stage1,
    extra_dense,
    fallback_scores,
    generate,
    postprocess,
    reasons,
    source_counts,
    source_names,
    user_context,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class RecommendRequest:
    user_id: str
    request_id: str
    k: int = 20  # 1..200, validated by the HTTP layer
    device: str | None = None  # as in schemas (tv, mobile, web, tablet, ...)
    country: str | None = None  # ISO 3166 alpha-2
    hour: int | None = None  # local hour 0..23
    session_id: str | None = None
    maturity_limit: str | None = None  # the profile's limit (MATURITY_ORDER); None: the bundle's, else none
    # The request's time (epoch ms); None: the wall clock. Replays and backtests of a recorded log
    # (eval-stream, the demo) ask "as of" the log's time, so that decays, recency and the new-release
    # window read the state as the workers wrote it (event time), not months later.
    now_ms: int | None = None


class NoBundleError(RuntimeError):
    """There is no model bundle to serve (run ``streamrec train`` first)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Served:
    """The current model and what belongs to it (swapped as one reference)."""

    model: ServingModel
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
        self._trending_cache: dict[str, list[tuple[str, float]]] = {}
        self._new_cache: list[tuple[str, int]] = []
        # Trending lists and new releases, shared by every request for shared_reads_ttl_s (not model state).
        self.shared_reads = SharedReads(options.shared_reads_ttl_s)
        self.reloads = 0
        self._post_changes: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    @classmethod
    async def start(cls, settings: Settings, artifacts: Path | None = None, *, tail_index: bool = True,
                    watch_bundle: bool = True, options: ServingOptions | None = None) -> RecommendationService:
        """Open the Redis pool, load the bundle (``latest``), start the tail and the bundle watcher.

        ``options`` defaults to the settings' ``serving_*`` fields (see :mod:`serving.options`).
        """
        import redis.asyncio as aioredis

        options = options or options_from_settings(settings)
        root = Path(artifacts if artifacts is not None else settings.artifacts)
        try:
            model = await asyncio.to_thread(ServingModel.load, root)
        except (BundleError, FileNotFoundError) as exc:
            raise NoBundleError(f"no model bundle to serve under {root}: {exc} (run `streamrec train`)") from exc
        # Short socket timeouts: a dead or hung Redis must fail inside the stage budget, not after seconds.
        redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=options.redis_timeout_s,
                                        socket_timeout=options.redis_timeout_s, retry_on_timeout=False)
        service = cls(settings, root, cls._serve(model, redis, options), redis, options)
        # Open a connection now so that the first request does not pay the connect inside its budget.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(redis.ping(), options.redis_timeout_s)
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
    def _serve(model: ServingModel, redis: Any, options: ServingOptions) -> _Served:
        post = model.config.post
        changes = {"diversity": options.diversity, "original_boost": options.original_boost,
                   "new_release_boost": options.new_release_boost,
                   "freshness_half_life_days": options.freshness_half_life_days}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            import dataclasses

            post = dataclasses.replace(post, **changes)
        store = RedisFeatureStore(redis, model.static, prefix=options.redis_prefix)
        return _Served(model, store, post, FeatureReader(store, options.item_state_ttl_s))

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        if self.tail is not None:
            await self.tail.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def set_post(self, **changes: Any) -> None:
        """Change post-processing knobs at runtime (diversity, boosts, freshness) for later requests."""
        import dataclasses

        self._post_changes.update(changes)  # kept across hot reloads
        served = self._served
        self._served = _Served(served.model, served.store, dataclasses.replace(served.post, **changes), served.reader)

    async def use_redis(self, client: Any) -> None:
        """Point the service at another Redis client (failover; tests redirect it to a dead port)."""
        old, self.redis = self.redis, client
        served = self._served
        store = RedisFeatureStore(client, served.model.static, prefix=self.options.redis_prefix)
        self._served = _Served(served.model, store, served.post, FeatureReader(store, self.options.item_state_ttl_s))
        with contextlib.suppress(Exception):
            await old.aclose()

    @property
    def model_version(self) -> str:
        return self._served.model.version

    @property
    def model(self) -> ServingModel:
        return self._served.model

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

        def build() -> ServingModel:
            model = ServingModel.load(self.artifacts, version)
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
        served = self._serve(model, self.redis, self.options)
        if self._post_changes:
            import dataclasses

            served = _Served(model, served.store, dataclasses.replace(served.post, **self._post_changes),
                             served.reader)
        self._served = served  # the swap: one reference
        self.reloads += 1
        metrics.RELOADS.labels("ok").inc()
        metrics.INDEX_ITEMS.set(model.cf_index.n_live)
        log.info("serving.reloaded", old=old, new=model.version, seconds=round(time.perf_counter() - started, 3))
        return True

    # -- requests -----------------------------------------------------------------------------------

    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        """The response body (see the module docstring); never raises for a valid request."""
        served = self._served  # this request's model, whatever a reload swaps in meanwhile
        t0 = time.perf_counter()
        try:
            return await self._recommend(served, req, t0)
        except Exception as exc:  # last line of defence: still answer, from the cached trending titles
            log.error("serving.recommend_failed", user_id=req.user_id, request_id=req.request_id, error=repr(exc))
            metrics.DEGRADED.labels("internal").inc()
            return self._fallback(served, req, t0)

    async def _recommend(self, served: _Served, req: RecommendRequest, t0: float) -> dict[str, Any]:
        model, opts = served.model, self.options
        now = req.now_ms if req.now_ms is not None else _now_ms()
        degraded: list[str] = []
        scopes = RequestScopes(country=req.country, device=req.device, hour=req.hour)
        cfg = model.config.candidates
        online: OnlineState | None
        try:
            online = await asyncio.wait_for(read_online_state(
                self.redis, req.user_id, scopes, now, trending_k=cfg.popular, new_k=2 * cfg.new_releases,
                window=opts.trending_window, space=model.space, dim=model.dim, prefix=opts.redis_prefix,
                feature_user_key=served.store.user_key(req.user_id), shared=self.shared_reads),
                opts.candidates_timeout_ms / 1000)
            if online.trending.get("all"):
                self._trending_cache = {"all": online.trending["all"]}
            if online.new_releases:
                self._new_cache = online.new_releases
        except Exception as exc:
            degraded.append("redis_timeout_candidates" if isinstance(exc, TimeoutError) else "redis_candidates")
            online = OnlineState(trending=dict(self._trending_cache), new_releases=list(self._new_cache))
        limit = MATURITY_ORDER.index(req.maturity_limit) if req.maturity_limit in MATURITY_ORDER else None
        user = user_context(model, req.user_id, online, limit)
        stage1 = generate(model, user, online, now)
        t1 = time.perf_counter()

        batch, feature_problem = await self._features(served, req, stage1, now)
        if feature_problem:
            degraded.append(feature_problem)
        t2 = time.perf_counter()
        try:
            scores = model.ranker.score(batch)
        except Exception as exc:
            log.error("serving.ranker_failed", error=repr(exc))
            degraded.append("ranking")
            scores = fallback_scores(stage1.candidates)
        t3 = time.perf_counter()

        picked = postprocess(model, stage1.candidates, scores, req.k, now, served.post)
        why = reasons(model, stage1, picked, now, served.post)
        sources = source_names(stage1.candidates, picked.positions)
        ids = model.items.ids[picked.rows].tolist()
        items = [{"item_id": i, "score": round(float(s), 6), "sources": src, "reason": r}
                 for i, s, src, r in zip(ids, picked.scores.tolist(), sources, why, strict=True)]
        if len(items) < req.k:
            items += self._top_up(served, req, set(ids), user.history_items, req.k - len(items))
        t4 = time.perf_counter()
        timings = {"candidates": t1 - t0, "features": t2 - t1, "ranking": t3 - t2, "postprocess": t4 - t3,
                   "total": t4 - t0}
        for stage, seconds in timings.items():
            metrics.STAGE_SECONDS.labels(stage).observe(seconds)
        for source, count in source_counts(stage1.candidates).items():
            metrics.CANDIDATES.labels(source).observe(count)
        for reason in degraded:
            metrics.DEGRADED.labels(reason).inc()
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": model.version,
                "items": items, "degraded": bool(degraded), "timings_ms": _ms(timings),
                **({"degraded_reasons": degraded} if degraded else {})}

    async def _features(self, served: _Served, req: RecommendRequest, stage1: Stage1, now: int
                        ) -> tuple[FeatureBatch, str | None]:
        model = served.model
        ids = model.items.ids[stage1.candidates.items].tolist()
        extra = extra_dense(model, stage1)
        context = RequestContext(device=DEVICE_CODE.get(req.device or "", 0), country=country_code(req.country),
                                 hour=req.hour if req.hour is not None else -1)
        problem: str | None = None
        try:
            assert served.reader is not None
            snap = await asyncio.wait_for(served.reader.read(req.user_id, ids, now),
                                          self.options.features_timeout_ms / 1000)
            user, item_states, static = snap.user, snap.items, snap.static
        except Exception as exc:
            problem = "redis_timeout_features" if isinstance(exc, TimeoutError) else "redis_features"
            # Nothing known online: the features' own defaults for a new user and unseen items.
            user = UserStates.empty(1, model.static.n_genres)
            n = len(ids)
            epochs = ItemStates.epochs_at(now)
            item_states = ItemStates(counts=np.zeros((n, len(ITEM_COUNT_NAMES)), np.int64),
                                     pop=np.zeros((n, len(epochs), 2), np.int64), epoch=epochs)
            static = model.static.rows(*model.static.lookup(ids))
        batch = feature_batch(hash_str(req.user_id), user, item_states, static, context, now, extra)
        return batch, problem

    def _top_up(self, served: _Served, req: RecommendRequest, have: set[str], history: Any, n: int
                ) -> list[dict[str, Any]]:
        """Popular unseen, available titles when the candidate set was too thin for ``k``."""
        model = served.model
        t = model.items
        order = np.argsort(-t.popularity, kind="stable")
        seen = np.zeros(len(t), bool)
        seen[np.asarray(history, np.int64)] = True
        order = order[t.available[order] & ~seen[order]]
        out = []
        for row in order[: n + len(have)].tolist():
            item_id = t.item_ids[row]
            if item_id in have:
                continue
            out.append({"item_id": item_id, "score": 0.0, "sources": ["popular"], "reason": "Popular on streamrec"})
            if len(out) == n:
                break
        return out

    def _fallback(self, served: _Served, req: RecommendRequest, t0: float) -> dict[str, Any]:
        try:
            items = self._top_up(served, req, set(), np.zeros(0, np.int64), req.k)
        except Exception:
            items = []
        total = time.perf_counter() - t0
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": served.model.version,
                "items": items, "degraded": True,
                "timings_ms": _ms({"candidates": 0.0, "features": 0.0, "ranking": 0.0, "postprocess": 0.0,
                                   "total": total}), "degraded_reasons": ["internal"]}

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
            redis_ok = bool(await asyncio.wait_for(self.redis.ping(), self.options.redis_timeout_s))
        caught_up = self.tail.caught_up if self.tail is not None else True
        lag = max(self.tail.lag, 0) if self.tail is not None else 0
        metrics.INDEX_LAG.set(lag)
        return {"ready": caught_up, "bundle": model.version, "redis": redis_ok,
                "index": {"size": model.cf_index.n_live, "lag": lag, "caught_up": caught_up}}


def _ms(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in timings.items()}
