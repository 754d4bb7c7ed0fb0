"""aiokafka clients built from the settings, so every tool connects the same way."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from foundation.settings import Settings


def connection_options(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """``bootstrap_servers`` plus the security options (SASL, TLS) of the settings, for any aiokafka client:
    producers, consumers and admin clients all connect through this, so none is left on plaintext."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap or settings.kafka_bootstrap,
        "security_protocol": protocol,
    }
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if protocol.endswith("SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    return options


def make_admin(settings: Settings, *, bootstrap: str | None = None, **overrides: Any) -> AIOKafkaAdminClient:
    """An admin client (not started) with the settings' bootstrap servers and security options."""
    return AIOKafkaAdminClient(**{**connection_options(settings, bootstrap), **overrides})


def make_producer(settings: Settings, *, enable_idempotence: bool = True, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer by default (acks=all): retries neither duplicate nor reorder."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "enable_idempotence": enable_idempotence,
        "acks": "all" if enable_idempotence else 1,
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def start_groupless(settings: Settings, topic: str, **overrides: Any) -> tuple[AIOKafkaConsumer, dict[Any, int]]:
    """A started consumer of every partition of ``topic`` without a group (aiokafka assigns all of them, and new
    ones; it starts at ``auto_offset_reset`` as there are no committed offsets), and the partitions' end offsets
    when it started (empty if the topic had no partition yet)."""
    consumer = make_consumer(settings, topic, group_id=None, enable_auto_commit=False, **overrides)
    try:
        await consumer.start()
        for _ in range(100):  # the assignment arrives with the first metadata
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        return consumer, (await consumer.end_offsets(tps) if tps else {})
    except BaseException:  # a broker gone mid-way: the caller never gets it, so it must not stay open
        await stop_quietly(consumer)
        raise


async def stop_quietly(client: Any) -> None:
    """Stop an aiokafka consumer or producer whatever state its broker is in. With the broker gone, a consumer's
    ``stop()`` cancels its fetch tasks and lets their ``CancelledError`` out (aiokafka's fetcher): that must not
    pass for the caller's own cancellation (a server shutting down stopped there, its other clients left open)."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
    except Exception:
        pass


def producer_failure(producer: AIOKafkaProducer | None) -> BaseException | None:
    """Why a started producer can no longer send (its sender task ended), or ``None`` while it can.

    aiokafka ends the sender task on an unexpected error and from then on fails every send with
    ``KafkaError('Unexpected error during batch delivery')``; the producer does not recover, so
    its owner must replace it. (Reads aiokafka internals, guarded: ``None`` if they move.)
    """
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if task is None or not task.done():
        return None
    if task.cancelled():
        return asyncio.CancelledError("the producer's sender task was cancelled")
    return task.exception() or RuntimeError("the producer's sender task ended")


def make_consumer(settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **connection_options(settings),
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


class KeyedBatchSender:
    """Publishes keyed records through per-partition batches: ~10x the throughput of ``send()``.

    ``AIOKafkaProducer.send`` costs a coroutine, a future and a partitioner call per record;
    building batches ourselves (the producer's own murmur2 partitioner, cached per key, so
    keys land where Java and Faust clients put them) leaves one future per batch. The batches
    still go through the producer's accumulator, so idempotence and per-partition order hold.

    One sender is one *unit of work*: :meth:`flush` waits for the acks of everything it sent.
    Tasks that must each know their own records acknowledged (the worker's concurrent partition
    batches) take their own sender with :meth:`fork` (it shares the partition caches). A sender
    is still safe to share between tasks: a batch leaves ``_open`` before the ``await`` that
    hands it over, so no batch is sent twice. (Sending one twice kills an idempotent aiokafka
    producer for good: its sender task dies on the already built batch, and the demo's worker
    then failed every batch.)
    """

    def __init__(self, producer: AIOKafkaProducer, key_cache_size: int = 1_000_000) -> None:
        self._producer = producer
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}
        self._key_cache_size = key_cache_size
        self._open: dict[tuple[str, int], Any] = {}
        self._acks: list[Any] = []

    def fork(self) -> KeyedBatchSender:
        """A sender of its own open batches and acks on the same producer and partition caches."""
        other = KeyedBatchSender.__new__(KeyedBatchSender)
        other._producer, other._partitioner = self._producer, self._partitioner
        other._partitions, other._key_partition = self._partitions, self._key_partition
        other._key_cache_size = self._key_cache_size
        other._open, other._acks = {}, []
        return other

    async def _partition(self, topic: str, key: bytes) -> int:
        cached = self._key_partition.get((topic, key))
        if cached is not None:
            return cached
        partitions = self._partitions.get(topic)
        if partitions is None:
            found = await self._producer.partitions_for(topic)
            if not found:
                raise LookupError(f"topic {topic!r} does not exist")
            partitions = self._partitions[topic] = sorted(found)
        if len(self._key_partition) >= self._key_cache_size:
            self._key_partition.clear()  # bounded memory for logs with millions of users
        partition = self._key_partition[(topic, key)] = self._partitioner(key, partitions, partitions)
        return partition

    async def add(self, topic: str, key: bytes, value: bytes) -> None:
        partition = await self._partition(topic, key)
        slot = (topic, partition)
        while True:
            batch = self._open.get(slot)
            if batch is None:
                batch = self._open[slot] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is not None:
                return
            # Full: hand it to the producer (this awaits when the accumulator is full, which is
            # the back-pressure we want) and put this record into the slot's next batch. The
            # batch leaves the slot before the await (see the class docstring).
            del self._open[slot]
            self._acks.append(await self._producer.send_batch(batch, topic, partition=partition))

    async def flush_open(self) -> None:
        """Send every partly filled batch now (paced replays must not wait for full batches)."""
        opened, self._open = self._open, {}  # taken before any await: a concurrent add opens new batches
        for (topic, partition), batch in opened.items():
            if batch.record_count():
                self._acks.append(await self._producer.send_batch(batch, topic, partition=partition))

    async def wait_acks(self) -> None:
        """Wait until the broker acknowledged everything sent so far; raises the first send error."""
        acks, self._acks = self._acks, []
        await asyncio.gather(*acks)

    async def flush(self) -> None:
        await self.flush_open()
        await self.wait_acks()
