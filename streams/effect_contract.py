"""The effect contract as checks that run on any effect, as River's ``checks`` run on every estimator.

Each check takes a way to build the effect under a key prefix (a fresh instance per prefix, as a worker
process builds its own), events for it, and a Redis client, and applies batches through the real
exactly-once protocol (:func:`streams.batch_protocol.apply_batch`). The test suites run every check on every
effect of the worker's list (:mod:`streams.effects_registry`): ``tests/unit/test_effect_contract.py`` on
fakeredis, ``tests/integration/test_effect_contract_redis.py`` on a real redis-server with the Redis Functions
the worker uses.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from online_state.keys import KeyLayout
from online_state.offsets import parse_stored
from streams.batch_protocol import Outcome, apply_batch
from streams.effects import Batch, BatchInfo, Effect
from streams.slot_protocol import SlotProtocol

# Builds a fresh effect whose keys live under the given layout.
BuildEffect = Callable[[KeyLayout], Effect[Any]]

PARTITION = 0
FLOAT_REL = 1e-9  # sorted-set scores are float sums: another batching adds them in another order


@dataclass(frozen=True)
class ContractCase:
    """One effect with the test parameters its checks need (cheap: a few hundred events)."""

    name: str
    build: BuildEffect
    topic: str  # the topic its batches come from
    events: Sequence[Any]  # events of known users and items, in log order
    unknown: Sequence[Any]  # events whose users and items the bundle and the catalogue do not know
    # Effects whose state this one reads, built for the same keys: applied with it in every batch.
    companions: Callable[[KeyLayout], list[Effect[Any]]] = lambda keys: []
    # How batches are applied: "transaction" (streams.batch_protocol: one MULTI, one redis-server) or "slots"
    # (streams.slot_protocol: per-slot units, one redis-server or Redis Cluster; the effects' bulk must be off).
    protocol: str = "transaction"

    def effects(self, keys: KeyLayout) -> list[Effect[Any]]:
        """A fresh effect and its companions, as one worker process runs them."""
        return [*self.companions(keys), self.build(keys)]


async def apply_events(redis: Any, effects: Sequence[Effect[Any]], keys: KeyLayout, topic: str,
                       events: Sequence[Any], first_offset: int, protocol: str = "transaction") -> Outcome:
    """``events`` as one batch at offsets ``first_offset..``, through the exactly-once ``protocol``."""
    records = [SimpleNamespace(offset=first_offset + k, event=event) for k, event in enumerate(events)]

    async def prepare(fresh: Sequence[Any]) -> Batch[Any]:
        info = BatchInfo(topic, PARTITION, fresh[0].offset, fresh[-1].offset)
        return Batch(info, [record.event for record in fresh])

    if protocol == "slots":
        return await SlotProtocol(redis, keys).apply(topic, PARTITION, records, prepare, effects)
    return await apply_batch(redis, keys.offset(topic, PARTITION), records, prepare, effects)


async def snapshot(redis: Any, keys: KeyLayout) -> dict[str, Any]:
    """Every key under the layout's prefix (prefix stripped) with its value; sorted sets as ``{member: score}``,
    sets as their members."""
    out: dict[str, Any] = {}
    start = len(keys.prefix) + 1
    markers = keys.applied_family  # the per-slot protocol's bookkeeping, not state: cuts differ
    async for raw in redis.scan_iter(match=keys.everything, count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if key.startswith(markers):
            continue
        kind = await redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "set":  # membership only (SADD is idempotent and commutative)
            value = set(await redis.smembers(key))
        elif kind == "zset":
            value = {member: score for member, score in await redis.zrange(key, 0, -1, withscores=True)}
        else:
            raise AssertionError(f"{key}: an effect wrote a {kind}, which the contract does not know")
        out[key[start:]] = (kind, value)
    return out


def assert_same_state(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: keys differ: {sorted(got.keys() ^ want.keys())[:10]}"
    for key, (kind, value) in want.items():
        other_kind, other = got[key]
        assert other_kind == kind, f"{what}: {key} is a {other_kind}, not a {kind}"
        if kind == "zset":
            assert other.keys() == value.keys(), f"{what}: {key} members differ"
            for member, score in value.items():
                assert math.isclose(other[member], score, rel_tol=FLOAT_REL), f"{what}: {key} {member!r}"
        else:
            assert other == value, f"{what}: {key} differs"


async def check_empty_batch_queues_nothing(case: ContractCase, redis: Any, keys: KeyLayout) -> None:
    """An empty batch reads nothing and writes nothing."""
    effect = case.build(keys)
    batch: Batch[Any] = Batch(BatchInfo(case.topic, PARTITION, 0, 0), [])
    reads_pipe, writes_pipe = redis.pipeline(transaction=False), redis.pipeline(transaction=True)
    reads = effect.read(reads_pipe, batch)
    assert reads.queued == 0 and not reads_pipe.command_stack, f"{case.name}: reads for an empty batch"
    result = effect.write(writes_pipe, batch, reads)
    if inspect.isawaitable(result):
        await result
    assert not writes_pipe.command_stack, f"{case.name}: writes for an empty batch"


async def check_unknown_users_and_items(case: ContractCase, redis: Any, keys: KeyLayout) -> None:
    """Users and items the bundle and the catalogue do not know are applied (or ignored), never an error."""
    outcome = await apply_events(redis, case.effects(keys), keys, case.topic, case.unknown, 0, case.protocol)
    assert outcome.applied == len(case.unknown)
    assert parse_stored(await redis.get(keys.offset(case.topic, PARTITION))) == len(case.unknown) - 1


async def check_redelivery_changes_nothing(case: ContractCase, redis: Any, keys: KeyLayout) -> None:
    """A batch delivered again (whole, or a part of it) is skipped by its stored offsets: the state stays."""
    effects = case.effects(keys)
    events = [*case.events, *case.unknown]
    await apply_events(redis, effects, keys, case.topic, events, 0, case.protocol)
    before = await snapshot(redis, keys)
    # a restarted worker:
    again = await apply_events(redis, case.effects(keys), keys, case.topic, events, 0, case.protocol)
    assert (again.skipped, again.applied) == (len(events), 0)
    half = len(events) // 2
    tail = await apply_events(redis, effects, keys, case.topic, events[half:], half, case.protocol)
    assert (tail.skipped, tail.applied) == (len(events) - half, 0)
    assert_same_state(await snapshot(redis, keys), before, f"{case.name} after a redelivery")


async def check_batching_does_not_matter(case: ContractCase, redis: Any, keys: KeyLayout) -> None:
    """The same events in one batch or in two give the same state."""
    events = [*case.events, *case.unknown]
    whole = KeyLayout(f"{keys.prefix}-whole")
    await apply_events(redis, case.effects(whole), whole, case.topic, events, 0, case.protocol)
    split = KeyLayout(f"{keys.prefix}-split")
    effects = case.effects(split)
    cut = len(events) // 3
    await apply_events(redis, effects, split, case.topic, events[:cut], 0, case.protocol)
    await apply_events(redis, effects, split, case.topic, events[cut:], cut, case.protocol)
    assert_same_state(await snapshot(redis, split), await snapshot(redis, whole), f"{case.name} in two batches")


CHECKS: tuple[Callable[[ContractCase, Any, KeyLayout], Awaitable[None]], ...] = (
    check_empty_batch_queues_nothing,
    check_unknown_users_and_items,
    check_redelivery_changes_nothing,
    check_batching_does_not_matter,
)
