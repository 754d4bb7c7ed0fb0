"""Round trips of the per-slot protocol (:mod:`streams.slot_protocol`): recorded commands sent as one packed
pipeline per Redis node, on one redis-server or on Redis Cluster.

On a cluster each node gets its commands on one of its connections, all nodes at once (one round trip), and a
write stage ends with ``WAIT <replicas> <timeout>`` on *that* connection: ``WAIT`` counts only the writes of the
connection it runs on, which redis-py's cluster pipeline cannot target (it sends keyless commands to any node).
A stage is acknowledged only when every node it wrote to has its replicas in step, so a failover can only lose
writes of the stage in flight, which the protocol's gates redo exactly (``docs/cluster-exactly-once.md``).

A changed topology (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, a dead connection) refreshes redis-py's
slot table (its own ``NodesManager``) and raises :class:`TopologyChanged`: the protocol redoes the batch, which
its gates make exact. Routing, slot tables and connections stay redis-py's; this module only groups by node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from online_state.slots import slot_of
from streams.redis_batch import BatchConnection, Command

# A recorder of commands (redis-py's command methods on a pipeline that is never executed): never connects.
RECORDER: Final = aioredis.Redis()
WAIT_TIMEOUT_MS: Final = 2000  # per stage; a shortfall redoes the batch
_TOPOLOGY_ERRORS: Final = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError,
                           ConnectionError, TimeoutError, OSError)


# Replies used as the server sends them (an integer): redis-py's callback would only re-wrap them.
_NO_CALLBACK: Final = frozenset({"HINCRBY", "HDEL", "HSET", "ZADD", "ZREM"})


class TopologyChanged(Exception):
    """A node refused or dropped a round trip (failover, moved slot): the slot table was refreshed; redo."""


class ReplicationShortfall(Exception):
    """A node acknowledged a stage with fewer replicas than it has: the stage may be lost in a failover; redo."""


def recorder() -> Any:
    """A pipeline to queue commands on with redis-py's methods; :func:`streams.redis_batch.recorded` reads them."""
    return RECORDER.pipeline(transaction=False)


def command_key(args: Sequence[Any]) -> str:
    """The (first) key of a recorded command: ``FCALL name numkeys key ...`` or ``CMD key ...``."""
    key = args[3] if str(args[0]).upper() in ("FCALL", "FCALL_RO", "EVALSHA") else args[1]
    return key.decode() if isinstance(key, bytes) else str(key)


def apply_callbacks(commands: Sequence[Command], replies: Sequence[Any]) -> list[Any]:
    """redis-py's response callbacks on raw replies (e.g. those a function returned for the commands it ran)."""
    callbacks = RECORDER.response_callbacks
    out = []
    for (args, options), reply in zip(commands, replies, strict=True):
        callback = callbacks.get(args[0]) if reply is not None and args[0] not in _NO_CALLBACK else None
        if callback is not None:
            reply = callback(reply, **{k: v for k, v in options.items() if k != "keys"})
            if inspect.isawaitable(reply):  # pragma: no cover - no async callbacks for these commands
                raise TypeError(f"async response callback for {args[0]!r}")
        out.append(reply)
    return out


def coalesce_gets(commands: Sequence[Command]) -> tuple[list[Command], list[int]]:
    """Runs of ``GET`` as one ``MGET`` each (one server: fewer commands to pack, parse and run); per packed
    command, how many replies it stands for (0: not a coalesced ``MGET``)."""
    packed: list[Command] = []
    spans: list[int] = []
    run: list[Any] = []

    def flush() -> None:
        if len(run) == 1:
            packed.append((("GET", run[0]), {}))
            spans.append(0)
        elif run:
            packed.append((("MGET", *run), {}))
            spans.append(len(run))
        run.clear()

    for args, options in commands:
        if args[0] == "GET" and len(args) == 2 and options.keys() <= {"keys"}:
            run.append(args[1])
            continue
        flush()
        packed.append((args, options))
        spans.append(0)
    flush()
    return packed, spans


def expand_gets(replies: Sequence[Any], spans: Sequence[int]) -> list[Any]:
    out: list[Any] = []
    for reply, span in zip(replies, spans, strict=True):
        if span:
            out.extend(reply)
        else:
            out.append(reply)
    return out


class NodePipelines:
    """Sends recorded commands to ``client`` (a ``Redis`` or a ``RedisCluster``), one round trip."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)

    async def run(self, commands: Sequence[Command], *, wait: bool = False) -> list[Any]:
        """The replies of ``commands`` in order (callbacks applied); the first error raised. ``wait``: end each
        node's share with ``WAIT`` for all its replicas (a cluster's; one redis-server has none to wait for)."""
        if not commands:
            return []
        if not self.cluster:
            packed, spans = coalesce_gets(commands)
            async with BatchConnection(self.client) as conn:
                replies = await conn.read(packed)
            return expand_gets(replies, spans)
        return await self._run_cluster(commands, wait)

    async def _run_cluster(self, commands: Sequence[Command], wait: bool) -> list[Any]:
        manager = self.client.nodes_manager
        by_node: dict[str, list[PipelineCommand]] = defaultdict(list)
        nodes: dict[str, Any] = {}
        replicas: dict[str, int] = {}
        try:
            for i, (args, options) in enumerate(commands):
                slot = slot_of(command_key(args))
                node = manager.get_node_from_slot(slot)
                nodes[node.name] = node
                replicas[node.name] = len(manager.slots_cache[slot]) - 1
                by_node[node.name].append(PipelineCommand(i, *args, **options))
        except SlotNotCoveredError as exc:
            await self._refresh()
            raise TopologyChanged(repr(exc)) from exc
        waits: dict[str, PipelineCommand] = {}
        if wait:
            for name, queued in by_node.items():
                if replicas[name] > 0:
                    waits[name] = PipelineCommand(-1, "WAIT", replicas[name], WAIT_TIMEOUT_MS)
                    queued.append(waits[name])
        results = await asyncio.gather(*(nodes[name].execute_pipeline(queued) for name, queued in by_node.items()),
                                       return_exceptions=True)
        replies: list[Any] = [None] * len(commands)
        failure: BaseException | None = next((r for r in results if isinstance(r, BaseException)), None)
        for queued in by_node.values():
            for command in queued:
                if isinstance(command.result, BaseException):
                    failure = failure or command.result
                elif command.position >= 0:
                    replies[command.position] = command.result
        if failure is not None:
            if isinstance(failure, _TOPOLOGY_ERRORS) or (isinstance(failure, ResponseError)
                                                          and str(failure).startswith(("MOVED", "ASK"))):
                await self._refresh()
                raise TopologyChanged(repr(failure)) from failure
            raise failure
        for name, command in waits.items():
            if int(command.result) < replicas[name]:
                # A replica may have failed: the cluster's slot table (CLUSTER SLOTS) leaves failed ones out.
                await self._refresh()
                raise ReplicationShortfall(f"{name}: {command.result} of {replicas[name]} replicas acknowledged")
        return replies

    async def _refresh(self) -> None:
        """A fresh slot table from the cluster (redis-py's), so the redo goes where the slots are now."""
        with contextlib.suppress(Exception):  # the cluster is still electing: the redo refreshes again
            await self.client.nodes_manager.initialize()
