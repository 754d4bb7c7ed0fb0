"""The online feature store: the ranking state of :mod:`models.features.state`, kept up to date by
the stream workers and read by the server (a Feast-like interface, :class:`OnlineFeatureStore`).

Backends: :class:`RedisFeatureStore` (production) and :class:`MemoryFeatureStore` (tests, local
tools). Both run the update code of ``models.features.state``, the code the offline training-row
builder replays, so online and offline features agree exactly.
"""

from streamrec.feature_store.base import OnlineFeatureStore, StateSnapshot
from streamrec.feature_store.memory import MemoryFeatureStore
from streamrec.feature_store.redis_store import ApplyStats, RedisFeatureStore

__all__ = ["ApplyStats", "MemoryFeatureStore", "OnlineFeatureStore", "RedisFeatureStore", "StateSnapshot"]
