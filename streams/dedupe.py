"""De-duplication of interaction events by ``event_id``: a retried POST (or a producer's resend) is applied once.

The Kafka offsets (:mod:`streams.batch_protocol`) make a *record* count once; a client that retries a 503 (the
broker may have taken the first try) makes a second *record* of the same event. So each user keeps a window of
its last ``N`` applied event ids (``settings.worker_dedupe_window``, 64 by default), as 8-byte blake2b digests
packed into one string, ``sr:ew:{user}`` (:meth:`online_state.keys.KeyLayout.event_window`), next to the user's
other keys and with the same TTL as the user's feature state.

What it covers: a retry of any of a user's last ``N`` applied events, however late, as long as the user's state
lives (the TTL, refreshed by every write). A retry that arrives after ``N`` newer events of the same user would
count again: a client retries within seconds, and 64 covers a user's burst of a whole page of impressions. Two
distinct event ids of one user collide with probability about ``N * 2**-64`` per event: never in practice.

How it commits: the windows of the batch's users are read once per batch, on the batch's watching connection
(one round trip, after the decoding, before the effects' reads); the duplicates are dropped from the batch, so
the effects never see them; the appended windows are written inside the same ``MULTI`` as the effects' writes and
the partition's offset, so a window changes exactly when its events are applied. The interactions topic is keyed
by user id, so one partition (and one worker) owns a user's window, as it owns the rest of the user's state.

Catalogue events need no window: an ``item_upsert`` or ``item_remove`` sets an item's state to what the event
says, so applying one twice leaves the same state (and catalogue partitions are not keyed by user).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from online_state.keys import KeyLayout
from online_state.redis_functions import set_many

DIGEST_BYTES: Final = 8


class _UserEvent(Protocol):
    @property
    def event_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


def digest(event_id: str) -> bytes:
    """The 8-byte digest an event id is remembered by."""
    return hashlib.blake2b(event_id.encode(), digest_size=DIGEST_BYTES).digest()


def unpack(window: bytes | None) -> list[bytes]:
    """The digests of a stored window, oldest first (a torn tail, never written by this module, is ignored)."""
    if not window:
        return []
    usable = len(window) - len(window) % DIGEST_BYTES
    return [window[i:i + DIGEST_BYTES] for i in range(0, usable, DIGEST_BYTES)]


def pack(digests: Sequence[bytes], size: int) -> bytes:
    """The last ``size`` digests as one value."""
    return b"".join(digests[-size:]) if size > 0 else b""


@dataclass(slots=True)
class Deduped:
    """One batch's events after de-duplication, and the windows to write with them."""

    events: list[Any]
    duplicates: int = 0
    windows: dict[str, bytes] = field(default_factory=dict)  # user -> packed window (users with a kept event)


def _holds(window: bytes, d: bytes) -> bool:
    """Whether ``d`` is one of ``window``'s digests (a match across two digests' boundary does not count)."""
    at = window.find(d)
    while at >= 0:
        if at % DIGEST_BYTES == 0:
            return True
        at = window.find(d, at + 1)
    return False


def _usable(window: bytes | None) -> bytes:
    return window[:len(window) - len(window) % DIGEST_BYTES] if window else b""


def dedupe(events: Sequence[_UserEvent], stored: Mapping[str, bytes | None], size: int) -> Deduped:
    """Drop the events whose id is in their user's stored window or earlier in ``events``; the kept ones, in
    order, and each touched user's window with the kept ids appended (the last ``size``).

    The stored windows are searched as they are (``bytes.find``, in C) rather than unpacked into sets: most
    users of a batch have one or two events in it, against up to ``size`` remembered ids.
    """
    if size <= 0:
        raise ValueError("a de-duplication window holds at least one event id")
    users: dict[str, tuple[bytes, dict[bytes, None]]] = {}  # user -> (stored window, the batch's kept digests)
    kept: list[Any] = []
    duplicates = 0
    for event in events:
        user = event.user_id
        d = digest(event.event_id)
        seen = users.get(user)
        if seen is None:
            seen = users[user] = (_usable(stored.get(user)), {})
        if d in seen[1] or _holds(seen[0], d):
            duplicates += 1
            continue
        seen[1][d] = None
        kept.append(event)
    keep = size * DIGEST_BYTES
    windows = {user: (old + b"".join(new))[-keep:] for user, (old, new) in users.items() if new}
    return Deduped(kept, duplicates, windows)


class EventWindows:
    """The batch protocol's side of de-duplication: which keys to read, and the windows' writes.

    ``ttl_s``: the windows' TTL, the user feature state's (:data:`online_state.redis_store.DEFAULT_USER_TTL_S`);
    ``bulk``: write every window in one ``FCALL`` (the worker loaded the Redis Functions) rather than one ``SET``
    per user.
    """

    def __init__(self, keys: KeyLayout, size: int, ttl_s: int | None, *, bulk: bool = False) -> None:
        if size <= 0:
            raise ValueError("a de-duplication window holds at least one event id")
        self.keys = keys
        self.size = size
        self.ttl_s = ttl_s
        self.bulk = bulk

    def users(self, events: Sequence[_UserEvent]) -> list[str]:
        """The batch's users, in first-seen order (whose windows the batch reads)."""
        return list(dict.fromkeys(event.user_id for event in events))

    def read_command(self, users: Sequence[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``MGET`` of the users' windows, as a recorded command (:mod:`streams.redis_batch`)."""
        return ("MGET", *(self.keys.event_window(u) for u in users)), {}

    def read_commands(self, users: Sequence[str], *, per_key: bool) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """The users' windows as recorded commands: one ``MGET`` (one redis-server), or one ``GET`` per user
        (``per_key``: Redis Cluster, where each user is its own slot); the replies go to :meth:`filter`
        (``MGET``'s one reply, or the ``GET`` s' replies)."""
        if not per_key:
            return [self.read_command(users)]
        return [(("GET", self.keys.event_window(u)), {}) for u in users]

    def filter(self, events: Sequence[_UserEvent], users: Sequence[str], replies: Sequence[bytes | None]) -> Deduped:
        return dedupe(events, dict(zip(users, replies, strict=True)), self.size)

    def queue_writes(self, pipe: Any, deduped: Deduped) -> int:
        """Queue the appended windows on ``pipe`` (the batch's ``MULTI``); returns the commands queued."""
        if not deduped.windows:
            return 0
        keys = [self.keys.event_window(u) for u in deduped.windows]
        if self.bulk:
            return set_many(pipe, keys, list(deduped.windows.values()), self.ttl_s)
        for key, value in zip(keys, deduped.windows.values(), strict=True):
            pipe.set(key, value, ex=self.ttl_s)
        return len(keys)
