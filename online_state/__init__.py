"""The online state in Redis: every key from one layout (:class:`KeyLayout`), the values' codecs, the feature
store (interface, Redis and in-memory backends), the Redis Functions of the workers' bulk writes, and the
reads the server and ``inspect`` make. The workers write through it, the server and ``inspect`` read through it.

Modules: ``keys`` (the layout), ``feature_codec`` / ``user_vectors`` / ``sessions`` / ``trending`` /
``item_learning`` / ``offsets`` (each value's stored form), ``feature_store`` / ``memory_store`` /
``redis_store`` (the feature store), ``redis_functions``, ``reads`` and ``feature_reads`` (the read API).
"""

from online_state.feature_store import OnlineFeatureStore, StateSnapshot
from online_state.keys import DEFAULT_KEYS, DEFAULT_PREFIX, KeyLayout
from online_state.memory_store import MemoryFeatureStore
from online_state.redis_store import ApplyStats, RedisFeatureStore

__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_PREFIX",
    "ApplyStats",
    "KeyLayout",
    "MemoryFeatureStore",
    "OnlineFeatureStore",
    "RedisFeatureStore",
    "StateSnapshot",
]
