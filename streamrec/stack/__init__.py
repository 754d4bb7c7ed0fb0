"""The local development stack: a single-node Kafka (KRaft) broker and a redis-server.

Modules:

- :mod:`streamrec.stack.layout`: where the stack keeps its files under ``settings.state_dir``.
- :mod:`streamrec.stack.process`: pid files, detached start, verified stop-by-pid.
- :mod:`streamrec.stack.kafka`: jars from Maven Central, ``server.properties``, storage format, start.
- :mod:`streamrec.stack.redis`: ``redis.conf`` and start of ``redis-server``.
- :mod:`streamrec.stack.probes`: "does it answer" checks (Kafka metadata, Redis PING).
- :mod:`streamrec.stack.topics`: :func:`~streamrec.stack.topics.ensure_topics`, shared with the workers.
- :mod:`streamrec.stack.manager`: ``up`` / ``down`` / ``status`` returning typed results.

Importing this package is cheap: submodules are imported where they are used.
"""

from __future__ import annotations

from streamrec.stack.errors import StackError

__all__ = ["StackError"]
