"""Experiment counts, exactly once: exposures (``impression`` events with ``experiments``) and the outcomes after them.

The server publishes one impression per answer of a user in an experiment, keyed by user on the interactions topic,
so it reaches the worker that owns the user in order with the user's later events, through the same
de-duplication by ``event_id`` and the same exactly-once protocol as every other effect. Keys and the stored forms:
:mod:`online_state.experiments` (which also holds the report's read).

Per user, one blob read and written whole (like the session): the positive engagements so far (``total``), the
recent exposures, and per experiment the user's row (variant, first exposure, pre-period engagements, counts).

- An exposure (an impression with tags): per tag, the user's ``exposures`` + 1; on the first exposure to the
  experiment, the variant and ``pre`` (= ``total`` then) are set, the variant's ``users`` counter + 1 and the user
  joins the variant's set. Shared counters (per experiment hash, commutative increments summed per batch):
  exposures, shown by position, the latency bucket of ``server_ms``, degraded answers; the titles go into the
  variant's HyperLogLog (``PFADD``: idempotent and order-free).
- An outcome (a positive engagement: play, complete, click, rating, add_to_list, as :func:`streams.trending.
  event_weights` i.e. ``models.feedback`` decides) is attributed to one exposure: the one whose ``request_id``
  the event carries, when it is among the recent ones and within :data:`REQUEST_ID_WINDOW_MS`; else the most
  recent exposure within :data:`ATTRIBUTION_WINDOW_MS` (event time) that showed the event's title. Then per tag of
  that exposure: the kind's count (clicks, plays, completes, ratings), ``hits`` + 1 when the title was on that
  list, a click at position ``p < POSITIONS`` in ``clicks:{p}``, and for interleaving the credit of the team that
  drafted the title.
  Every positive engagement after the user's first exposure (attributed or not) adds to ``engagements`` of every
  experiment the user is in; before it, it only raises ``total``.

Should a user's variant change (a new salt), the row keeps the first variant while the shared counters follow the
tags (what was shown). Exactly once: :meth:`ExperimentEffect.write` is a pure function of the events (in partition
order) and the read replies; a retried event never reaches it (de-duplication) and a redelivered batch is skipped
by the protocol; the shared keys only see sums, set members and HLL adds, which commute across partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from models.experiments.data import LATENCY_EDGES_MS, POSITIONS
from online_state.experiments import (
    Entry,
    ExperimentBlob,
    Exposure,
    Tag,
    counter_field,
    decode_experiment_blob,
    encode_experiment_blob,
    latency_bucket,
)
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.redis_functions import hincr_many, set_many
from schemas.events import Click, Complete, Impression, InteractionEvent, Play, Rating
from streams import metrics
from streams.effects import Batch, Effect, EffectContext, Reads
from streams.trending import event_weights

ATTRIBUTION_WINDOW_MS: Final = 30 * 60_000  # an outcome this long (event time) after an exposure is its outcome
# With the answer's request id the client says which list an outcome follows: a title picked from it and started
# after a film of two hours is still that list's play, so the named exposure counts for this long.
REQUEST_ID_WINDOW_MS: Final = 24 * 3_600_000
RECENT_EXPOSURES: Final = 20  # exposures a user's blob keeps for attribution
# Titles (and teams) of an exposure kept for attribution: a title further down was not seen, and the blob stays
# small (an impression may list IMPRESSION_MAX titles).
EXPOSURE_ITEMS: Final = 100
_OUTCOME_FIELD: Final = {Click: "clicks", Play: "plays", Complete: "completes", Rating: "ratings"}


@dataclass(slots=True)
class ExperimentWrites:
    """A batch's writes, from :func:`apply_experiment_events` (insertion-ordered: deterministic)."""

    blobs: dict[str, ExperimentBlob] = field(default_factory=dict)  # changed users' blobs
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # counts key -> field -> amount
    members: dict[str, dict[str, None]] = field(default_factory=dict)  # users set key -> users (ordered set)
    titles: dict[str, dict[str, None]] = field(default_factory=dict)  # HLL key -> titles
    exposures: int = 0
    attributed: int = 0
    unattributed: int = 0

    def incr(self, key: str, field_: str, amount: int = 1) -> None:
        fields = self.counts.setdefault(key, {})
        fields[field_] = fields.get(field_, 0) + amount


@dataclass(frozen=True, slots=True)
class _Fields:
    """A variant's counter fields, built once per variant name (a batch increments them per exposure)."""

    users: str
    exposures: str
    degraded: str
    shown: tuple[str, ...]
    clicks: tuple[str, ...]
    latency: tuple[str, ...]


@lru_cache(maxsize=4096)  # bounded: the names come from events
def _fields(variant: str) -> _Fields:
    return _Fields(counter_field(variant, "users"), counter_field(variant, "exposures"),
                   counter_field(variant, "degraded"),
                   tuple(counter_field(variant, f"shown:{p}") for p in range(POSITIONS)),
                   tuple(counter_field(variant, f"clicks:{p}") for p in range(POSITIONS)),
                   tuple(counter_field(variant, f"lat:{b}") for b in range(len(LATENCY_EDGES_MS))))


def attribute(recent: Sequence[Exposure], event: InteractionEvent) -> Exposure | None:
    """The exposure an outcome follows (see the module docstring), or ``None``. ``recent``: newest first."""
    rid = event.request_id  # type: ignore[union-attr]
    if rid is not None:
        for exposure in recent:
            if exposure.rid == rid and event.ts - exposure.ts <= REQUEST_ID_WINDOW_MS:
                return exposure
    item = event.item_id  # type: ignore[union-attr]
    for exposure in recent:
        if 0 <= event.ts - exposure.ts <= ATTRIBUTION_WINDOW_MS and item in exposure.items:
            return exposure
    return None


def _expose(blob: ExperimentBlob, user: str, event: Impression, keys: KeyLayout, out: ExperimentWrites) -> None:
    tags: list[Tag] = []
    for t in event.experiments or ():
        if all(t.name != other.name for other in tags):  # an experiment listed twice counts once
            tags.append(Tag(t.name, t.variant, t.teams[:EXPOSURE_ITEMS] if t.teams else None))
    items = event.item_ids
    blob.recent = [Exposure(event.request_id, event.ts, items[:EXPOSURE_ITEMS], tags),
                   *(e for e in blob.recent if event.ts - e.ts <= REQUEST_ID_WINDOW_MS)][:RECENT_EXPOSURES]
    out.exposures += 1
    shown = min(len(items), POSITIONS)
    bucket = latency_bucket(event.server_ms) if event.server_ms is not None else None
    for tag in tags:
        variant, names = tag.variant, _fields(tag.variant)
        counts = out.counts.setdefault(keys.experiment_counts(tag.name), {})
        entry = blob.exp.get(tag.name)
        if entry is None:
            blob.exp[tag.name] = entry = Entry(variant=variant, first=event.ts, pre=blob.total)
            counts[names.users] = counts.get(names.users, 0) + 1
            out.members.setdefault(keys.experiment_users(tag.name, variant), {})[user] = None
        entry.exposures += 1
        bumped = [names.exposures, *names.shown[:shown]]
        if bucket is not None:
            bumped.append(names.latency[bucket])
        if event.degraded:
            bumped.append(names.degraded)
        for f in bumped:
            counts[f] = counts.get(f, 0) + 1
        out.titles.setdefault(keys.experiment_titles(tag.name, variant), {}).update(dict.fromkeys(items))


def _outcome(blob: ExperimentBlob, event: InteractionEvent, keys: KeyLayout, out: ExperimentWrites) -> None:
    """A positive engagement of a user already exposed to an experiment."""
    exposure = attribute(blob.recent, event)
    if exposure is None:
        out.unattributed += 1
    else:
        out.attributed += 1
        item = event.item_id  # type: ignore[union-attr]
        pos = exposure.items.index(item) if item in exposure.items else None
        kind_field = _OUTCOME_FIELD.get(type(event))
        for tag in exposure.tags:
            entry = blob.exp.get(tag.name)
            if entry is None:  # the entry is made with the exposure: only a blob from another layout lacks it
                continue
            if kind_field is not None:
                setattr(entry, kind_field, getattr(entry, kind_field) + 1)
            if pos is None:
                continue
            entry.hits += 1
            if isinstance(event, Click) and pos < POSITIONS:
                out.incr(keys.experiment_counts(tag.name), _fields(tag.variant).clicks[pos])
            if tag.teams is not None and pos < len(tag.teams):
                team = tag.teams[pos]
                entry.credit[team] = entry.credit.get(team, 0) + 1
    for entry in blob.exp.values():
        entry.engagements += 1


def apply_experiment_events(blobs: dict[str, ExperimentBlob | None], events: Sequence[InteractionEvent],
                            positive: Sequence[bool], keys: KeyLayout = DEFAULT_KEYS) -> ExperimentWrites:
    """Every event onto its user's blob (``blobs``: the stored ones of the events' users, ``None`` absent), in
    order; ``positive[i]``: whether ``events[i]`` is a positive engagement. Pure: the writes of a batch."""
    out = ExperimentWrites()
    for event, good in zip(events, positive, strict=True):
        exposure = isinstance(event, Impression) and bool(event.experiments)
        if not (exposure or good):
            continue
        user = event.user_id
        blob = blobs.get(user)
        if blob is None:
            blobs[user] = blob = ExperimentBlob(v=1)
        if exposure:
            _expose(blob, user, event, keys, out)  # type: ignore[arg-type]
        else:
            if blob.exp:
                _outcome(blob, event, keys, out)
            blob.total += 1
        out.blobs[user] = blob
    return out


@dataclass(slots=True)
class _State:
    users: list[str]  # read order
    positive: list[bool]  # per batch event
    writes: ExperimentWrites | None = None  # what write queued (for the metrics once committed)


@dataclass(frozen=True, slots=True)
class ExperimentEffect(Effect[InteractionEvent]):
    """The experiments effect (see the module docstring): ``GET``/``MGET`` of the users' blobs, then ``SET`` of the
    changed ones, and ``HINCRBY`` / ``SADD`` / ``PFADD`` on the shared keys."""

    keys: KeyLayout = DEFAULT_KEYS
    name: str = "experiments"
    bulk: bool = False  # one MGET, one FCALL per kind of write (online_state.redis_functions, loaded)

    @staticmethod
    def relevant(events: Sequence[InteractionEvent]) -> tuple[list[str], list[bool]]:
        """The users whose blob the batch may change (first-seen order) and, per event, whether it is positive."""
        positive = [w > 0 for w in event_weights(events)]
        users = dict.fromkeys(
            e.user_id for e, good in zip(events, positive, strict=True)
            if good or (isinstance(e, Impression) and e.experiments)
        )
        return list(users), positive

    def read(self, pipe: Any, batch: Batch[InteractionEvent]) -> Reads[_State]:
        users, positive = self.relevant(batch.events)
        if not users:
            return Reads(state=_State(users, positive))
        if self.bulk:
            pipe.mget([self.keys.experiment_user(u) for u in users])
            return Reads(queued=1, state=_State(users, positive))
        for user in users:
            pipe.get(self.keys.experiment_user(user))
        return Reads(queued=len(users), state=_State(users, positive))

    def apply(self, events: Sequence[InteractionEvent], replies: list[Any], state: _State) -> ExperimentWrites:
        """The batch's writes from the ``read`` replies (pure)."""
        raws = (replies[0] if replies else []) if self.bulk else replies
        blobs = {u: decode_experiment_blob(raw) for u, raw in zip(state.users, raws, strict=True)}
        return apply_experiment_events(blobs, events, state.positive, self.keys)

    def write(self, pipe: Any, batch: Batch[InteractionEvent], reads: Reads[_State]) -> None:
        state = reads.state
        if state is None or not state.users:
            return
        out = state.writes = self.apply(batch.events, reads.replies, state)
        blob_keys = [self.keys.experiment_user(u) for u in out.blobs]
        values = [encode_experiment_blob(b) for b in out.blobs.values()]
        if self.bulk:
            set_many(pipe, blob_keys, values, None)
            hincr_many(pipe, list(out.counts), [([x for f, n in fields.items() for x in (f, str(n))], [])
                                                for fields in out.counts.values()])
        else:
            for key, value in zip(blob_keys, values, strict=True):
                pipe.set(key, value)
            for key, fields in out.counts.items():
                for f, n in fields.items():
                    pipe.hincrby(key, f, n)
        for key, users in out.members.items():
            pipe.sadd(key, *users)
        for key, titles in out.titles.items():
            pipe.pfadd(key, *titles)

    def committed(self, batch: Batch[InteractionEvent], reads: Reads[_State], replies: list[Any]) -> None:
        out = reads.state.writes if reads.state is not None else None
        if out is None:
            return
        metrics.EXPERIMENT_EXPOSURES.inc(out.exposures)
        metrics.EXPERIMENT_OUTCOMES.labels("attributed").inc(out.attributed)
        metrics.EXPERIMENT_OUTCOMES.labels("unattributed").inc(out.unattributed)


def make_effect(ctx: EffectContext) -> ExperimentEffect:
    return ExperimentEffect(keys=ctx.keys, bulk=ctx.bulk)
