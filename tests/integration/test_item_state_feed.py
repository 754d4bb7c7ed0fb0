"""The servers' in-process item state, fed by the real worker through the item-state topic: after the worker's
batches, every title's row in the table equals its hash in Redis; a commit whose record never left the worker
is repaired by the next snapshot; and records arrive within the staleness the metric reports."""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis
from test_worker_dead_letters import T0, _play, _upsert, _wait_for, per_test_settings, running_worker, send_records

from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from online_state.feature_codec import item_fields, parse_item_rows
from online_state.item_state import ItemStateTable
from online_state.keys import DEFAULT_KEYS
from serving import metrics
from serving.item_state_tail import ItemStateTail

ITEMS = [f"i{n}" for n in range(6)]


async def _redis_rows(redis: aioredis.Redis, items: list[str], now: int) -> np.ndarray:
    fields, _ = item_fields(now)
    pipe = redis.pipeline(transaction=False)
    for item in items:
        pipe.hmget(DEFAULT_KEYS.item_state(item), fields)
    return parse_item_rows(await pipe.execute(), len(fields))


def _staleness_count() -> float:
    return sum(s.value for s in metrics.ITEM_STATE_STALENESS.collect()[0].samples if s.name.endswith("_count"))


async def test_the_worker_feeds_every_servers_copy_of_the_item_state(stack: Settings,
                                                                    redis_client: aioredis.Redis) -> None:
    settings = per_test_settings(stack, "itemstate")
    await ensure_topics_retrying(settings)
    table = ItemStateTable()
    tail = ItemStateTail(settings, table, redis_client, DEFAULT_KEYS, resync_s=3600)
    tail.start()
    now = T0 + 60_000
    _, epochs = item_fields(now)
    observed = _staleness_count()
    try:
        async def loaded() -> bool:
            return table.loaded
        await _wait_for(loaded)  # positioned at the topic's end, then the (empty) snapshot read
        await send_records(settings, settings.topic_catalog, [(i, _upsert(i, T0)) for i in ITEMS])
        plays = [(f"u{n % 7}", _play(f"u{n % 7}", ITEMS[n % len(ITEMS)] if n % 3 else "i0", T0 + n))
                 for n in range(300)]
        await send_records(settings, settings.topic_interactions, plays)
        async with running_worker(settings) as worker:
            async def caught_up() -> bool:
                want = await _redis_rows(redis_client, ITEMS, now)
                return bool(want[:, 0].sum() == len(plays)) and np.array_equal(table.values(ITEMS, epochs), want)
            await _wait_for(caught_up, seconds=60)
            assert worker.processed >= len(plays)
        # The rows came from the topic (the snapshot was taken before any play), within the reported staleness:
        # at least one record per played title (i3 gets none; a title's records from concurrent partition batches
        # may arrive out of version order, and the older ones are ignored, so not one per batch).
        played = {ITEMS[n % len(ITEMS)] if n % 3 else "i0" for n in range(300)}
        assert len(played) == 5 and table.applied >= len(played) and _staleness_count() > observed
        assert table.covers(epochs)

        # A commit whose record never reaches the topic (its worker killed between EXEC and send): the next
        # snapshot of Redis repairs the row.
        await redis_client.hincrby(DEFAULT_KEYS.item_state("i3"), "play", 5)
        await redis_client.hincrby(DEFAULT_KEYS.item_state("i3"), "v", 1)
        before = int(table.values(["i3"], epochs)[0, 0])
        await tail.load()
        assert int(table.values(["i3"], epochs)[0, 0]) == before + 5
        np.testing.assert_array_equal(table.values(ITEMS, epochs), await _redis_rows(redis_client, ITEMS, now))
    finally:
        await tail.close()
