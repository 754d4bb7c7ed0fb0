"""The HTTP app (aiohttp on uvloop, orjson bodies): routes, validation, request ids, limits, metrics, lifecycle.

aiohttp rather than Starlette: the same server CPU per request in the comparison the README reports
(``benchmarks/bench_serving.py --compare-frameworks``), and it is already installed (Faust needs it).

Every resource (the recommendation service with its Redis pool, ONNX session and index; the Kafka producer) is opened
in the app's startup context, never at import, so ``create_app`` is cheap and tests can inject stubs. The guard
middleware turns anything a handler raises into a JSON answer: a 400 naming the field, a degraded 200 for the read
endpoints when the service fails or runs out of time, so a valid request never sees a 5xx other than a documented
503: /readyz before readiness, POST /v1/events when Kafka does not acknowledge, and a read request over the
admission limit (:mod:`serving.admission`), refused at once with ``Retry-After`` instead of queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec
import orjson
from aiohttp import web

from foundation.logs import get_logger
from foundation.redis_io import redis_client
from foundation.settings import Settings
from models.experiments.assignment import Assignment
from models.experiments.config import ConfigError, parse_config
from models.recommend.homepage import HomepageRequest
from models.recommend.pipeline import RecommendRequest
from online_state.api_keys import ADMIN, CATALOG_WRITE, EVENTS_WRITE, RECOMMENDATIONS_READ
from online_state.keys import DEFAULT_KEYS
from schemas.decoder import MAX_DEPTH, TOO_DEEP, too_deep
from schemas.events import is_catalog
from serving.admission import AdaptiveLimiter, LimitConfig
from serving.auth import (
    AUTH_REFUSED,
    EVENTS_RATE_LIMITED,
    HEADER,
    KeyRefresher,
    KeySource,
    KeyTable,
    Refusal,
    authorize,
    log_auth_mode,
    redis_key_source,
)
from serving.experiments import ExperimentsRegistry, ExposureLog
from serving.exposures import exposure_of
from serving.http_events import BodyError, EventPublisher, KafkaEventPublisher, PublisherUnavailable, decode_events
from serving.http_metrics import (
    ADMISSION_IN_FLIGHT,
    ADMISSION_LIMIT,
    ADMISSION_SHED,
    EVENTS_ACCEPTED,
    EVENTS_REFUSED,
    FALLBACK_ANSWERS,
    METRICS_CONTENT_TYPE,
    REQUEST_SECONDS,
    render_metrics,
)
from serving.http_validation import (
    ParamError,
    check_id,
    parse_homepage_request,
    parse_k,
    parse_recommend_request,
    request_id_from,
)
from serving.openapi import openapi_document
from serving.page import add_page_routes
from serving.rate_limit import RateLimiter, retry_after_header
from serving.service import RecommendationService

log = get_logger(__name__)


class Service(Protocol):
    """What the HTTP layer needs of :class:`serving.service.RecommendationService` (the contract with the core)."""

    @property
    def model_version(self) -> str: ...

    async def recommend(self, req: RecommendRequest, assignments: Sequence[Assignment] = ()) -> dict[str, Any]: ...

    def fallback(self, req: RecommendRequest, reason: str, seconds: float) -> dict[str, Any]: ...

    async def homepage(self, hreq: HomepageRequest) -> dict[str, Any]: ...

    def homepage_fallback(self, hreq: HomepageRequest, reason: str, seconds: float) -> dict[str, Any]: ...

    async def similar(self, item_id: str, k: int) -> dict[str, Any] | None: ...

    async def readiness(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class Publisher(EventPublisher, Protocol):
    def start_background(self) -> None: ...

    @property
    def connected(self) -> bool: ...


ServiceFactory = Callable[[Settings, Path | None], Awaitable[Service]]
PublisherFactory = Callable[[Settings], Publisher]

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", Service)  # type: ignore[type-abstract]
PUBLISHER = web.AppKey("publisher", Publisher)  # type: ignore[type-abstract]
REQUEST_ID = web.RequestKey("request_id", str)
ADMISSION = web.AppKey("admission", AdaptiveLimiter)
KEYS = web.AppKey("keys", KeyTable)  # the API keys this process accepts (serving/auth.py)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)  # events per key per second (serving/rate_limit.py)
EXPERIMENTS = web.AppKey("experiments", ExperimentsRegistry)  # the experiments document (serving/experiments.py)
EXPOSURES = web.AppKey("exposures", ExposureLog)  # answers in experiments, on their way to Kafka
# The read endpoints behind admission control; writes and operations are never shed.
_ADMITTED = frozenset({"/v1/recommendations/{user_id}", "/v1/homepage/{user_id}", "/v1/items/{item_id}/similar"})
RETRY_AFTER_S = 1  # what a shed request's Retry-After says

_JSON = "application/json"
_SLOW_S = 0.5  # answers slower than this are logged one by one
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY  # the service may hand back numpy scalars; orjson writes them natively


async def _default_service(settings: Settings, artifacts: Path | None) -> Service:
    return await RecommendationService.start(settings, artifacts)


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=_ORJSON_OPTS), status=status, content_type=_JSON)


def _error(status: int, field: str, message: str, request_id: str, **extra: Any) -> web.Response:
    return _json_response({"error": {"field": field, "message": message}, **extra, "request_id": request_id}, status)


# --- middleware ---------------------------------------------------------------------------------


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    request[REQUEST_ID] = request_id
    endpoint = _endpoint(request)
    limiter = request.app[ADMISSION] if endpoint in _ADMITTED else None
    shed = limiter is not None and not limiter.try_acquire()
    if shed:
        # Over the limit: refuse now rather than queue (a queued request only makes every other one later).
        ADMISSION_SHED.labels(endpoint).inc()
        response: web.StreamResponse = _error(503, "capacity", "the server is at its admission limit; retry",
                                              request_id)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    else:
        if limiter is not None:
            ADMISSION_IN_FLIGHT.set(limiter.in_flight)
        try:
            response = await _handle(request, handler, endpoint, request_id)
        finally:
            if limiter is not None:
                limiter.release(time.perf_counter() - started)
                ADMISSION_LIMIT.set(limiter.current_limit)
                ADMISSION_IN_FLIGHT.set(limiter.in_flight)
    response.headers["X-Request-ID"] = request_id
    elapsed = time.perf_counter() - started
    REQUEST_SECONDS.labels(endpoint, str(response.status)).observe(elapsed)
    if elapsed > _SLOW_S or (response.status >= 500 and not shed):
        # No log line per request (the histogram and the shed counter have the rates); only answers worth a look.
        log.warning("slow or failed request", endpoint=endpoint, status=response.status, request_id=request_id,
                    ms=round(elapsed * 1000, 1))
    return response


async def _handle(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  endpoint: str, request_id: str) -> web.StreamResponse:
    """The handler's response, or the JSON error answer for what it raised."""
    try:
        response = await handler(request)
    except ParamError as exc:
        response = _error(400, exc.field, exc.message, request_id)
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, "body", f"the body is larger than {request.app[SETTINGS].max_body_bytes} bytes",
                          request_id)
    except web.HTTPException as exc:  # aiohttp's own 404 / 405: same JSON shape as ours
        field = {404: "path", 405: "method"}.get(exc.status, "request")
        response = _error(exc.status, field, exc.reason, request_id)
        if "Allow" in exc.headers:  # a 405 says which methods the path takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
    except RecursionError:
        # Too deeply nested input that got past the depth checks: the client's fault, never a 5xx.
        extra = {"refused": [{"index": 0, "field": "$", "reason": TOO_DEEP}]} if endpoint == "/v1/events" else {}
        response = _error(400, "body", TOO_DEEP, request_id, **extra)
    except ConnectionResetError:
        # The client hung up while its body was being read: nothing of ours failed and nobody reads the answer
        # (aiohttp drops it quietly); not the traceback of an "unhandled error".
        log.debug("client closed the connection mid-request", endpoint=endpoint, request_id=request_id)
        response = _error(400, "body", "the connection closed before the body was read", request_id)
    except Exception:
        # Handlers answer the service's failures themselves; reaching here is a bug of ours. Say so in the log and
        # answer without a 5xx body the client cannot parse.
        log.exception("unhandled error", endpoint=endpoint, request_id=request_id)
        FALLBACK_ANSWERS.labels(endpoint, "unhandled").inc()
        response = _error(503, "server", "internal error; retry", request_id)
    return response


# --- read endpoints ------------------------------------------------------------------------------


async def _call_service(request: web.Request, endpoint: str, call: Awaitable[Any]) -> tuple[Any, str | None]:
    """Await a service call within the request budget; returns (result, None) or (None, why it failed)."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].request_timeout_s):
            return await call, None
    except TimeoutError:
        reason = "timeout"
    except Exception:
        log.exception("service call failed", endpoint=endpoint, request_id=request[REQUEST_ID])
        reason = "error"
    FALLBACK_ANSWERS.labels(endpoint, reason).inc()
    return None, reason


def _refuse(request: web.Request, endpoint: str, refusal: Refusal) -> web.Response:
    AUTH_REFUSED.labels(endpoint, refusal.reason).inc()
    return _error(refusal.status, HEADER, refusal.message, request[REQUEST_ID])


def _read_refusal(request: web.Request, endpoint: str) -> web.Response | None:
    """With ``STREAMREC_AUTH_READS`` on, the 401/403 of a caller without a ``recommendations:read`` key."""
    settings = request.app[SETTINGS]
    if not (settings.auth and settings.auth_reads):
        return None
    outcome = authorize(request.app[KEYS], request.headers.get(HEADER), (RECOMMENDATIONS_READ,))
    return _refuse(request, endpoint, outcome) if isinstance(outcome, Refusal) else None


async def _user_read(request: web.Request, endpoint: str, name: str, parse: Callable[..., Any],
                     call: Callable[[Service, Any], Awaitable[dict[str, Any]]],
                     fallback: Callable[[Service, Any, str, float], dict[str, Any]],
                     after: Callable[[Any, dict[str, Any], float], None] | None = None) -> web.Response:
    """A read of one user (the list, the homepage): the read key check, the parameters, the service call within
    the request budget, and the endpoint's degraded fallback answer (never a 5xx) when the call fails. ``after``
    sees the request and the body before it is sent (the list's exposure)."""
    started = time.perf_counter()
    if (refused := _read_refusal(request, endpoint)) is not None:
        return refused
    req = parse(request.match_info["user_id"], request[REQUEST_ID], request.query)
    service = request.app[SERVICE]
    body, failed = await _call_service(request, name, call(service, req))
    if failed is not None:
        body = fallback(service, req, failed, time.perf_counter() - started)
    if after is not None:
        after(req, body, time.perf_counter() - started)
    return _json_response(body)


async def recommend(request: web.Request) -> web.Response:
    app = request.app
    registry = app.get(EXPERIMENTS)

    def call(service: Service, req: RecommendRequest) -> Awaitable[dict[str, Any]]:
        now = req.now_ms if req.now_ms is not None else int(time.time() * 1000)
        assignments = registry.assign(req.user_id, now) if registry is not None else []
        return service.recommend(req, assignments)

    def after(req: RecommendRequest, body: dict[str, Any], seconds: float) -> None:
        # The exposure goes to a bounded buffer (no I/O here); the body keeps only the public {name, variant}.
        exposure = exposure_of(req, body, seconds, registry.config if registry is not None else None)
        if exposure is not None and EXPOSURES in app:
            app[EXPOSURES].offer(exposure)

    return await _user_read(request, "/v1/recommendations/{user_id}", "recommend", parse_recommend_request,
                            call, lambda service, req, why, s: service.fallback(req, why, s), after)


async def homepage(request: web.Request) -> web.Response:
    return await _user_read(request, "/v1/homepage/{user_id}", "homepage", parse_homepage_request,
                            lambda service, req: service.homepage(req),
                            lambda service, req, why, s: service.homepage_fallback(req, why, s))


async def similar(request: web.Request) -> web.Response:
    if (refused := _read_refusal(request, "/v1/items/{item_id}/similar")) is not None:
        return refused
    item_id = check_id(request.match_info["item_id"], "item_id")
    k = parse_k(request.query)
    service = request.app[SERVICE]
    body, failed = await _call_service(request, "similar", service.similar(item_id, k))
    if failed is not None:
        body = {"item_id": item_id, "model_version": service.model_version, "items": [], "degraded": True}
    elif body is None:
        return _error(404, "item_id", f"unknown item {item_id!r}", request[REQUEST_ID])
    return _json_response({**body, "request_id": request[REQUEST_ID]})


# --- writes --------------------------------------------------------------------------------------


async def post_events(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    request_id = request[REQUEST_ID]
    presented = request.headers.get(HEADER)
    if settings.auth:
        # Before the body is read: a caller without a valid write key costs no parsing. The scopes the batch needs
        # are only known once it is decoded (below); a key with neither write scope is refused here already.
        who = authorize(request.app[KEYS], presented, ())
        if isinstance(who, Refusal):
            return _refuse(request, "/v1/events", who)
        if not (who.allows(EVENTS_WRITE) or who.allows(CATALOG_WRITE)):
            return _refuse(request, "/v1/events", authorize(request.app[KEYS], presented, (EVENTS_WRITE,)))
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=settings.max_body_bytes, actual_size=request.content_length)
    raw = await request.read()  # bounded by client_max_size (= max_body_bytes) for chunked bodies too
    # Before any parsing (msgspec recurses). A batch array adds a level: an event too deep inside it is refused by
    # index, by the decoder, like any other invalid event of a batch.
    if too_deep(raw, MAX_DEPTH + (raw.lstrip()[:1] == b"[")):
        return _error(400, "body", TOO_DEEP, request_id, refused=[{"index": 0, "field": "$", "reason": TOO_DEEP}])
    try:
        batch = decode_events(raw, settings.max_events_per_request)
    except BodyError as exc:
        return _error(400, "body", exc.message, request_id, refused=[r.as_dict() for r in exc.refused])
    refused = [r.as_dict() for r in batch.refused]
    for refusal in batch.refused:
        EVENTS_REFUSED.labels(refusal.field).inc()
    if not batch.events:
        return _error(400, "body", "no event in the body is valid", request_id, refused=refused)
    if settings.auth:
        # Interaction events need events:write, catalogue events catalog:write; a batch of both needs both.
        needed = {CATALOG_WRITE if is_catalog(valid.event) else EVENTS_WRITE for valid in batch.events}
        who = authorize(request.app[KEYS], presented, needed)
        if isinstance(who, Refusal):
            return _refuse(request, "/v1/events", who)
        wait_s = request.app[RATE_LIMITER].take(who.name, len(batch.events))
        if wait_s > 0:
            EVENTS_RATE_LIMITED.inc(len(batch.events))
            response = _error(429, "rate", f"the key {who.name!r} is over its rate of "
                              f"{settings.rate_limit_events_per_s:g} events/s on this server; retry later",
                              request_id)
            response.headers["Retry-After"] = retry_after_header(wait_s)
            return response
    try:
        await request.app[PUBLISHER].publish(batch.events)
    except PublisherUnavailable as exc:
        log.warning("events not published", error=str(exc), events=len(batch.events), request_id=request_id)
        # Past the deadline the outcome is unknown: the broker may still have taken some of them (the probe saw
        # 16 of 153 events answered 503 applied). Say so; a retry is safe: the worker de-duplicates by event_id.
        response = _error(503, "kafka", f"{exc}; the events may or may not have been written: retrying them with "
                          "the same event_id is safe (each is applied once)", request_id, written="unknown")
        response.headers["Retry-After"] = "1"
        return response
    for valid in batch.events:
        EVENTS_ACCEPTED.labels(settings.topic_catalog if is_catalog(valid.event) else settings.topic_interactions).inc()
    return _json_response({"accepted": len(batch.events), "refused": refused, "request_id": request_id}, 202)


# --- experiments -------------------------------------------------------------------------------


def _admin_refusal(request: web.Request) -> web.Response | None:
    if not request.app[SETTINGS].auth:
        return None
    outcome = authorize(request.app[KEYS], request.headers.get(HEADER), (ADMIN,))
    return _refuse(request, "/v1/experiments", outcome) if isinstance(outcome, Refusal) else None


def _experiments_body(registry: ExperimentsRegistry) -> dict[str, Any]:
    """The document followed, as JSON types (the request id is in the X-Request-ID header)."""
    return msgspec.to_builtins(registry.config)  # type: ignore[no-any-return]


async def get_experiments(request: web.Request) -> web.Response:
    if (refused := _admin_refusal(request)) is not None:
        return refused
    return _json_response(_experiments_body(request.app[EXPERIMENTS]))


async def put_experiments(request: web.Request) -> web.Response:
    """Replace the experiments document (admin): validated, stored only when its version is newer (409 if not);
    every replica follows it within ``experiments_refresh_s``."""
    if (refused := _admin_refusal(request)) is not None:
        return refused
    request_id = request[REQUEST_ID]
    raw = await request.read()
    if too_deep(raw, MAX_DEPTH):
        return _error(400, "body", TOO_DEEP, request_id)
    try:
        config = parse_config(raw)
    except ConfigError as exc:  # 400: not a document of the schema; 422: a rule across its fields is broken
        return _error(422 if exc.rule else 400, exc.field, exc.message, request_id)
    registry = request.app[EXPERIMENTS]
    try:
        async with asyncio.timeout(request.app[SETTINGS].request_timeout_s * 4):
            written, stored = await registry.put(config)
    except Exception as exc:
        log.warning("experiments not stored", error=repr(exc)[:200], request_id=request_id)
        response = _error(503, "redis", "the experiments document could not be stored; retry", request_id)
        response.headers["Retry-After"] = "1"
        return response
    if not written:
        return _error(409, "version", f"the stored document has version {stored}; send a higher version",
                      request_id, stored_version=stored)
    log.info("experiments stored", version=config.version, request_id=request_id)
    return _json_response(_experiments_body(registry))


# --- operations ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        body = await request.app[SERVICE].readiness()
    except Exception as exc:
        log.warning("readiness check failed", error=str(exc))
        body = {"ready": False, "error": str(exc)}
    # The readiness: bundle loaded, index caught up *and* Redis reachable (the core's flag covers the first
    # two; a replica without Redis still answers, degraded, but should not be preferred by the load balancer).
    publisher = request.app[PUBLISHER]
    # A broker that cannot be reached makes the replica unready for writes: reads still work, but a load balancer
    # should send POST /v1/events elsewhere (it answers 503 within the publish deadline here).
    broker = bool(getattr(publisher, "broker_reachable", publisher.connected))
    ready = bool(body.get("ready")) and body.get("redis", True) is not False and broker
    body = {**body, "ready": ready, "events_producer": publisher.connected, "kafka": broker}
    return _json_response(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render_metrics(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_OPENAPI_BYTES], content_type=_JSON)


_OPENAPI_BYTES = web.AppKey("openapi_bytes", bytes)


# --- the app -------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    artifacts: Path | None = None,
    *,
    service_factory: ServiceFactory | None = None,
    publisher_factory: PublisherFactory | None = None,
    key_source: KeySource | None = None,
    experiments_factory: Callable[[Settings], ExperimentsRegistry] | None = None,
) -> web.Application:
    """The app; nothing is opened until it starts (then the service, then the Kafka producer in the background)."""
    app = web.Application(middlewares=[_guard], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[ADMISSION] = AdaptiveLimiter(LimitConfig(initial=settings.serving_admission_initial_limit,
                                                 min_limit=settings.serving_admission_min_limit,
                                                 max_limit=settings.serving_admission_max_limit))
    app[_OPENAPI_BYTES] = orjson.dumps(openapi_document())
    make_service = service_factory or _default_service
    make_publisher: PublisherFactory = publisher_factory or KafkaEventPublisher
    app[KEYS] = KeyTable(settings.api_key_value())
    app[RATE_LIMITER] = RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst)

    async def api_keys(app: web.Application) -> AsyncIterator[None]:
        # The shared key table: read once before serving, then every auth_keys_refresh_s in the background.
        load, close = (key_source, None) if key_source is not None else redis_key_source(settings)
        refresher = KeyRefresher(app[KEYS], load, settings.auth_keys_refresh_s,
                                 on_replace=lambda names: app[RATE_LIMITER].forget(names))
        if settings.auth:
            await refresher.refresh()
            refresher.start()
        log_auth_mode(settings, app[KEYS])
        try:
            yield
        finally:
            await refresher.close()
            if close is not None:
                await close()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        started = time.perf_counter()
        service = await make_service(settings, artifacts)
        publisher = make_publisher(settings)
        publisher.start_background()
        app[SERVICE] = service
        app[PUBLISHER] = publisher
        # Experiments: the shared document (its own small Redis client: short timeouts, never on a request's path)
        # and the exposures' buffer, sent through the events' producer.
        redis = None
        if experiments_factory is not None:
            registry = experiments_factory(settings)
        else:
            redis = redis_client(settings, socket_connect_timeout=1.0, socket_timeout=1.0)
            registry = ExperimentsRegistry(settings, redis, DEFAULT_KEYS)
        await registry.start()
        exposures = ExposureLog(publisher, settings.exposure_buffer, settings.exposure_flush_ms)
        exposures.start()
        app[EXPERIMENTS] = registry
        app[EXPOSURES] = exposures
        log.info("serving", model_version=service.model_version, startup_s=round(time.perf_counter() - started, 3))
        try:
            yield
        finally:
            await registry.close()
            await exposures.close()
            await publisher.close()
            await service.close()
            if redis is not None:
                await redis.aclose()
            log.info("stopped serving")

    app.cleanup_ctx.append(api_keys)
    app.cleanup_ctx.append(resources)
    app.router.add_get("/v1/recommendations/{user_id}", recommend)
    app.router.add_get("/v1/homepage/{user_id}", homepage)
    app.router.add_get("/v1/items/{item_id}/similar", similar)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/experiments", get_experiments)
    app.router.add_put("/v1/experiments", put_experiments)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    add_page_routes(app, settings, SERVICE, KEYS)  # GET / (the browser page) and GET /static/{name}
    return app
