"""Per-session features: what the user is doing right now, for the ranker and ``inspect``.

Redis layout (prefix ``sr``)
----------------------------
``sr:s:{user_id}`` — STRING, a msgpack array (:class:`SessionBlob`), TTL :data:`SESSION_TTL_S`
(4 h, wall clock, refreshed by every write). Like ``sr:u:{user}``, the value is always read and
written whole by the one worker that owns the user's partition (interactions are keyed by user
id), so a packed string beats a hash: one ``GET`` and one ``SET ... EX`` per user and batch.

======= ===========================================================================================
v       layout version (1)
sid     the session id (``context.session_id``; ``None`` when the client sends none)
start   ts (ms) of the session's first event
last    ts (ms) of its newest event (the max seen, so a late event does not move it back)
dev     last known device (``None`` unknown)
n       ``{kind: count}`` of the session's events (``progress`` heartbeats and impressions included)
rec     ``[[item_id, ts], ...]``: the last 20 distinct items engaged positively, most recent first
g       ``{genre: weight}``: sum over positive events of ``weight / len(item genres)`` (weights as in
        :func:`streams.trending.event_weights`, i.e. ``models.feedback``)
        (empty when the worker passes no ``item_genres``)
======= ===========================================================================================

Session boundaries (event time, so a replay gives the same sessions): an event starts a new session
when it carries a ``session_id`` different from the stored one, or when it carries none and more
than :data:`SESSION_GAP_MS` (30 min) passed since the session's last event. Profile events
(``user_upsert``) are not activity and leave the session alone.

Memory (``MEMORY USAGE``, Redis 7, measured by ``tests/integration/test_trending_session.py``):
~500 bytes for a full session (20 recent items with 3-character ids, a 20-character session id,
3 genres); each further genre adds ~15 bytes, longer item ids add their length x 20.

Exactly-once: :meth:`SessionEffect.write` is a pure function of the ``GET`` replies and the
events, applied in partition order, so a re-delivered batch (skipped by the offset marker) or a
different batching produces the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from online_state.redis_functions import set_many
from schemas.events import Impression, InteractionEvent, UserUpsert
from streams.effects import BatchInfo
from streams.trending import event_weights

if TYPE_CHECKING:
    import redis.asyncio as aioredis

SESSION_TTL_S: Final = 4 * 3_600
SESSION_GAP_MS: Final = 30 * 60_000
SESSION_RECENT: Final = 20
SESSION_BLOB_VERSION: Final = 1


class SessionBlob(msgspec.Struct, array_like=True):
    """The value of ``sr:s:{user_id}`` (see the module docstring)."""

    v: int
    sid: str | None
    start: int
    last: int
    dev: str | None
    n: dict[str, int]
    rec: list[tuple[str, int]]
    g: dict[str, float]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SessionBlob).decode


def session_key(user_id: str, prefix: str = "sr") -> str:
    return f"{prefix}:s:{user_id}"


def decode_session(raw: bytes | None) -> SessionBlob | None:
    """A stored session, or ``None`` (absent, expired, or of another layout version: start over)."""
    if raw is None:
        return None
    blob = _decode(raw)
    return blob if blob.v == SESSION_BLOB_VERSION else None


def _kind(event: InteractionEvent) -> str:
    return str(event.__struct_config__.tag)


def apply_session_event(
    blob: SessionBlob | None,
    event: InteractionEvent,
    weight: float,
    item_genres: Callable[[str], list[str]] | None,
) -> SessionBlob:
    """One event onto a session (``weight``: its positive feedback weight, 0 if not positive)."""
    context = event.context
    sid = context.session_id if context is not None else None
    if blob is None or (sid != blob.sid if sid is not None else event.ts - blob.last > SESSION_GAP_MS):
        blob = SessionBlob(v=SESSION_BLOB_VERSION, sid=sid, start=event.ts, last=event.ts, dev=None,
                           n={}, rec=[], g={})
    blob.last = max(blob.last, event.ts)
    blob.start = min(blob.start, event.ts)
    if context is not None and context.device is not None:
        blob.dev = context.device
    kind = _kind(event)
    blob.n[kind] = blob.n.get(kind, 0) + 1
    if weight > 0 and not isinstance(event, Impression):
        item_id = event.item_id
        blob.rec = [(item_id, event.ts), *((i, t) for i, t in blob.rec if i != item_id)][:SESSION_RECENT]
        if item_genres is not None:
            genres = item_genres(item_id)
            for genre in genres:
                blob.g[genre] = blob.g.get(genre, 0.0) + weight / len(genres)
    return blob


@dataclass(frozen=True, slots=True)
class SessionEffect:
    """The session effect for the worker (see :mod:`streams.effects`): ``GET`` then ``SET ... EX``.

    ``item_genres(item_id)`` gives a title's genres (from the bundle or the catalog; ``[]`` when
    unknown); ``None`` skips the genre mix. It must answer the same for the same item during a
    batch (determinism); a catalog change between a crash and the re-delivery is tolerated since
    the re-delivered batch is skipped by the offset marker anyway.
    """

    item_genres: Callable[[str], list[str]] | None = None
    prefix: str = "sr"
    ttl_s: int = SESSION_TTL_S
    name: str = "session"
    bulk: bool = False  # one MGET and one FCALL per batch (online_state.redis_functions, loaded)

    @staticmethod
    def users(events: Sequence[InteractionEvent]) -> list[str]:
        """The batch's users with session activity, in first-seen order (the read order)."""
        return list(dict.fromkeys(e.user_id for e in events if not isinstance(e, UserUpsert)))

    def read(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo) -> int:
        users = self.users(events)
        if self.bulk:
            if not users:
                return 0
            pipe.mget([session_key(user_id, self.prefix) for user_id in users])
            return 1
        for user_id in users:
            pipe.get(session_key(user_id, self.prefix))
        return len(users)

    def write(self, pipe: Any, events: Sequence[InteractionEvent], info: BatchInfo, replies: list[Any]) -> None:
        if self.bulk:
            sessions = self.apply(events, replies[0] if replies else [])
            set_many(pipe, [session_key(user_id, self.prefix) for user_id in sessions],
                     [_encode(blob) for blob in sessions.values()], self.ttl_s)
            return
        for user_id, blob in self.apply(events, replies).items():
            pipe.set(session_key(user_id, self.prefix), _encode(blob), ex=self.ttl_s)

    def apply(self, events: Sequence[InteractionEvent], replies: list[Any]) -> dict[str, SessionBlob]:
        """The new session of every user in the batch, from the ``read`` replies (pure)."""
        users = self.users(events)
        sessions: dict[str, SessionBlob | None] = {
            u: decode_session(raw) for u, raw in zip(users, replies, strict=True)
        }
        active = [e for e in events if not isinstance(e, UserUpsert)]
        weights = event_weights(active)
        for event, weight in zip(active, weights, strict=True):
            sessions[event.user_id] = apply_session_event(sessions[event.user_id], event, weight, self.item_genres)
        return {u: s for u, s in sessions.items() if s is not None}


def session_dict(blob: SessionBlob | None) -> dict[str, Any]:
    """A session as plain JSON-able data (``{}`` when there is none)."""
    if blob is None:
        return {}
    total = sum(blob.g.values())
    mix = sorted(blob.g.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "session_id": blob.sid,
        "start_ts": blob.start,
        "last_ts": blob.last,
        "device": blob.dev,
        "counts": dict(sorted(blob.n.items())),
        "recent": [{"item_id": i, "ts": t} for i, t in blob.rec],
        "genre_weights": dict(mix),
        "genre_mix": {g: w / total for g, w in mix} if total > 0 else {},
    }


async def read_session(redis: aioredis.Redis, user_id: str, *, prefix: str = "sr") -> dict[str, Any]:
    """The user's current session (see :func:`session_dict`), ``{}`` when none is stored; adds
    ``ttl_s``, the seconds until the key expires."""
    pipe = redis.pipeline(transaction=False)
    key = session_key(user_id, prefix)
    pipe.get(key)
    pipe.ttl(key)
    raw, ttl = await pipe.execute()
    out = session_dict(decode_session(raw))
    if out:
        out["ttl_s"] = int(ttl)
    return out



# --- worker registry (streams.worker discovers these) ---------------------------------------------


def make_effect(ctx: Any) -> SessionEffect:
    catalog = ctx.catalog

    def item_genres(item_id: str) -> list[str]:
        # The worker's live catalogue: titles released while it runs are known once their upsert is read.
        row = catalog.index.get(item_id) if catalog is not None else None
        return list(catalog.genres[row]) if row is not None else []

    return SessionEffect(item_genres=item_genres if catalog is not None else None, prefix=ctx.prefix,
                         bulk=getattr(ctx, "bulk", False))
