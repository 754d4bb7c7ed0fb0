"""The store contract (tests/contracts/store_contract.py) on the Redis backends, against the real redis-server:
per-command writes, the workers' bulk writes (Redis Functions), and the server's scripted read."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis
from contracts.store_contract import MakeStore, StoreContract

from models.features.state import EventBatch, ItemStatic, item_deltas
from online_state.feature_codec import StoredUser
from online_state.feature_reads import FeatureReader
from online_state.feature_store import OnlineFeatureStore, StateSnapshot
from online_state.item_state import ItemStateTable, load_item_states, record_of
from online_state.redis_functions import load_functions
from online_state.redis_store import RedisFeatureStore


class TestRedisStore(StoreContract):
    @pytest.fixture
    def make_store(self, redis_client: aioredis.Redis) -> MakeStore:
        return lambda static: RedisFeatureStore(redis_client, static)


class TestRedisStoreWithFunctions(StoreContract):
    @pytest.fixture
    async def make_store(self, redis_client: aioredis.Redis) -> MakeStore:
        await load_functions(redis_client)
        return lambda static: RedisFeatureStore(redis_client, static, bulk=True)


class _ScriptedReads(OnlineFeatureStore):
    """The Redis store's writes, read back the way the server reads (one script, no item cache)."""

    def __init__(self, store: RedisFeatureStore) -> None:
        self.static = store.static
        self.store = store
        self.reader = FeatureReader(store)

    async def apply(self, batch: EventBatch) -> object:
        return await self.store.apply(batch)

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        snap = await self.reader.read(user_id, item_ids, now_ts)
        assert self.reader.scripting, "real Redis runs the script"
        return snap


class TestScriptedRead(StoreContract):
    @pytest.fixture
    def make_store(self, redis_client: aioredis.Redis) -> MakeStore:
        def make(static: ItemStatic) -> OnlineFeatureStore:
            return _ScriptedReads(RedisFeatureStore(redis_client, static))

        return make


class _HeldReads(OnlineFeatureStore):
    """The workers' writes with every changed item hash read back in the transaction (``read_back``), fed to an
    in-process :class:`ItemStateTable` as the item-state records are (or by a snapshot of Redis), and read the
    way a server holding the item state reads: the user from Redis, every candidate row from the table."""

    def __init__(self, store: RedisFeatureStore, redis: aioredis.Redis, *, snapshot: bool) -> None:
        self.static = store.static
        self.store = store
        self.redis = redis
        self.snapshot = snapshot
        self.table = ItemStateTable()
        self.reader = FeatureReader(store, table=self.table)

    async def apply(self, batch: EventBatch) -> object:
        store = self.store
        plan = store.plan(batch)
        read = self.redis.pipeline(transaction=False)
        store.queue_reads(read, plan)
        replies = await read.execute() if plan.touched else []
        pipe = self.redis.pipeline(transaction=True)
        store.queue_writes(pipe, plan, replies)
        store.committed(plan, await pipe.execute())
        if store.read_back:  # every changed item is read back, and only those
            assert set(plan.rows) == {batch.item_keys[i] for i in item_deltas(batch).item.tolist()}
        if not self.snapshot:
            self.table.apply_many((item, record_of(flat, 0, version)) for item, (version, flat) in plan.rows.items())
            self.table.loaded = True
        return plan

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        if self.snapshot:
            await load_item_states(self.redis, self.store.keys, self.table)
        self.table.loaded = True
        user = StoredUser.decode(await self.redis.get(self.store.keys.user_state(user_id)))
        held = self.reader.held_reads
        snap = await self.reader.read(user_id, item_ids, now_ts, user=user)
        assert self.reader.held_reads == held + 1, "the table answers every read of the contract"
        return snap


@pytest.mark.parametrize("bulk", [False, True], ids=["commands", "functions"])
class TestItemStateHeldInProcess(StoreContract):
    @pytest.fixture
    async def make_store(self, redis_client: aioredis.Redis, bulk: bool) -> MakeStore:
        await load_functions(redis_client)
        return lambda static: _HeldReads(RedisFeatureStore(redis_client, static, bulk=bulk, read_back=True),
                                         redis_client, snapshot=False)


class TestItemStateSnapshot(StoreContract):
    @pytest.fixture
    async def make_store(self, redis_client: aioredis.Redis) -> MakeStore:
        await load_functions(redis_client)
        return lambda static: _HeldReads(RedisFeatureStore(redis_client, static, bulk=True), redis_client,
                                         snapshot=True)
