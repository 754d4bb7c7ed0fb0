"""The Redis connection of one partition batch: the protocol's round trips (:mod:`streams.batch_protocol`)
sent as packed commands on one pooled connection held for the batch.

The ``WATCH``, the reads and the ``MULTI`` must share a connection, and each round trip counts (under load
each is a wait for the Redis process to be scheduled). Through redis-py's pipelines the same batch took four
(a watching pipeline runs ``WATCH`` and ``GET`` one at a time, and the reads went on another connection).
Effects still queue commands with redis-py's command methods on ordinary pipelines, which serve here only
as recorders of ``(args, options)``: the packing, the reply parsing (hiredis) and the response callbacks are
redis-py's own, without its per-command pipeline bookkeeping.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError, WatchError

Command = tuple[tuple[Any, ...], dict[str, Any]]


class BatchConnection:
    """A pooled connection held for one batch (``async with``); disconnected on any failure, since its
    ``WATCH`` / ``MULTI`` state is then unknown."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pool = client.connection_pool
        self.conn: Any = None
        self.watching = False

    async def __aenter__(self) -> BatchConnection:
        self.conn = await self.pool.get_connection()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self.conn
        try:
            if exc_type is not None:
                await conn.disconnect()
            elif self.watching:  # left before the MULTI (nothing to apply): the next user must not watch
                try:
                    await self._run([(("UNWATCH",), {})])
                except BaseException:
                    await conn.disconnect()
                    raise
        finally:
            self.conn, self.watching = None, False
            await self.pool.release(conn)

    async def watch(self, key: str) -> Any:
        """``WATCH key`` and ``GET key`` in one round trip: the key's value, read under the WATCH."""
        self.watching = True
        return (await self._run([(("WATCH", key), {}), (("GET", key), {})]))[1]

    async def read(self, reads: Sequence[Command]) -> list[Any]:
        """Reads on the same (watching) connection, one round trip."""
        return await self._run(reads) if reads else []

    async def commit(self, writes: Sequence[Command]) -> list[Any]:
        """``MULTI``, ``writes``, ``EXEC``; the writes' replies. :class:`WatchError` when a watched key
        changed (nothing was applied)."""
        conn = self.conn
        await conn.send_packed_command(conn.pack_commands(args for args, _ in [(("MULTI",), {}), *writes,
                                                                                (("EXEC",), {})]))
        errors: list[BaseException] = []
        for _ in range(len(writes) + 1):  # OK for MULTI, then QUEUED per command (or a queuing error)
            try:
                await conn.read_response()
            except ResponseError as exc:
                errors.append(exc)
        try:
            replies = await conn.read_response()
        except ResponseError as exc:  # EXECABORT: a command was refused while queuing
            raise (errors[0] if errors else exc) from exc
        self.watching = False  # EXEC ends the WATCH either way
        if replies is None:
            raise WatchError("the partition's offset changed (another worker owns it now)")
        if errors:
            raise errors[0]
        return self._callbacks(writes, replies)

    async def _run(self, commands: Sequence[Command]) -> list[Any]:
        conn = self.conn
        await conn.send_packed_command(conn.pack_commands(args for args, _ in commands))
        replies: list[Any] = []
        errors: list[BaseException] = []
        for _ in commands:  # read every reply before raising: the connection stays in step
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                errors.append(exc)
                replies.append(exc)
        if errors:
            raise errors[0]
        return self._callbacks(commands, replies)

    def _callbacks(self, commands: Iterable[Command], replies: list[Any]) -> list[Any]:
        callbacks = self.client.response_callbacks
        out = []
        for (args, options), reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            callback = callbacks.get(args[0])
            if callback is not None:
                extra = {k: v for k, v in options.items() if k != "keys"}
                reply = callback(reply, **extra)
                if inspect.isawaitable(reply):  # pragma: no cover - no async callbacks for these commands
                    raise TypeError(f"async response callback for {args[0]!r}")
            out.append(reply)
        return out


def recorded(pipe: Any) -> list[Command]:
    """The ``(args, options)`` queued on a redis-py pipeline (used as a recorder, never executed)."""
    return list(pipe.command_stack)
