"""The exactly-once batch protocol (:mod:`streams.batch_protocol`) on fakeredis: what it hands the effects, what it
commits with the offset, and the fence a zombie's commit runs into."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

from online_state.keys import KeyLayout
from streams.batch_protocol import Fenced, apply_batch
from streams.effects import Batch, BatchInfo, Effect, Reads

KEYS = KeyLayout("t")
OFFSET = KEYS.offset("interactions", 0)


class Counter(Effect[str]):
    """Reads a counter, writes it back plus the batch's events (a read-modify-write, like the user state)."""

    name = "counter"

    def __init__(self, key: str) -> None:
        self.key = key
        self.log: list[tuple[str, Any]] = []

    def read(self, pipe: Any, batch: Batch[str]) -> Reads[int]:
        pipe.get(self.key)
        pipe.get(self.key)  # two commands: the protocol hands this effect exactly its two replies
        return Reads(queued=2, state=len(batch.events))

    def write(self, pipe: Any, batch: Batch[str], reads: Reads[int]) -> None:
        assert reads.replies[0] == reads.replies[1]
        before = int(reads.replies[0] or 0)
        pipe.set(self.key, before + (reads.state or 0))
        pipe.incr(f"{self.key}:writes")

    def committed(self, batch: Batch[str], reads: Reads[int], replies: list[Any]) -> None:
        self.log.append(("committed", replies))

    def failed(self, batch: Batch[str], reads: Reads[int]) -> None:
        self.log.append(("failed", batch.info.last_offset))


def _records(first: int, n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=first + k, event=f"e{first + k}") for k in range(n)]


async def _prepare(fresh: Sequence[Any]) -> Batch[str]:
    return Batch(BatchInfo("interactions", 0, fresh[0].offset, fresh[-1].offset), [r.event for r in fresh])


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


async def test_writes_and_offset_commit_together_and_each_effect_gets_its_replies(
        redis: fakeredis.FakeAsyncRedis) -> None:
    a, b = Counter("a"), Counter("b")
    outcome = await apply_batch(redis, OFFSET, _records(0, 5), _prepare, [a, b])
    assert (outcome.skipped, outcome.applied) == (0, 5) and outcome.commit_seconds is not None
    assert await redis.mget(["a", "b", OFFSET]) == [b"5", b"5", b"4"]
    assert a.log == [("committed", [True, 1])] and b.log == [("committed", [True, 1])]  # its own writes' replies


async def test_a_redelivered_batch_is_skipped_by_its_offsets(redis: fakeredis.FakeAsyncRedis) -> None:
    effect = Counter("a")
    await apply_batch(redis, OFFSET, _records(0, 5), _prepare, [effect])
    again = await apply_batch(redis, OFFSET, _records(0, 5), _prepare, [effect])
    assert (again.skipped, again.applied, again.commit_seconds) == (5, 0, None)
    overlap = await apply_batch(redis, OFFSET, _records(3, 4), _prepare, [effect])  # 3, 4 applied; 5, 6 new
    assert (overlap.skipped, overlap.applied) == (2, 2)
    assert await redis.mget(["a", OFFSET, "a:writes"]) == [b"7", b"6", b"2"]


async def test_a_zombie_commit_is_fenced_and_writes_nothing(redis: fakeredis.FakeAsyncRedis) -> None:
    other = fakeredis.FakeAsyncRedis(server=redis.connection_pool.connection_kwargs["server"])
    effect = Counter("a")

    async def prepare_while_the_new_owner_commits(fresh: Sequence[Any]) -> Batch[str]:
        await other.set(OFFSET, 9)  # the partition's new owner committed meanwhile
        return await _prepare(fresh)

    with pytest.raises(Fenced):
        await apply_batch(redis, OFFSET, _records(0, 5), prepare_while_the_new_owner_commits, [effect])
    assert effect.log == [("failed", 4)]
    assert await redis.mget(["a", OFFSET]) == [None, b"9"]
    redo = await apply_batch(redis, OFFSET, _records(0, 5), _prepare, [effect])  # redone: nothing is fresh
    assert (redo.skipped, redo.applied) == (5, 0)


async def test_a_batch_without_valid_events_moves_the_offset_only(redis: fakeredis.FakeAsyncRedis) -> None:
    effect = Counter("a")

    async def all_invalid(fresh: Sequence[Any]) -> Batch[str]:
        return Batch(BatchInfo("interactions", 0, fresh[0].offset, fresh[-1].offset), [])

    outcome = await apply_batch(redis, OFFSET, _records(0, 3), all_invalid, [effect])
    assert (outcome.applied, effect.log) == (0, [])
    assert await redis.mget(["a", OFFSET]) == [None, b"2"]
