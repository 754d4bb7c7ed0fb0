"""``streamrec generate``: a synthetic streaming-service world with drifting tastes, written as event logs.

Writes three files into ``out_dir``:

* ``catalog.jsonl`` — ``item_upsert`` for every title (at the log start, or at its release for the
  new releases that arrive during the log) and a few ``item_remove``, ordered by ``ts``;
* ``events.jsonl`` — ``user_upsert`` (once per user, before anything else of theirs), then sessions
  of ``impression``/``click``/``play``/``progress``/``complete``/``skip``/``rating``/``add_to_list``,
  ordered by ``ts``; exactly ``events`` lines;
* ``world.json`` — parameters, seed, counts per type, time range and generator version.

The model (tastes that drift, Zipf popularity with release boosts, sessions shaped by device and
hour of day) lives in :mod:`~tools.datasets.world_catalog`, :mod:`~tools.datasets.world_users`
and :mod:`~tools.datasets.world_sessions`, the encoding in :mod:`~tools.datasets.world_encode`;
this module runs the clock and keeps the output in time order.

Streaming: time advances in chunks (an hour, or less when the log is dense). Sessions starting in a
chunk are simulated in one vectorised batch; their events are merged with the still-pending events of
earlier sessions, and everything before the chunk's end is written: later sessions start after it,
so nothing can come before what is already on disk. Memory is bounded by the sessions in flight, not
by the number of events. A rate controller sizes each chunk's sessions from the lines still to write
(knowing, from the sessions so far, what share of a late session's lines still fits before the end),
so that the lines before the span's end add up to ``events``; the file then ends at exactly
``events`` lines, the sessions running at the cut being cut off as in any real log export. The last
line lands close to ``end_ts`` (minutes past it with the defaults); a sparse log can fall short and
end with the tails of the last sessions, an hour or two past it; and when the users cannot fill the
span at all (a handful of users asked for many events) the log runs on until they have.
``world.json`` records the first and last event ``ts``.

Determinism: one :class:`numpy.random.SeedSequence` from ``seed`` is split into independent streams
for the catalogue, the users, the sessions and the malformed lines, so the same seed gives the same
bytes, and ``malformed_rate`` replaces lines without changing the world behind them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import orjson

from tools.datasets.world_catalog import Catalog, build_catalog
from tools.datasets.world_encode import MALFORMED_KINDS, EventWriter, corrupt
from tools.datasets.world_sessions import (
    HOUR_MS,
    KIND_NAMES,
    OFFSET_BIN_MS,
    OFFSET_BINS,
    SESSION_GAP_MS,
    UPSERT,
    Rows,
    SessionSimulator,
)
from tools.datasets.world_users import TasteModel, Users, WorldModel

__all__ = [
    "DEFAULT_START_TS", "MALFORMED_KINDS", "WorldConfig", "WorldState", "WorldSummary", "config_from_json",
    "corrupt", "generate_world", "replay_world", "run_world",
]

GENERATOR_VERSION: Final = "streamrec-world/1"
DEFAULT_START_TS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS: Final = 86_400_000
# Chunks hold at most about this many session starts, which bounds the memory of one batch.
_SESSIONS_PER_CHUNK: Final = 2000
_LINES_PER_SESSION_GUESS: Final = 8.0


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Everything that determines a world (same config, same bytes)."""

    users: int = 2000
    items: int = 10_000
    events: int = 200_000
    seed: int = 0
    malformed_rate: float = 0.0
    start_ts: int = DEFAULT_START_TS
    days: float = 30.0
    model: WorldModel = field(default_factory=WorldModel)

    def validate(self) -> None:
        if self.users < 1 or self.items < 1 or self.events < 0:
            raise ValueError("need users >= 1, items >= 1 and events >= 0")
        if not 0.0 <= self.malformed_rate <= 1.0:
            raise ValueError("malformed_rate must be within [0, 1]")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError("days must be positive")
        # The schema caps ts at 2100; leave years of room for sessions running past the span.
        if not (self.start_ts >= 0 and self.start_ts + self.days * DAY_MS <= 4_000_000_000_000):
            raise ValueError("start_ts must be epoch milliseconds and the span must end well before 2100")


def config_from_json(doc: dict[str, Any]) -> WorldConfig:
    """The config a ``world.json`` document was generated with (its ``seed`` and ``params``)."""
    params = dict(doc["params"])
    model = dict(params.pop("model", {}))
    if "favourite_logits" in model:  # a list in JSON, a tuple in the (hashable, frozen) model
        model["favourite_logits"] = tuple(model["favourite_logits"])
    return WorldConfig(**params, seed=int(doc["seed"]), model=WorldModel(**model))


@dataclass(slots=True)
class WorldState:
    """The world behind a log: its catalogue, its users and the taste model moving them (what ``run_world``
    simulates with, the random streams included), so the simulator can carry on where a log ends."""

    catalog: Catalog
    taste: TasteModel
    users: Users
    sim: SessionSimulator
    start: int
    end: int
    bad_rng: np.random.Generator


def _world_state(config: WorldConfig) -> WorldState:
    """The catalogue and the users as ``run_world`` starts them: one seed split into the same four streams."""
    seq = np.random.SeedSequence(config.seed % (1 << 64))
    cat_rng, user_rng, sess_rng, bad_rng = (np.random.default_rng(s) for s in seq.spawn(4))
    span_ms = round(config.days * DAY_MS)
    start, end = config.start_ts, config.start_ts + span_ms
    catalog = build_catalog(cat_rng, config.items, start, span_ms)
    taste = TasteModel(user_rng, config.model, start, span_ms)
    users = taste.build(config.users)
    return WorldState(catalog, taste, users, SessionSimulator(sess_rng, catalog, users, taste), start, end, bad_rng)


class _LineCounter:
    """Stands in for the event writer when only the world's state matters: counts lines, encodes nothing."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, rows: Rows, slates: dict[int, list[int]]) -> None:
        self.written += len(rows)


def replay_world(config: WorldConfig) -> WorldState:
    """The world as it stands at the last line of the log ``run_world(config)`` writes: the same sessions are
    simulated with the same random streams (so every user's drifted taste is the generator's, number for number),
    but nothing is encoded or written. Costs the session simulation only, a fraction of a generation."""
    config.validate()
    state = _world_state(config)
    _simulate(state.sim, _LineCounter(), config, state.start, state.end)
    return state


@dataclass(frozen=True, slots=True)
class WorldSummary:
    """What was written: the paths plus the contents of ``world.json``."""

    out_dir: Path
    catalog_path: Path
    events_path: Path
    world_path: Path
    version: str
    seed: int
    params: dict[str, Any]
    events: int  # lines in events.jsonl, malformed ones included
    catalog_events: int
    counts: dict[str, int]  # valid events.jsonl lines per type
    catalog_counts: dict[str, int]
    malformed: int
    malformed_counts: dict[str, int]
    users_seen: int
    sessions: int  # session ids issued up to the last written event
    new_releases: int
    removed_items: int
    start_ts: int
    end_ts: int
    first_event_ts: int | None
    last_event_ts: int | None

    def to_json(self) -> dict[str, Any]:
        """The ``world.json`` document (file names relative to ``out_dir``, so it is reproducible)."""
        doc = asdict(self)
        for key in ("out_dir", "catalog_path", "events_path", "world_path"):
            doc.pop(key)
        doc["files"] = {"catalog": self.catalog_path.name, "events": self.events_path.name}
        return doc


def generate_world(
    out_dir: Path,
    *,
    users: int = 2000,
    items: int = 10_000,
    events: int = 200_000,
    seed: int = 0,
    malformed_rate: float = 0.0,
    start_ts: int = DEFAULT_START_TS,
    days: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> WorldSummary:
    """Generate a world into ``out_dir``; ``progress`` gets the event lines written since its last call."""
    config = WorldConfig(
        users=users, items=items, events=events, seed=seed, malformed_rate=malformed_rate,
        start_ts=start_ts, days=days,
    )
    return run_world(Path(out_dir), config, progress)


def run_world(
    out_dir: Path, config: WorldConfig, progress: Callable[[int], None] | None = None
) -> WorldSummary:
    """:func:`generate_world` with every knob of the model reachable (tests turn drift off here)."""
    config.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _world_state(config)
    catalog, users, sim, start, end = state.catalog, state.users, state.sim, state.start, state.end
    catalog_path = out_dir / "catalog.jsonl"
    catalog_counts = {"item_upsert": 0, "item_remove": 0}
    with catalog_path.open("wb", buffering=1 << 20) as f:
        for _, line, kind in catalog.lines(f"c{config.seed}-"):
            f.write(line + b"\n")
            catalog_counts[kind] += 1

    events_path = out_dir / "events.jsonl"
    with events_path.open("wb", buffering=1 << 20) as f:
        writer = EventWriter(f, config.seed, config.malformed_rate, catalog, users, state.bad_rng, progress)
        _simulate(sim, writer, config, start, end)

    summary = WorldSummary(
        out_dir=out_dir, catalog_path=catalog_path, events_path=events_path,
        world_path=out_dir / "world.json",
        version=GENERATOR_VERSION, seed=config.seed,
        params={
            "users": config.users, "items": config.items, "events": config.events,
            "malformed_rate": config.malformed_rate, "start_ts": config.start_ts, "days": config.days,
            "model": asdict(config.model),
        },
        events=writer.written, catalog_events=sum(catalog_counts.values()),
        counts={KIND_NAMES[k]: c for k, c in enumerate(writer.counts)}, catalog_counts=catalog_counts,
        malformed=sum(writer.bad_counts),
        malformed_counts=dict(zip(MALFORMED_KINDS, writer.bad_counts, strict=True)),
        users_seen=writer.counts[UPSERT], sessions=writer.max_session + 1,
        new_releases=int(catalog.is_new.sum()),
        removed_items=catalog_counts["item_remove"], start_ts=start, end_ts=end,
        first_event_ts=writer.first_ts, last_event_ts=writer.last_ts,
    )
    summary.world_path.write_bytes(
        orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    return summary


class _LineSink(Protocol):
    written: int

    def write(self, rows: Rows, slates: dict[int, list[int]]) -> None: ...


def _simulate(
    sim: SessionSimulator, writer: _LineSink, config: WorldConfig, start: int, end: int
) -> None:
    """Run the clock chunk by chunk until exactly ``config.events`` lines are written."""
    target = config.events
    if target == 0:
        return
    hourly = sim.hourly_weight()
    hours = (end - start) / HOUR_MS
    per_hour = target / _LINES_PER_SESSION_GUESS / hours
    chunk_ms = max(1000, HOUR_MS // max(1, math.ceil(per_hour / _SESSIONS_PER_CHUNK)))
    n_chunks = math.ceil((end - start) / chunk_ms)
    t0s = start + np.arange(n_chunks, dtype=np.int64) * chunk_ms
    t1s = np.minimum(t0s + chunk_ms, end)
    weight = hourly[(t0s // HOUR_MS) % 24] * (t1s - t0s)

    mid_left = end - (t0s + t1s) // 2  # time from a chunk's middle to the end of the span
    rng = sim.rng
    # in_span: generated lines before `end` (what the controller fills); total: all generated lines.
    in_span = total = kept = requested = 0
    offsets = np.zeros(OFFSET_BINS, dtype=np.int64)
    carry = Rows.empty()
    slates: dict[int, list[int]] = {}
    c = 0
    done = False
    while writer.written < target:
        overtime = c >= n_chunks  # the span is over but lines are missing: keep going past its end
        if overtime:
            t0 = end + (c - n_chunks) * chunk_ms
            t1 = t0 + chunk_ms
            if c > n_chunks + 1_000_000:
                raise RuntimeError("the session simulator stopped producing events")
        else:
            t0, t1 = int(t0s[c]), int(t1s[c])
        if not done:
            # Lines per kept session, and kept share of requested sessions, with a weak prior.
            per_session = (total + 20 * _LINES_PER_SESSION_GUESS) / (kept + 20)
            keep_rate = (kept + 20) / (requested + 20)
            if overtime:
                lam = (target - total) / per_session
            else:
                # A session started near the end only has its first lines inside the span: weigh
                # each remaining chunk by the share of a session's lines that will still fit.
                fit = np.ones(n_chunks - c)
                if offsets.any():
                    cdf = np.cumsum(offsets) / offsets.sum()
                    fit = cdf[np.minimum(mid_left[c:] // OFFSET_BIN_MS, OFFSET_BINS - 1)]
                expected = float(np.dot(weight[c:], fit))
                lam = (target - in_span) / per_session * float(weight[c]) / expected if expected > 0 else 0.0
            lam = max(0.0, lam) / keep_rate
            # Cap: a user fits at most one session per gap, so asking for more only wastes work.
            cap = min(4.0 * _SESSIONS_PER_CHUNK, sim.users.n * math.ceil((t1 - t0) / SESSION_GAP_MS))
            n = int(rng.poisson(min(lam, cap)))
            res = sim.chunk(t0, t1, n)
            total += len(res.rows)
            in_span += int(np.count_nonzero(res.rows.ts < end))
            kept += res.kept
            requested += res.requested
            offsets += res.offsets
            slates.update(res.slates)
            batch = Rows.concat([carry, res.rows]) if len(carry) else res.rows
            # Enough lines before the end of the span (or at all, in overtime): stop simulating. The
            # first `target` lines in time order are then all before the end whenever possible.
            done = (total if overtime else in_span) >= target
        else:
            batch = carry
        c += 1
        batch = batch.take(np.argsort(batch.ts, kind="stable"))
        # Everything before t1 is final: sessions simulated later start at t1 or after.
        cut = len(batch) if done else int(np.searchsorted(batch.ts, t1, side="left"))
        cut = min(cut, target - writer.written)
        writer.write(batch.take(slice(0, cut)), slates)
        carry = batch.take(slice(cut, None))
