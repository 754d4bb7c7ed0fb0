"""A Python client of the streamrec HTTP API: ``AsyncClient`` (asyncio) and ``Client`` (blocking), one API.

Built on httpx, whose sync and async clients share one interface, so the two classes share every line but the
I/O (the ``_Calls`` mixin builds requests and reads answers; ``_Tries`` is the retry loop, both clients'
``_send`` only do its sleeping and requesting). Results are typed (``Recommendations``,
``Similar``, ``EventsAccepted``); an API error is raised as :class:`ApiError` with the field the server named.

Retries: a connection error, 429 and 503 are retried with exponential backoff (``Retry-After`` when the server
sends one), ``retries`` times. Reads are idempotent. A batch of events is sent with each event's ``event_id``
fixed before the first try (one is made for events without one), so a retry after an unknown outcome (a 503
answered "may or may not have been written", a timeout) re-sends the same ids and the workers apply each once.
Events are validated against the ``schemas`` contracts before they leave the process: a bad event raises
:class:`~schemas.decoder.EventError` naming the field, instead of costing a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx
import orjson

from schemas.decoder import event_decoder
from schemas.events import Event, is_catalog, partition_key

if TYPE_CHECKING:
    from foundation.settings import Settings

RETRY_STATUSES: Final = frozenset({429, 503})
KEY_HEADER: Final = "X-API-Key"


class ApiError(RuntimeError):
    """A 4xx/5xx answer: ``status``, the ``field`` the server blamed, its ``message`` and the ``request_id``."""

    def __init__(self, status: int, field: str, message: str, request_id: str | None, body: Any = None) -> None:
        super().__init__(f"{status} {field}: {message} (request {request_id})")
        self.status, self.field, self.message, self.request_id, self.body = status, field, message, request_id, body


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    item_id: str
    score: float
    sources: list[str]
    reason: str | None


@dataclass(frozen=True, slots=True)
class Recommendations:
    user_id: str
    request_id: str
    model_version: str
    items: list[RecommendedItem]
    degraded: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The experiments this answer was part of, as (name, variant); send ``request_id`` with the events that follow
    # (every interaction event takes one) so the outcomes are attributed to this answer.
    experiments: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HomepageItem:
    item_id: str
    title: str
    genres: list[str]
    year: int | None
    score: float
    sources: list[str]
    progress: float | None = None  # continue_watching rows: how far in, 0..1


@dataclass(frozen=True, slots=True)
class HomepageRow:
    id: str  # "top_picks", "because_you_watched:{item}", "genre:{name}", ...
    title: str  # "Because you watched Heat (1995)"
    reason: str
    score: float  # the row's worth for the user (rows come sorted by it; continue watching pinned first)
    items: list[HomepageItem]
    seed_item_id: str | None = None
    genre: str | None = None


@dataclass(frozen=True, slots=True)
class Homepage:
    user_id: str
    request_id: str
    model_version: str
    rows: list[HomepageRow]
    degraded: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimilarItem:
    item_id: str
    score: float
    title: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Similar:
    item_id: str
    model_version: str
    items: list[SimilarItem]
    degraded: bool


@dataclass(frozen=True, slots=True)
class EventsAccepted:
    accepted: int
    refused: list[dict[str, Any]]
    request_id: str
    event_ids: list[str]  # the ids sent, in order (made here for events that had none)


def new_event_id() -> str:
    return uuid.uuid4().hex


def prepare_events(events: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[Event], bytes]:
    """Each event with an ``event_id`` (kept, or a new one), its decoded contract (raises
    :class:`~schemas.decoder.EventError` naming the field of the first invalid one) and the JSON body."""
    prepared = [{**event, "event_id": event.get("event_id") or new_event_id()} for event in events]
    decoded = [event_decoder.decode(orjson.dumps(event)) for event in prepared]
    return prepared, decoded, orjson.dumps(prepared)


class _Tries:
    """The retry policy of one call, without I/O, so that the sync and the async client run the one loop.

    Iterating yields, before each try, the seconds to sleep first (``None`` before the first try); after each try
    the caller sets :attr:`outcome` to the response or the transport error it raised. Iteration stops at a final
    outcome: an answer whose status is not retried, or any outcome once ``retries`` retries are spent.
    :meth:`final` then hands the response over, or raises the transport error.
    """

    def __init__(self, retries: int, backoff_s: float) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.outcome: httpx.Response | httpx.TransportError | None = None

    def __iter__(self) -> Iterator[float | None]:
        yield None
        for attempt in itertools.count():
            wait = self.wait(attempt, self.outcome)
            if wait is None:
                return
            yield wait

    def wait(self, attempt: int, outcome: httpx.Response | httpx.TransportError | None) -> float | None:
        """Seconds to wait before retrying after try ``attempt`` (0-based) ended in ``outcome``, or ``None`` when
        that outcome is final. The server's ``Retry-After`` wins over the exponential backoff when it is a number."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in RETRY_STATUSES:
                return None
            after = outcome.headers.get("Retry-After")
            if after is not None:
                with contextlib.suppress(ValueError):  # an HTTP date: fall back to the backoff
                    return float(after)
        return self.backoff_s * 2 ** attempt

    def final(self) -> httpx.Response:
        """The last try's response; its transport error re-raised when it had none."""
        if isinstance(self.outcome, httpx.Response):
            return self.outcome
        if self.outcome is None:
            raise RuntimeError("_Tries.final() before any try")
        raise self.outcome


class _Calls:
    """Requests and answers, shared by the sync and async clients (no I/O here)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, retries: int, backoff_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {KEY_HEADER: api_key} if api_key else {}
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s

    def _tries(self) -> _Tries:
        return _Tries(self.retries, self.backoff_s)

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        body = orjson.loads(response.content) if response.content else None
        if response.status_code >= 400:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(response.status_code, error.get("field", ""), error.get("message", response.text),
                           (body or {}).get("request_id") if isinstance(body, dict) else None, body)
        return body

    @staticmethod
    def _query(**params: Any) -> dict[str, Any]:
        return {k: v for k, v in params.items() if v is not None}

    @staticmethod
    def _recommendations(body: dict[str, Any]) -> Recommendations:
        items = [RecommendedItem(i["item_id"], float(i["score"]), list(i.get("sources", [])), i.get("reason"))
                 for i in body["items"]]
        experiments = [(str(e["name"]), str(e["variant"])) for e in body.get("experiments") or []]
        return Recommendations(body["user_id"], body["request_id"], body["model_version"], items,
                               bool(body["degraded"]), dict(body.get("timings_ms", {})), experiments)

    @staticmethod
    def _homepage_query(rows: int, per_row: int, device: str | None, country: str | None, hour: int | None,
                        now_ms: int | None) -> dict[str, Any]:
        return _Calls._query(rows=rows, per_row=per_row, device=device, country=country, hour=hour, now=now_ms)

    @staticmethod
    def _homepage(body: dict[str, Any]) -> Homepage:
        rows = [HomepageRow(r["id"], r["title"], r["reason"], float(r["score"]),
                            [HomepageItem(i["item_id"], i["title"], list(i["genres"]), i.get("year"), float(i["score"]),
                                          list(i.get("sources", [])), i.get("progress")) for i in r["items"]],
                            r.get("seed_item_id"), r.get("genre"))
                for r in body["rows"]]
        return Homepage(body["user_id"], body["request_id"], body["model_version"], rows, bool(body["degraded"]),
                        dict(body.get("timings_ms", {})))

    @staticmethod
    def _similar(body: dict[str, Any]) -> Similar:
        items = [SimilarItem(i["item_id"], float(i["score"]), i.get("title"), i.get("reason")) for i in body["items"]]
        return Similar(body["item_id"], body["model_version"], items, bool(body["degraded"]))


class AsyncClient(_Calls):
    """``async with AsyncClient(url, api_key=...) as api: await api.recommendations("u1")``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.2, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        tries = self._tries()
        for wait in tries:  # the I/O of the policy's loop; every decision is _Tries'
            if wait is not None:
                await asyncio.sleep(wait)
            try:
                tries.outcome = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                tries.outcome = error
        return self._body(tries.final())

    async def recommendations(self, user_id: str, *, k: int = 20, device: str | None = None,
                              country: str | None = None, hour: int | None = None,
                              now_ms: int | None = None) -> Recommendations:
        body = await self._send("GET", f"/v1/recommendations/{user_id}",
                                params=self._query(k=k, device=device, country=country, hour=hour, now=now_ms))
        return self._recommendations(body)

    async def homepage(self, user_id: str, *, rows: int = 8, per_row: int = 10, device: str | None = None,
                       country: str | None = None, hour: int | None = None, now_ms: int | None = None) -> Homepage:
        query = self._homepage_query(rows, per_row, device, country, hour, now_ms)
        return self._homepage(await self._send("GET", f"/v1/homepage/{user_id}", params=query))

    async def similar(self, item_id: str, *, k: int = 20) -> Similar:
        return self._similar(await self._send("GET", f"/v1/items/{item_id}/similar", params={"k": k}))

    async def send_events(self, events: Sequence[Mapping[str, Any]]) -> EventsAccepted:
        prepared, _, payload = prepare_events(events)
        body = await self._send("POST", "/v1/events", content=payload,
                                headers={"Content-Type": "application/json"})
        return EventsAccepted(body["accepted"], body.get("refused", []), body["request_id"],
                              [e["event_id"] for e in prepared])


class Client(_Calls):
    """The blocking twin of :class:`AsyncClient` (same methods, same retries)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.2, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff_s)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        tries = self._tries()
        for wait in tries:  # the async client's loop, with blocking I/O
            if wait is not None:
                time.sleep(wait)
            try:
                tries.outcome = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                tries.outcome = error
        return self._body(tries.final())

    def recommendations(self, user_id: str, *, k: int = 20, device: str | None = None, country: str | None = None,
                        hour: int | None = None, now_ms: int | None = None) -> Recommendations:
        body = self._send("GET", f"/v1/recommendations/{user_id}",
                          params=self._query(k=k, device=device, country=country, hour=hour, now=now_ms))
        return self._recommendations(body)

    def homepage(self, user_id: str, *, rows: int = 8, per_row: int = 10, device: str | None = None,
                 country: str | None = None, hour: int | None = None, now_ms: int | None = None) -> Homepage:
        query = self._homepage_query(rows, per_row, device, country, hour, now_ms)
        return self._homepage(self._send("GET", f"/v1/homepage/{user_id}", params=query))

    def similar(self, item_id: str, *, k: int = 20) -> Similar:
        return self._similar(self._send("GET", f"/v1/items/{item_id}/similar", params={"k": k}))

    def send_events(self, events: Sequence[Mapping[str, Any]]) -> EventsAccepted:
        prepared, _, payload = prepare_events(events)
        body = self._send("POST", "/v1/events", content=payload, headers={"Content-Type": "application/json"})
        return EventsAccepted(body["accepted"], body.get("refused", []), body["request_id"],
                              [e["event_id"] for e in prepared])


class EventProducer:
    """Publishes events straight to Kafka as the API does: each validated by the schemas, an ``event_id`` made
    where missing, keyed by the topic contract (user id, or item id for catalogue events, which go to the catalog
    topic), through the idempotent producer and batch sender of :mod:`foundation.kafka_io`; :meth:`publish`
    returns once the broker acknowledged the batch. Broker, topics and credentials come from ``settings``
    (default: the environment's, as every streamrec process reads them)."""

    def __init__(self, settings: Settings | None = None) -> None:
        from foundation.settings import get_settings

        self.settings = settings or get_settings()
        self._producer: Any = None
        self._sender: Any = None

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        from foundation.kafka_io import KeyedBatchSender, make_producer  # aiokafka only for those who publish

        self._producer = make_producer(self.settings)
        await self._producer.start()
        self._sender = KeyedBatchSender(self._producer)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = self._sender = None

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """Validate, then publish every event of the batch; the ``event_id``s used, in order."""
        if self._sender is None:
            raise RuntimeError("EventProducer.publish before start() (or use `async with`)")
        prepared, decoded, _ = prepare_events(events)  # all validated before the first record leaves
        s = self.settings
        for raw, event in zip(prepared, decoded, strict=True):
            topic = s.topic_catalog if is_catalog(event) else s.topic_interactions
            await self._sender.add(topic, partition_key(event).encode(), orjson.dumps(raw))
        await self._sender.flush()
        return [e["event_id"] for e in prepared]
