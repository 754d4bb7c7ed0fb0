"""Exactly once without cross-slot transactions (``docs/cluster-exactly-once.md``): the features' item counters
applied by per-slot idempotent calls (:mod:`streams.slot_apply`) on a real Redis Cluster of three masters started
here, and on the single-node test stack (the same code).

Two source partitions write the same titles. Partition 0 crashes between two slots' calls (half of a batch's
slot calls land), restarts from an older offset with other batch boundaries, both partitions see batches
delivered again, and one slot loses partition 1's last batch as a failover to a lagging replica would (its
hashes and its marker back to their values before the batch) before the batch is redone; every title's hash
must equal the one a clean, once-through apply gives, and its counts the sums of the whole log.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from models.features import spec
from models.features.state import ITEM_COUNT_NAMES, EventBatch, ItemStatic, item_deltas
from online_state.keys import KeyLayout
from online_state.redis_functions import load_functions
from online_state.slot_markers import load_slot_functions
from online_state.slots import slot_of
from schemas.events import AddToList, Click, Complete, Context, Impression, Play, Rating, Skip
from streams.slot_apply import SlotOutcome, apply_item_counts, plan_item_calls, send_item_calls
from tools.stack import scratch_cluster as scratch

TOPIC = "interactions"
ITEMS = [f"title-{i}" for i in range(120)]
DAY_MS = 86_400_000
_OFFSET = int(os.environ.get("STREAMREC_TEST_PORT_OFFSET", "0"))
CLUSTER_PORTS = [17100 + _OFFSET + k for k in range(3)]  # cluster bus: port + 10000


def make_log(seed: int, n: int) -> list[Any]:
    """``n`` interactions of 25 users on :data:`ITEMS`, in time order over 30 days (popularity epochs roll)."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000_000
    ts = np.sort(rng.integers(t0, t0 + 30 * DAY_MS, n)).tolist()
    out: list[Any] = []
    for k, t in enumerate(ts):
        user, item = f"user-{seed}-{rng.integers(25)}", ITEMS[int(rng.zipf(1.6)) % len(ITEMS)]
        common = {"event_id": f"e-{seed}-{k}", "ts": t, "schema_version": 1, "user_id": user}
        kind = k % 7
        ctx = Context(device="tv")
        if kind == 0:
            out.append(Impression(**common, item_ids=rng.choice(ITEMS, 5, replace=False).tolist(), request_id=f"r{k}"))
        elif kind == 1:
            out.append(Rating(**common, item_id=item, value=float(rng.integers(1, 11)) / 2))
        elif kind == 2:
            out.append(Complete(**common, item_id=item, watched_seconds=1200.0, context=ctx))
        elif kind == 3:
            out.append(Skip(**common, item_id=item))
        elif kind == 4:
            out.append(Click(**common, item_id=item))
        elif kind == 5:
            out.append(AddToList(**common, item_id=item))
        else:
            out.append(Play(**common, item_id=item, context=ctx))
    return out


def records(log: Sequence[Any], lo: int, hi: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=k, event=log[k]) for k in range(lo, min(hi, len(log)))]


def static() -> ItemStatic:
    n = len(ITEMS)
    return ItemStatic.build(ITEMS, [["drama"]] * n, np.zeros(n, np.int64), np.zeros(n, np.int64),
                            np.zeros(n, np.int8), np.zeros(n, np.bool_))


async def item_hashes(redis: Any, keys: KeyLayout) -> dict[str, dict[bytes, bytes]]:
    pipe = redis.pipeline(transaction=False)
    for item in ITEMS:
        pipe.hgetall(keys.item_state(item))
    return {item: h for item, h in zip(ITEMS, await pipe.execute(), strict=True) if h}


async def dump(redis: Any, keys: Sequence[str]) -> dict[str, bytes | None]:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
    return dict(zip(keys, await pipe.execute(), strict=True))


async def restore(redis: Any, values: dict[str, bytes | None]) -> None:
    """Put ``values`` (of :func:`dump`) back, as a replica that missed the later writes would hold them."""
    pipe = redis.pipeline(transaction=False)
    for key, value in values.items():
        if value is None:
            pipe.delete(key)
        else:
            pipe.restore(key, 0, value, replace=True)
    await pipe.execute()


async def apply_in_batches(redis: Any, keys: KeyLayout, partition: int, log: Sequence[Any], lo: int, hi: int,
                           size: int, static_rows: ItemStatic) -> SlotOutcome:
    total = SlotOutcome()
    for start in range(lo, hi, size):
        out = await apply_item_counts(redis, keys, TOPIC, partition, records(log, start, min(start + size, hi)),
                                      static_rows)
        total.applied += out.applied
        total.skipped += out.skipped
        total.partial += out.partial
        total.round_trips += out.round_trips
    return total


async def crash_replay_compare(redis: Any, name: str) -> dict[str, SlotOutcome]:
    """The scenario of the module docstring on ``redis`` (plain or cluster client); the outcomes by phase."""
    await load_slot_functions(redis)
    rows = static()
    logs = [make_log(1, 600), make_log(2, 400)]
    ref, eo = KeyLayout(f"{name}-ref"), KeyLayout(f"{name}-eo")
    for partition, log in enumerate(logs):  # the reference: each record once, in one clean pass
        await apply_in_batches(redis, ref, partition, log, 0, len(log), 100, rows)

    out: dict[str, SlotOutcome] = {}
    await apply_in_batches(redis, eo, 0, logs[0], 0, 200, 100, rows)
    await apply_in_batches(redis, eo, 1, logs[1], 0, 150, 150, rows)
    # Partition 0's worker dies between two slots' calls: half of batch 200..299's slots hold it.
    calls = plan_item_calls(eo, records(logs[0], 200, 300), rows)
    assert len({c.slot for c in calls}) == len(calls) > 4
    await send_item_calls(redis, eo, TOPIC, 0, 299, calls[::2])
    await apply_in_batches(redis, eo, 1, logs[1], 150, 300, 75, rows)
    # Its successor resumes from an older checkpoint (150), in batches cut elsewhere (70).
    out["replay"] = await apply_in_batches(redis, eo, 0, logs[0], 150, len(logs[0]), 70, rows)
    # Redeliveries: partition 1 again from 100 (a rebalance), partition 0's last batch twice.
    out["redelivered"] = await apply_in_batches(redis, eo, 1, logs[1], 100, 300, 100, rows)
    # A failover loses partition 1's last batch in one slot: that slot's item hashes and marker go back to
    # what they were before it (the promoted replica never got the call); the worker redoes the batch.
    lost = plan_item_calls(eo, records(logs[1], 300, 400), rows)[0]
    before = await dump(redis, [eo.applied(lost.slot), *lost.keys])
    await apply_in_batches(redis, eo, 1, logs[1], 300, 400, 100, rows)
    await restore(redis, before)
    out["after_loss"] = await apply_in_batches(redis, eo, 1, logs[1], 300, 400, 100, rows)
    out["again"] = await apply_in_batches(redis, eo, 0, logs[0], 570, len(logs[0]), 100, rows)

    got, want = await item_hashes(redis, eo), await item_hashes(redis, ref)
    assert got.keys() == want.keys()
    assert {i: settled(h) for i, h in got.items()} == {i: settled(h) for i, h in want.items()}, name
    # The counts and the live popularity epochs are the sums of the whole log (independent of the slot path).
    whole = EventBatch.from_events([*logs[0], *logs[1]], rows)
    deltas = item_deltas(whole)
    for pos, counts in zip(deltas.item.tolist(), deltas.counts.tolist(), strict=True):
        stored = got[whole.item_keys[pos]]
        for col, value in zip(ITEM_COUNT_NAMES, counts, strict=True):
            assert int(stored.get(col.encode(), 0)) == value, f"{name}: {whole.item_keys[pos]} {col}"
    checked = 0
    for (prefix, _), pop in zip(spec.POP_HALF_LIVES, deltas.pop, strict=True):
        for pos, epoch, amount in zip(pop.item.tolist(), pop.epoch.tolist(), pop.amount.tolist(), strict=True):
            stored = got[whole.item_keys[pos]]
            if epoch >= _latest(stored, prefix) - 1:  # never deleted: the whole log's sum
                assert int(stored[f"{prefix}:{epoch}".encode()]) == amount, f"{name}: {whole.item_keys[pos]} {prefix}"
                checked += 1
    assert checked > len(got)
    return out


def _latest(stored: dict[bytes, bytes], prefix: str) -> int:
    return max(int(f.split(b":")[1]) for f in stored if f.startswith(f"{prefix}:".encode()))


def settled(stored: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A title's hash without the popularity fields older than its last two epochs: which of those are still
    there depends on the order two partitions' writes interleave (a new epoch deletes epochs e-2..e-6 as it
    appears, :mod:`online_state.redis_store`), never read, and not part of "the log applied once"."""
    out = {}
    for f, v in stored.items():
        prefix, _, epoch = f.partition(b":")
        if not epoch or int(epoch) >= _latest(stored, prefix.decode()) - 1:
            out[f] = v
    return out


def assert_replays_were_exercised(out: dict[str, SlotOutcome]) -> None:
    assert out["replay"].partial > 0 and out["replay"].skipped > 0 and out["replay"].applied > 0
    assert out["redelivered"].skipped > 0 and out["redelivered"].applied == 0
    assert out["again"].applied == 0 and out["again"].partial == 0 and out["again"].skipped > 0
    assert out["after_loss"].applied == 1 and out["after_loss"].skipped > 0 and out["after_loss"].partial == 0


async def test_item_counters_exactly_once_on_single_node(redis_client: Redis) -> None:
    assert_replays_were_exercised(await crash_replay_compare(redis_client, "slots"))


# --- a Redis Cluster of three masters, started by the test ---------------------------------------------------


@pytest.fixture
def cluster_ports(tmp_path: Path) -> Iterator[list[int]]:
    """Three masters joined by ``redis-cli --cluster create``, killed after the test."""
    if not scratch.available():
        pytest.skip("needs redis-server and redis-cli on PATH")
    with scratch.scratch_cluster(tmp_path, CLUSTER_PORTS) as ports:
        yield ports


@pytest.fixture
async def redis_cluster(cluster_ports: list[int]) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


@pytest.mark.cluster
async def test_item_counters_exactly_once_on_redis_cluster(redis_cluster: RedisCluster) -> None:
    assert len({n.name for n in redis_cluster.get_primaries()}) == 3
    # Why the redesign: today's one call over a batch's titles (as inside its MULTI) is refused by the server.
    await load_functions(redis_cluster)
    a, b = KeyLayout("slots").item_state(ITEMS[0]), KeyLayout("slots").item_state(ITEMS[1])
    assert slot_of(a) != slot_of(b)
    node = Redis(host="127.0.0.1", port=CLUSTER_PORTS[0])
    try:
        with pytest.raises(ResponseError, match="hash to the same slot"):  # CROSSSLOT
            await node.execute_command("FCALL", "streamrec_hincr", 2, a, b, b"\x92\x92\x90\x90\x92\x90\x90")
    finally:
        await node.aclose()
    out = await crash_replay_compare(redis_cluster, "slots")
    assert_replays_were_exercised(out)
