"""Per-session features: what the user is doing right now, for the ranker and ``inspect``.

Key :meth:`~online_state.keys.KeyLayout.session`, TTL :data:`SESSION_TTL_S` (4 h, wall clock, refreshed by
every write); the value is a :class:`~online_state.sessions.SessionBlob` (its fields: :mod:`online_state.sessions`).
Like the user's feature state, it is always read and written whole by the one worker that owns the user's
partition (interactions are keyed by user id), so a packed string beats a hash: one ``GET`` and one
``SET ... EX`` per user and batch. The genre mix weighs each positive event as
:func:`streams.trending.event_weights` does (i.e. ``models.feedback``).

Session boundaries (event time, so a replay gives the same sessions): an event starts a new session
when it carries a ``session_id`` different from the stored one, or when it carries none and more
than :data:`SESSION_GAP_MS` (30 min) passed since the session's last event. Profile events
(``user_upsert``) are not activity and leave the session alone.

Continue watching (``cw``, read by the homepage): a ``play`` or ``progress`` puts the title in front (with how
far in, when the event says), a ``complete`` or ``skip`` takes it out, and a title 95% in counts as finished.
The list is carried into the next session, and a key holding one lives :data:`CONTINUE_TTL_S` (30 days) instead
of the session's 4 h.

Exactly-once: :meth:`SessionEffect.write` is a pure function of the ``GET`` replies and the
events, applied in partition order, so a re-delivered batch (skipped by the offset marker) or a
different batching produces the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.redis_functions import set_many
from online_state.sessions import CONTINUE_MAX, SESSION_BLOB_VERSION, SessionBlob, decode_session, encode_session
from schemas.events import Complete, Impression, InteractionEvent, Play, Progress, Skip, UserUpsert
from streams.effects import Batch, Effect, EffectContext, Reads
from streams.trending import event_weights

SESSION_TTL_S: Final = 4 * 3_600
SESSION_GAP_MS: Final = 30 * 60_000
SESSION_RECENT: Final = 20
CONTINUE_TTL_S: Final = 30 * 86_400  # a session key that holds titles to continue
FINISHED_PERMILLE: Final = 950  # this far into a title counts as finished (the credits)


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
                           n={}, rec=[], g={}, cw=blob.cw if blob is not None else [])
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
    if isinstance(event, (Play, Progress, Complete, Skip)):
        blob.cw = continue_watching(blob.cw, event)
    return blob


def continue_watching(cw: list[tuple[str, int, int]], event: Play | Progress | Complete | Skip
                      ) -> list[tuple[str, int, int]]:
    """The started-and-not-finished titles after one playback event (see the module docstring)."""
    item_id = event.item_id
    previous = next((p for i, _, p in cw if i == item_id), 0)
    rest = [entry for entry in cw if entry[0] != item_id]
    if isinstance(event, (Complete, Skip)):
        return rest
    permille = previous
    if isinstance(event, Progress) and event.duration_seconds:
        permille = min(1000, round(1000 * event.watched_seconds / event.duration_seconds))
    if permille >= FINISHED_PERMILLE:
        return rest
    return [(item_id, event.ts, permille), *rest][:CONTINUE_MAX]


def session_ttl(blob: SessionBlob, ttl_s: int) -> int:
    """The key's TTL: the session's, or :data:`CONTINUE_TTL_S` while it holds titles to continue."""
    return max(ttl_s, CONTINUE_TTL_S) if blob.cw else ttl_s


@dataclass(frozen=True, slots=True)
class SessionEffect(Effect[InteractionEvent]):
    """The session effect for the worker (see :mod:`streams.effects`): ``GET`` then ``SET ... EX``.

    ``item_genres(item_id)`` gives a title's genres (from the bundle or the catalog; ``[]`` when
    unknown); ``None`` skips the genre mix. It must answer the same for the same item during a
    batch (determinism); a catalog change between a crash and the re-delivery is tolerated since
    the re-delivered batch is skipped by the offset marker anyway.
    """

    item_genres: Callable[[str], list[str]] | None = None
    keys: KeyLayout = DEFAULT_KEYS
    ttl_s: int = SESSION_TTL_S
    name: str = "session"
    bulk: bool = False  # one MGET and one FCALL per batch (online_state.redis_functions, loaded)

    @staticmethod
    def users(events: Sequence[InteractionEvent]) -> list[str]:
        """The batch's users with session activity, in first-seen order (the read order)."""
        return list(dict.fromkeys(e.user_id for e in events if not isinstance(e, UserUpsert)))

    def read(self, pipe: Any, batch: Batch[InteractionEvent]) -> Reads[list[str]]:
        users = self.users(batch.events)
        if self.bulk:
            if users:
                pipe.mget([self.keys.session(user_id) for user_id in users])
            return Reads(queued=1 if users else 0, state=users)
        for user_id in users:
            pipe.get(self.keys.session(user_id))
        return Reads(queued=len(users), state=users)

    def write(self, pipe: Any, batch: Batch[InteractionEvent], reads: Reads[list[str]]) -> None:
        replies = reads.replies
        if self.bulk:
            sessions = self.apply(batch.events, replies[0] if replies else [], reads.state)
            by_ttl: dict[int, list[str]] = {}  # one SET command per TTL (two at most)
            for user_id, blob in sessions.items():
                by_ttl.setdefault(session_ttl(blob, self.ttl_s), []).append(user_id)
            for ttl, users in by_ttl.items():
                set_many(pipe, [self.keys.session(user_id) for user_id in users],
                         [encode_session(sessions[user_id]) for user_id in users], ttl)
            return
        for user_id, blob in self.apply(batch.events, replies, reads.state).items():
            pipe.set(self.keys.session(user_id), encode_session(blob), ex=session_ttl(blob, self.ttl_s))

    def apply(self, events: Sequence[InteractionEvent], replies: list[Any],
              users: list[str] | None = None) -> dict[str, SessionBlob]:
        """The new session of every user in the batch, from the ``read`` replies (pure); ``users``: the
        batch's :meth:`users`, when known already."""
        users = self.users(events) if users is None else users
        sessions: dict[str, SessionBlob | None] = {
            u: decode_session(raw) for u, raw in zip(users, replies, strict=True)
        }
        active = [e for e in events if not isinstance(e, UserUpsert)]
        weights = event_weights(active)
        for event, weight in zip(active, weights, strict=True):
            sessions[event.user_id] = apply_session_event(sessions[event.user_id], event, weight, self.item_genres)
        return {u: s for u, s in sessions.items() if s is not None}


# --- the worker's effect (listed in streams.effects_registry) ---------------------------------------


def make_effect(ctx: EffectContext) -> SessionEffect:
    # The worker's live catalogue: titles released while it runs are known once their upsert is read.
    catalog = ctx.catalog
    return SessionEffect(item_genres=catalog.genres_of if catalog is not None else None, keys=ctx.keys,
                         bulk=ctx.bulk)
