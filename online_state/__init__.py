"""The online feature store: the ranking state of :mod:`models.features.state`, kept up to date by
the stream workers and read by the server (a Feast-like interface, :class:`OnlineFeatureStore`).

Backends: :class:`RedisFeatureStore` (production) and :class:`MemoryFeatureStore` (tests, local
tools). Both run the update code of ``models.features.state``, the code the offline training-row
builder replays, so online and offline features agree exactly.
"""

from online_state.feature_store import OnlineFeatureStore, StateSnapshot
from online_state.memory_store import MemoryFeatureStore
from online_state.redis_store import ApplyStats, RedisFeatureStore

__all__ = ["ApplyStats", "MemoryFeatureStore", "OnlineFeatureStore", "RedisFeatureStore", "StateSnapshot"]
