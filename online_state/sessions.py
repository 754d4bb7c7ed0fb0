"""The stored form of a user's current session (``{prefix}:s:{user}``): its codec and the read ``inspect`` uses.

A STRING holding a msgpack array (:class:`SessionBlob`), written whole by the worker that owns the user's
partition (how sessions start and grow: :mod:`streams.session`):

======= ===========================================================================================
v       layout version (1)
sid     the session id (``context.session_id``; ``None`` when the client sends none)
start   ts (ms) of the session's first event
last    ts (ms) of its newest event (the max seen, so a late event does not move it back)
dev     last known device (``None`` unknown)
n       ``{kind: count}`` of the session's events (``progress`` heartbeats and impressions included)
rec     ``[[item_id, ts], ...]``: the last 20 distinct items engaged positively, most recent first
g       ``{genre: weight}``: sum over positive events of ``weight / len(item genres)``
cw      ``[[item_id, ts, permille], ...]``: titles started and not finished ("continue watching"), most
        recent first, at most :data:`CONTINUE_MAX`; ``permille``: how far in (0 unknown). Unlike the rest it
        outlives the session (carried into the next one), so the key lives longer while it is not empty.
======= ===========================================================================================

``cw`` is a trailing field with a default: values written before it existed decode with an empty list.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from online_state.keys import DEFAULT_KEYS, KeyLayout

SESSION_BLOB_VERSION: Final = 1
CONTINUE_MAX: Final = 10  # titles kept in ``cw``


class SessionBlob(msgspec.Struct, array_like=True):
    """The value of ``{prefix}:s:{user_id}`` (see the module docstring)."""

    v: int
    sid: str | None
    start: int
    last: int
    dev: str | None
    n: dict[str, int]
    rec: list[tuple[str, int]]
    g: dict[str, float]
    cw: list[tuple[str, int, int]] = []


encode_session = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SessionBlob).decode


def decode_session(raw: bytes | None) -> SessionBlob | None:
    """A stored session, or ``None`` (absent, expired, or of another layout version: start over)."""
    if raw is None:
        return None
    blob = _decode(raw)
    return blob if blob.v == SESSION_BLOB_VERSION else None


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
        "continue_watching": [{"item_id": i, "ts": t, "progress": p / 1000} for i, t, p in blob.cw],
    }


async def read_session(redis: Any, user_id: str, *, keys: KeyLayout = DEFAULT_KEYS) -> dict[str, Any]:
    """The user's current session (see :func:`session_dict`), ``{}`` when none is stored; adds ``ttl_s``, the
    seconds until the key expires."""
    pipe = redis.pipeline(transaction=False)
    key = keys.session(user_id)
    pipe.get(key)
    pipe.ttl(key)
    raw, ttl = await pipe.execute()
    out = session_dict(decode_session(raw))
    if out:
        out["ttl_s"] = int(ttl)
    return out
