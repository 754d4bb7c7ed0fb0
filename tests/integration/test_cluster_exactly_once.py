"""Exactly once without cross-slot transactions (``docs/cluster-exactly-once.md``): partition batches applied
through the worker's per-slot protocol (:mod:`streams.slot_protocol`) with the features, trending, sessions,
experiment counts and event-id de-duplication, on a real Redis Cluster of three masters started here and on the
single-node test stack (the same code).

Two source partitions write the same titles, and their logs hold retried events (same ``event_id``). Partition 0
crashes mid-batch: on the cluster half of its item stage's slot units land; everywhere a crash between the item
and the user stage. Its successor resumes from the checkpoint with other batch boundaries (so slots answer
``PARTIAL`` and the batch is re-cut), a zombie re-applies an old batch cut elsewhere, batches are delivered again,
and one slot loses a batch as a failover to a lagging replica would (its keys and its marker back to their values
before it) before the batch is redone. Every key (users, titles, trending, sessions, windows) must then equal what
one clean pass over each log gives.
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

from models.features.state import ItemStatic
from online_state.keys import KeyLayout
from online_state.redis_functions import load_functions
from online_state.redis_store import RedisFeatureStore
from online_state.slot_markers import ITEM_STAGE, USER_STAGE, load_slot_functions
from online_state.slots import slot_of
from schemas.events import AddToList, Click, Complete, Context, ExposureTag, Impression, Play, Rating, Skip
from streams.dedupe import EventWindows
from streams.effect_contract import assert_same_state, snapshot
from streams.effects import Batch, BatchInfo, Effect
from streams.experiments import ExperimentEffect
from streams.features import FeatureStoreEffect
from streams.session import SessionEffect
from streams.slot_protocol import SlotOutcome, SlotProtocol
from streams.trending import TrendingEffect
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
        # Every 11th event is a client's retry of the one before it (same event_id): de-duplicated.
        common = {"event_id": f"e-{seed}-{k - 1 if k % 11 == 10 else k}", "ts": t, "schema_version": 1,
                  "user_id": user}
        kind = k % 7
        ctx = Context(device="tv")
        if kind == 0:
            # An exposure of an A/B test (variant by user) and of an interleaving one: the experiments effect's
            # shared counters, user sets and title sketches are item-stage keys, its per-user blob a user-stage one.
            teams = ["A", "B", "B", "A", "A"] if k % 2 else ["B", "A", "A", "B", "B"]
            out.append(Impression(**common, item_ids=rng.choice(ITEMS, 5, replace=False).tolist(), request_id=f"r{k}",
                                  server_ms=float(k % 40), experiments=[
                                      ExposureTag(name="ab", variant=("a", "b")[len(user) % 2]),
                                      ExposureTag(name="draft", variant="interleaved", teams=teams)]))
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


class Crash(Exception):
    """A worker process dying at a chosen point of the protocol."""


class CrashingProtocol(SlotProtocol):
    """The protocol, dying once: after the item stage (``after_item``), or in the middle of the item stage with
    only every other slot unit sent (``mid_item``: a cluster, where each slot is its own call)."""

    def __init__(self, client: Any, keys: KeyLayout, where: str) -> None:
        super().__init__(client, keys)
        self.where = where
        real_run = self.pipes.run

        async def run(commands: Sequence[Any], *, wait: bool = False) -> list[Any]:
            args = commands[0][0] if commands else ()
            if self.where == "mid_item" and args[1:2] == ("streamrec_slot_apply",) \
                    and str(args[-4]).startswith(ITEM_STAGE + "|"):
                await real_run(commands[::2], wait=wait)
                self.where = ""
                raise Crash("killed mid item stage")
            return await real_run(commands, wait=wait)

        self.pipes.run = run  # type: ignore[method-assign]

    async def _stage(self, stage: str, *args: Any, **kwargs: Any) -> list[int]:
        if stage == USER_STAGE and self.where == "after_item":
            self.where = ""
            raise Crash("killed between the stages")
        return await super()._stage(stage, *args, **kwargs)


def effects(redis: Any, keys: KeyLayout, rows: ItemStatic) -> tuple[list[Effect[Any]], EventWindows]:
    """The effects of one worker process (per-key writes, as on a cluster) and its de-duplication windows."""
    store = RedisFeatureStore(redis, rows, keys=keys, bulk=False)
    catalogue = SimpleNamespace(static=lambda: rows)
    return ([FeatureStoreEffect(store, catalogue), TrendingEffect(keys=keys, bulk=False),  # type: ignore[arg-type]
             SessionEffect(item_genres=None, keys=keys, bulk=False), ExperimentEffect(keys=keys, bulk=False)],
            EventWindows(keys, 64, None, bulk=False))


async def prepare(fresh: Sequence[Any], partition: int) -> Batch[Any]:
    return Batch(BatchInfo(TOPIC, partition, fresh[0].offset, fresh[-1].offset), [r.event for r in fresh])


class Worker:
    """One worker process's protocol and effects for one partition, applying the log in batches of ``size``."""

    def __init__(self, redis: Any, keys: KeyLayout, rows: ItemStatic, partition: int, crash: str = "", *,
                 dedupe: bool = True) -> None:
        self.protocol = CrashingProtocol(redis, keys, crash) if crash else SlotProtocol(redis, keys)
        self.effects, windows = effects(redis, keys, rows)
        self.windows = windows if dedupe else None
        self.partition = partition
        self.outcomes: list[SlotOutcome] = []

    async def run(self, log: Sequence[Any], lo: int, hi: int, size: int) -> None:
        async def prep(fresh: Sequence[Any]) -> Batch[Any]:
            return await prepare(fresh, self.partition)

        for start in range(lo, hi, size):
            batch = records(log, start, min(start + size, hi))
            self.outcomes.append(await self.protocol.apply(TOPIC, self.partition, batch, prep, self.effects,
                                                           self.windows, position=start - 1))

    def total(self, name: str) -> int:
        return sum(dict(o.sections).get(name, 0) for o in self.outcomes)


async def keys_in_slot(redis: Any, keys: KeyLayout, slot: int) -> list[str]:
    return [k.decode() async for k in redis.scan_iter(match=keys.everything, count=1000) if slot_of(k.decode()) == slot]


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


async def crash_replay_compare(redis: Any, name: str, cluster: bool) -> dict[str, Worker]:
    """The scenario of the module docstring on ``redis`` (plain or cluster client); the workers by phase."""
    await load_slot_functions(redis)
    rows = static()
    logs = [make_log(1, 600), make_log(2, 400)]
    ref, eo = KeyLayout(f"{name}-ref"), KeyLayout(f"{name}-eo")
    for partition, log in enumerate(logs):  # the reference: each record once, in one clean pass
        await Worker(redis, ref, rows, partition).run(log, 0, len(log), 100)

    out: dict[str, Worker] = {}
    await Worker(redis, eo, rows, 0).run(logs[0], 0, 200, 100)
    await Worker(redis, eo, rows, 1).run(logs[1], 0, 150, 150)
    # Partition 0's worker dies in batch 200..299: mid item stage on a cluster, else between the stages.
    out["crashed"] = Worker(redis, eo, rows, 0, "mid_item" if cluster else "after_item")
    with pytest.raises(Crash):
        await out["crashed"].run(logs[0], 200, 300, 100)
    await Worker(redis, eo, rows, 1).run(logs[1], 150, 300, 75)
    # Its successor resumes from an older checkpoint (150), in batches cut elsewhere (70), and dies once more
    # between the stages of its second batch; the next one resumes where that one's checkpoint was.
    out["replay"] = Worker(redis, eo, rows, 0, "")
    await out["replay"].run(logs[0], 150, 220, 70)
    second = Worker(redis, eo, rows, 0, "after_item")
    with pytest.raises(Crash):
        await second.run(logs[0], 220, 290, 70)
    out["replay2"] = Worker(redis, eo, rows, 0)
    await out["replay2"].run(logs[0], 220, 480, 65)
    # A zombie of partition 0 still applies an old batch, cut at other offsets: every slot already has it. (Its
    # de-duplication is off, else the windows alone would drop its events before the slots' gates see them.)
    out["zombie"] = Worker(redis, eo, rows, 0, dedupe=False)
    await out["zombie"].run(logs[0], 190, 330, 35)
    await Worker(redis, eo, rows, 0).run(logs[0], 480, 570, 90)
    # Redeliveries: partition 1 again from 100 (a rebalance).
    out["redelivered"] = Worker(redis, eo, rows, 1)
    await out["redelivered"].run(logs[1], 100, 300, 100)
    # A failover loses the item stage in flight in one slot: its master died before WAIT answered, so the
    # worker never sent the user stage; the slot's keys and marker go back to what they were before the batch
    # (the promoted replica never got the call), and the worker redoes the batch.
    slot = slot_of(eo.item_state(next(e.item_id for e in logs[1][300:400] if hasattr(e, "item_id"))))
    before = await dump(redis, await keys_in_slot(redis, eo, slot))
    with pytest.raises(Crash):
        await Worker(redis, eo, rows, 1, "after_item").run(logs[1], 300, 400, 100)
    created = set(await keys_in_slot(redis, eo, slot)) - before.keys()
    await restore(redis, {**before, **dict.fromkeys(created)})
    out["after_loss"] = Worker(redis, eo, rows, 1)
    await out["after_loss"].run(logs[1], 300, 400, 100)
    # Then a failover loses a user stage in one slot (its item stage was acknowledged): one user's keys and the
    # slot's user-stage marker go back; the worker redoes the batch.
    user = logs[0][580].user_id
    user_keys = [eo.user_state(user), eo.session(user), eo.event_window(user), eo.experiment_user(user)]
    marker, field = eo.applied(slot_of(user_keys[0])), f"{USER_STAGE}|{TOPIC}|0"
    before = await dump(redis, user_keys)
    old_marker = await redis.hget(marker, field)
    await Worker(redis, eo, rows, 0).run(logs[0], 570, len(logs[0]), 100)
    await restore(redis, before)
    await redis.hset(marker, field, old_marker)
    out["user_loss"] = Worker(redis, eo, rows, 0)
    await out["user_loss"].run(logs[0], 570, len(logs[0]), 100)
    out["again"] = Worker(redis, eo, rows, 0)
    await out["again"].run(logs[0], 560, len(logs[0]), 100)

    ref_state, eo_state = await snapshot(redis, ref), await snapshot(redis, eo)
    for state in (ref_state, eo_state):  # see settled()
        for key, (kind, value) in state.items():
            if key.startswith("i:"):
                state[key] = (kind, settled(value))
    assert_same_state(eo_state, ref_state, name)
    return out


def assert_replays_were_exercised(out: dict[str, Worker]) -> None:
    assert sum(o.recuts for o in out["replay"].outcomes) > 0, "the successor never re-cut a batch"
    assert out["replay"].total("skipped") > 0 and out["replay"].total("applied") > 0
    assert out["replay2"].total("skipped") > 0
    assert out["zombie"].total("applied") == 0 and out["zombie"].total("skipped") > 0
    assert out["redelivered"].total("applied") == 0
    assert out["after_loss"].total("applied") >= 1 and out["after_loss"].total("skipped") > 0
    assert out["user_loss"].total("applied") >= 1 and out["user_loss"].total("skipped") > 0
    assert out["again"].total("applied") == 0


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


async def test_exactly_once_through_crashes_recuts_and_zombies_on_single_node(redis_client: Redis) -> None:
    assert_replays_were_exercised(await crash_replay_compare(redis_client, "slots", cluster=False))


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
async def test_exactly_once_through_crashes_recuts_and_zombies_on_redis_cluster(redis_cluster: RedisCluster) -> None:
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
    out = await crash_replay_compare(redis_cluster, "slots", cluster=True)
    assert_replays_were_exercised(out)
