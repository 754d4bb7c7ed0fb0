"""``KeyedBatchSender`` shared by concurrent tasks (the pure batching logic, with a fake producer).

The demo's worker once ran four catalog batches through one sender: a task flushing its open
batches awaited while another added to the same dict ("dictionary changed size during iteration"),
and a batch was handed to the producer twice, which killed the real producer. Here the fake
producer yields on every hand-over, as the real one may, and refuses a batch it has seen.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foundation.kafka_io import KeyedBatchSender, producer_failure


class _Batch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class _Producer:
    def __init__(self, capacity: int = 3, partitions: int = 4) -> None:
        self.capacity = capacity
        self.partitions = set(range(partitions))
        self.sent: list[tuple[str, int, _Batch]] = []
        self.metadata_calls = 0

    async def partitions_for(self, topic: str) -> set[int]:
        self.metadata_calls += 1
        await asyncio.sleep(0)
        return self.partitions

    def create_batch(self) -> _Batch:
        return _Batch(self.capacity)

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        if any(b is batch for _, _, b in self.sent):
            raise AssertionError("a batch was handed to the producer twice")
        self.sent.append((topic, partition, batch))
        await asyncio.sleep(0)  # the accumulator may wait for room: other tasks run meanwhile
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def _publish(sender: KeyedBatchSender, tag: str, n: int) -> None:
    for i in range(n):
        await sender.add("t", f"{tag}-{i}".encode(), f"{tag}:{i}".encode())
        if i % 7 == 0:
            await asyncio.sleep(0)
    await sender.flush()


@pytest.mark.parametrize("fork", [False, True])
async def test_concurrent_tasks_send_every_record_once(fork: bool) -> None:
    producer = _Producer()
    shared = KeyedBatchSender(producer)  # type: ignore[arg-type]
    senders = [shared.fork() if fork else shared for _ in range(4)]
    await asyncio.gather(*(_publish(s, f"task{j}", 50) for j, s in enumerate(senders)))
    await shared.flush()
    values = [v for _, _, batch in producer.sent for _, v in batch.records]
    expected = {f"task{j}:{i}".encode() for j in range(4) for i in range(50)}
    assert len(values) == len(expected) and set(values) == expected
    # Per-partition order of each key's task is kept: records of one task appear in the order added.
    for j in range(4):
        mine = [int(v.split(b":")[1]) for v in values if v.startswith(f"task{j}:".encode())]
        by_partition: dict[int, list[int]] = {}
        for (_, partition, batch) in producer.sent:
            for _key, v in batch.records:
                if v.startswith(f"task{j}:".encode()):
                    by_partition.setdefault(partition, []).append(int(v.split(b":")[1]))
        assert all(seq == sorted(seq) for seq in by_partition.values())
        assert sorted(mine) == list(range(50))


async def test_fork_shares_the_partition_caches_but_not_the_batches() -> None:
    producer = _Producer()
    parent = KeyedBatchSender(producer)  # type: ignore[arg-type]
    await parent.add("t", b"k", b"1")
    child = parent.fork()
    await child.add("t", b"k", b"2")
    assert producer.metadata_calls == 1  # the topic's partitions were looked up once
    await child.flush()
    assert [b.records for _, _, b in producer.sent] == [[(b"k", b"2")]]  # the parent's batch is still open
    await parent.flush()
    assert [b.records for _, _, b in producer.sent] == [[(b"k", b"2")], [(b"k", b"1")]]


async def test_producer_failure_reads_the_sender_task() -> None:
    class _Sender:
        def __init__(self, task: asyncio.Task[None]) -> None:
            self.sender_task = task

    class _Dead:
        pass

    async def dies() -> None:
        raise AttributeError("'BatchBuilder' object has no attribute '_builder'")

    task = asyncio.create_task(dies())
    await asyncio.gather(task, return_exceptions=True)
    dead = _Dead()
    dead._sender = _Sender(task)  # type: ignore[attr-defined]
    failure = producer_failure(dead)  # type: ignore[arg-type]
    assert isinstance(failure, AttributeError)

    running = asyncio.create_task(asyncio.sleep(10))
    alive = _Dead()
    alive._sender = _Sender(running)  # type: ignore[attr-defined]
    assert producer_failure(alive) is None  # type: ignore[arg-type]
    assert producer_failure(None) is None
    running.cancel()
