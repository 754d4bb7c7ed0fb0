"""The store contract (tests/contracts/store_contract.py) on the Redis backends, against the real redis-server:
per-command writes, the workers' bulk writes (Redis Functions), and the server's scripted read."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis
from contracts.store_contract import MakeStore, StoreContract

from models.features.state import EventBatch, ItemStatic
from online_state.feature_reads import FeatureReader
from online_state.feature_store import OnlineFeatureStore, StateSnapshot
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
