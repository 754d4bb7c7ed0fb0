"""De-duplication by event_id (:mod:`streams.dedupe`): the window's packing, append and trim, duplicates within a
batch and across batches, and its commit inside the batch protocol (on fakeredis); and the worker's pause while
Redis refuses writes for memory (:class:`streams.worker.OomPause`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import OutOfMemoryError

from online_state.keys import KeyLayout
from streams.batch_protocol import Fenced, apply_batch
from streams.dedupe import DIGEST_BYTES, EventWindows, dedupe, digest, pack, unpack
from streams.effects import Batch, BatchInfo, Effect, Reads
from streams.worker import OomPause

KEYS = KeyLayout("t")
OFFSET = KEYS.offset("interactions", 0)


@dataclass(frozen=True)
class Ev:
    event_id: str
    user_id: str


def _window(*ids: str) -> bytes:
    return b"".join(digest(i) for i in ids)


def test_digests_are_8_bytes_stable_and_distinct() -> None:
    assert len(digest("e1")) == DIGEST_BYTES == 8
    assert digest("e1") == digest("e1") != digest("e2")


def test_pack_keeps_the_last_n_and_unpack_reverses_it() -> None:
    ds = [digest(f"e{n}") for n in range(10)]
    assert unpack(pack(ds, 64)) == ds
    assert unpack(pack(ds, 3)) == ds[-3:]
    assert unpack(None) == [] and unpack(b"") == []
    assert unpack(pack(ds, 2) + b"xyz") == ds[-2:]  # a torn tail is ignored, not misread


def test_duplicates_within_one_batch_are_dropped_and_the_first_kept() -> None:
    events = [Ev("a", "u1"), Ev("b", "u1"), Ev("a", "u1"), Ev("a", "u2"), Ev("b", "u1")]
    out = dedupe(events, {}, 64)
    assert out.events == [events[0], events[1], events[3]]  # "a" of u2 is another user's event
    assert out.duplicates == 2
    assert unpack(out.windows["u1"]) == [digest("a"), digest("b")]
    assert unpack(out.windows["u2"]) == [digest("a")]


def test_ids_in_the_stored_window_are_dropped_and_new_ones_appended_then_trimmed() -> None:
    stored = {"u1": _window("x", "y", "z")}
    out = dedupe([Ev("y", "u1"), Ev("n1", "u1"), Ev("n2", "u1")], stored, 4)
    assert [e.event_id for e in out.events] == ["n1", "n2"] and out.duplicates == 1
    assert unpack(out.windows["u1"]) == [digest(i) for i in ("y", "z", "n1", "n2")]  # "x" fell out (N = 4)


def test_only_whole_digests_match_never_bytes_across_two_of_them() -> None:
    straddling = b"\0" * 4 + digest("x") + b"\0" * 4  # "x"'s digest across two slots of the window
    assert dedupe([Ev("x", "u1")], {"u1": straddling}, 64).duplicates == 0
    assert dedupe([Ev("x", "u1")], {"u1": b"\0" * 8 + digest("x")}, 64).duplicates == 1


def test_a_user_with_only_duplicates_writes_no_window() -> None:
    out = dedupe([Ev("x", "u1"), Ev("x", "u1")], {"u1": _window("x")}, 64)
    assert out.events == [] and out.duplicates == 2 and out.windows == {}


def test_a_retry_past_the_window_counts_again() -> None:
    # What the window covers: a user's last N events. An id N+1 events old is forgotten.
    window = dedupe([Ev(f"e{n}", "u1") for n in range(5)], {}, 4).windows["u1"]
    out = dedupe([Ev("e0", "u1"), Ev("e1", "u1")], {"u1": window}, 4)
    assert [e.event_id for e in out.events] == ["e0"]


def test_event_windows_refuse_a_zero_size() -> None:
    with pytest.raises(ValueError):
        EventWindows(KEYS, 0, 60)


# --- inside the batch protocol (fakeredis) ------------------------------------------------------------------


class Seen(Effect[Ev]):
    """Records the events it is given and counts them per user in Redis (a double count shows)."""

    name = "seen"

    def __init__(self) -> None:
        self.events: list[str] = []

    def write(self, pipe: Any, batch: Batch[Ev], reads: Reads[Any]) -> None:
        for event in batch.events:
            self.events.append(event.event_id)
            pipe.incr(f"count:{event.user_id}")


def _records(first: int, events: Sequence[Ev]) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=first + k, event=e) for k, e in enumerate(events)]


async def _prepare(fresh: Sequence[Any]) -> Batch[Ev]:
    return Batch(BatchInfo("interactions", 0, fresh[0].offset, fresh[-1].offset), [r.event for r in fresh])


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())



async def test_the_protocol_drops_duplicates_before_the_effects_and_commits_the_windows(
        redis: fakeredis.FakeAsyncRedis) -> None:
    windows = EventWindows(KEYS, 64, 3600)
    effect = Seen()
    first = [Ev("a", "u1"), Ev("b", "u1"), Ev("a", "u1"), Ev("c", "u2")]
    outcome = await apply_batch(redis, OFFSET, _records(0, first), _prepare, [effect], windows)
    assert (outcome.applied, outcome.duplicates) == (3, 1)
    # A retry of "a" and "c" (new records: new offsets) and one new event.
    again = [Ev("a", "u1"), Ev("c", "u2"), Ev("d", "u2")]
    outcome = await apply_batch(redis, OFFSET, _records(4, again), _prepare, [effect], windows)
    assert (outcome.applied, outcome.duplicates) == (1, 2)
    assert effect.events == ["a", "b", "c", "d"]
    assert await redis.mget(["count:u1", "count:u2", OFFSET]) == [b"2", b"2", b"6"]
    assert unpack(await redis.get(KEYS.event_window("u2"))) == [digest("c"), digest("d")]
    assert 0 < await redis.ttl(KEYS.event_window("u1")) <= 3600


async def test_a_batch_of_duplicates_only_moves_the_offset(redis: fakeredis.FakeAsyncRedis) -> None:
    windows, effect = EventWindows(KEYS, 64, 3600), Seen()
    await apply_batch(redis, OFFSET, _records(0, [Ev("a", "u1")]), _prepare, [effect], windows)
    outcome = await apply_batch(redis, OFFSET, _records(1, [Ev("a", "u1")] * 3), _prepare, [effect], windows)
    assert (outcome.applied, outcome.duplicates) == (0, 3)
    assert effect.events == ["a"] and await redis.mget(["count:u1", OFFSET]) == [b"1", b"3"]


async def test_a_fenced_batch_leaves_the_windows_as_they_were(redis: fakeredis.FakeAsyncRedis) -> None:
    windows = EventWindows(KEYS, 64, 3600)

    async def zombie_prepare(fresh: Sequence[Any]) -> Batch[Ev]:
        await redis.set(OFFSET, 99)  # another worker took the partition meanwhile
        return await _prepare(fresh)

    with pytest.raises(Fenced):
        await apply_batch(redis, OFFSET, _records(0, [Ev("a", "u1")]), zombie_prepare, [Seen()], windows)
    assert await redis.get(KEYS.event_window("u1")) is None  # so the new owner applies "a" (once)


# --- the pause on Redis OOM ---------------------------------------------------------------------------------


def _paused() -> float | None:
    return REGISTRY.get_sample_value("streamrec_worker_paused", {"reason": "redis_oom"})


def test_oom_pause_backs_off_exponentially_up_to_a_cap_and_resumes_on_a_commit() -> None:
    pause = OomPause(first_s=0.1, max_s=0.5)
    assert pause.end_round(committed=True) is None and not pause.paused
    delays = []
    for _ in range(5):
        pause.refused("interactions", 0, OutOfMemoryError("OOM command not allowed"))
        delays.append(pause.end_round(committed=False))
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert pause.paused and pause.refusals == 5 and _paused() == 1
    assert pause.end_round(committed=False) is None and pause.paused  # a round with nothing to write: still paused
    assert pause.end_round(committed=True) is None
    assert not pause.paused and _paused() == 0
    pause.refused("interactions", 0, OutOfMemoryError("OOM"))
    assert pause.end_round(committed=False) == 0.1  # a new pause starts from the first wait
