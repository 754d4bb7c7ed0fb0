"""The local development stack: a single-node Kafka (KRaft) broker and a redis-server, or a local cluster
(``stack up --brokers N --redis-cluster``: N KRaft brokers, a Redis Cluster of 3 masters with a replica each).

Modules:

- :mod:`tools.stack.topology`: single node or cluster, its ports, remembered in the state dir.
- :mod:`tools.stack.layout`: where the stack keeps its files under ``settings.state_dir``.
- :mod:`tools.stack.process`: pid files, detached start, verified stop-by-pid.
- :mod:`tools.stack.kafka`: jars from Maven Central, ``server.properties``, storage format, start.
- :mod:`tools.stack.redis`: ``redis.conf`` and start of ``redis-server``.
- :mod:`tools.stack.probes`: "does it answer" checks (Kafka metadata, Redis PING).
- :mod:`foundation.topics`: :func:`~foundation.topics.ensure_topics`, shared with the workers.
- :mod:`tools.stack.manager`: ``up`` / ``down`` / ``status`` returning typed results.
"""

from __future__ import annotations

from tools.stack.errors import StackError

__all__ = ["StackError"]
