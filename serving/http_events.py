"""POST /v1/events: split a body into valid events and refusals by index, then publish the valid ones to Kafka.

The body is one event object or a JSON array of them. msgspec cuts an array into its raw elements without building
Python objects, and each element goes through the contract decoder of ``schemas/`` on its own, so every refusal names
its index and the JSON path of the offending field (``$.context.local_hour``), exactly as a worker would dead-letter it.
A valid event is published as the bytes the client sent (the policy of ``streamrec replay`` too): what reaches Kafka
is what was validated, never a re-encoding of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from foundation.kafka_io import KeyedBatchSender, make_producer
from foundation.logs import get_logger
from foundation.settings import Settings
from schemas.decoder import EventError, event_decoder
from schemas.events import Event, is_catalog, partition_key

log = get_logger(__name__)

_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_ONE = msgspec.json.Decoder(msgspec.Raw)  # checks that the body is one JSON document, builds nothing


@dataclass(frozen=True, slots=True)
class Refusal:
    index: int
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ValidEvent:
    """A valid event and the exact bytes it was decoded from (what is published)."""

    event: Event
    original: bytes


@dataclass(slots=True)
class DecodedBatch:
    events: list[ValidEvent] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    is_batch: bool = False


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, empty, too many events): a 400 naming ``body``."""

    def __init__(self, message: str, refused: list[Refusal] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused or []


def decode_events(body: bytes, max_events: int) -> DecodedBatch:
    """Validate a POST body. Raises :class:`BodyError` when it is not JSON, is an empty array or holds more than
    ``max_events`` events; otherwise returns the valid events (in order) and the refused ones by index."""
    start = body.lstrip()[:1]
    if start == b"[":
        try:
            raws = _RAW_ARRAY.decode(body)
        except msgspec.DecodeError as exc:
            raise BodyError("body is not JSON", [Refusal(0, "$", str(exc))]) from None
        if not raws:
            raise BodyError("the array holds no event")
        if len(raws) > max_events:
            raise BodyError(f"at most {max_events} events per request, got {len(raws)}")
        batch = DecodedBatch(is_batch=True)
    else:
        try:
            raws = [_RAW_ONE.decode(body)]
        except msgspec.DecodeError as exc:
            raise BodyError("body is not JSON", [Refusal(0, "$", str(exc))]) from None
        batch = DecodedBatch(is_batch=False)
    for index, raw in enumerate(raws):
        try:
            original = bytes(raw)
            batch.events.append(ValidEvent(event_decoder.decode(original), original))
        except EventError as exc:
            batch.refused.append(Refusal(index, exc.field, exc.reason))
    return batch


class EventPublisher(Protocol):
    async def publish(self, events: list[ValidEvent]) -> None: ...

    async def close(self) -> None: ...


class PublisherUnavailable(RuntimeError):
    """Kafka cannot take the events now (not connected yet, or no acknowledgement in time): answer 503."""


class KafkaEventPublisher:
    """Publishes through one idempotent aiokafka producer (acks=all), started in the background so that a server
    whose Kafka is briefly away still serves reads; keys and topics follow ``schemas.topics``."""

    def __init__(self, settings: Settings, probe_s: float = 2.0) -> None:
        self._settings = settings
        self._producer: Any = None
        self._starting: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[None] | None = None
        self.probe_s = probe_s
        self.close_timeout_s = 5.0
        # Whether the broker answered lately: a connected producer keeps existing while its broker is down (aiokafka
        # reconnects by itself), so /readyz asks this, kept by a metadata probe and by each publish's outcome.
        self.broker_reachable = False

    def start_background(self) -> None:
        loop = asyncio.get_running_loop()
        self._starting = loop.create_task(self._connect(), name="events-producer-start")
        self._probing = loop.create_task(self._probe(), name="events-broker-probe")

    async def _probe(self) -> None:
        """Every ``probe_s``: one metadata request to the cluster (bounded by the publish deadline)."""
        while True:
            await asyncio.sleep(self.probe_s)
            producer = self._producer
            if producer is None:
                continue
            try:
                async with asyncio.timeout(self._settings.events_publish_timeout_s):
                    await producer.client.fetch_all_metadata()
                self.broker_reachable = True
            except asyncio.CancelledError:
                raise
            except Exception:
                self.broker_reachable = False

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            producer = make_producer(self._settings, linger_ms=1)
            try:
                await producer.start()
            except asyncio.CancelledError:
                await producer.stop()  # closed while connecting: leave no connection behind
                raise
            except Exception as exc:  # Kafka not reachable yet: keep serving reads, retry with back-off
                log.warning("events producer not connected; retrying", error=str(exc), retry_s=delay)
                await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._producer = producer
            self.broker_reachable = True
            log.info("events producer connected", bootstrap=self._settings.kafka_bootstrap)
            return

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def publish(self, events: list[ValidEvent]) -> None:
        if self._producer is None:
            raise PublisherUnavailable("not connected to Kafka yet")

        # One sender per request: records are packed into per-partition batches, one future per batch rather than
        # per record; the producer's accumulator keeps per-partition order across concurrent requests.
        sender = KeyedBatchSender(self._producer)
        topics = (self._settings.topic_interactions, self._settings.topic_catalog)
        try:
            async with asyncio.timeout(self._settings.events_publish_timeout_s):
                for valid in events:
                    event = valid.event
                    await sender.add(topics[is_catalog(event)], partition_key(event).encode(), valid.original)
                await sender.flush()
        except (TimeoutError, LookupError, OSError) as exc:
            self.broker_reachable = False
            raise PublisherUnavailable(f"Kafka did not acknowledge the events: {exc or 'timeout'}") from exc
        except Exception as exc:  # aiokafka's KafkaError family: the broker refused or went away
            self.broker_reachable = False
            raise PublisherUnavailable(f"Kafka refused the events: {exc}") from exc
        self.broker_reachable = True

    async def close(self) -> None:
        for task in (self._probing, self._starting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._producer is not None:
            producer, self._producer = self._producer, None
            # stop() flushes what is still in the accumulator: with the broker gone that never ends, and a server
            # must still shut down (what is left was answered 503, "may or may not have been written").
            try:
                async with asyncio.timeout(self.close_timeout_s):
                    await producer.stop()
            except TimeoutError:
                log.warning("events producer closed with unsent events (broker unreachable)")
