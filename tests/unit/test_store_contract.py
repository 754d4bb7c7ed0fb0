"""The store contract (tests/contracts/store_contract.py) on the in-memory backend; the Redis backends run it in
tests/integration/test_store_contract_redis.py against the real redis-server."""

from __future__ import annotations

import pytest
from contracts.store_contract import MakeStore, StoreContract

from online_state.memory_store import MemoryFeatureStore


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self) -> MakeStore:
        return MemoryFeatureStore
