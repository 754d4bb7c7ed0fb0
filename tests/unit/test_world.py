"""The synthetic world generator: valid, deterministic, streamed, and with the structure it promises
(power-law popularity, new releases, sessions, hour-of-day patterns, and tastes that really drift)."""

from __future__ import annotations

import collections
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.decoder import EventError, decode_event
from schemas.events import (
    MATURITY_ORDER,
    Event,
    Impression,
    ItemRemove,
    ItemUpsert,
    Play,
    UserUpsert,
    encode,
)
from tools.datasets.world import WorldConfig, WorldSummary, corrupt, generate_world, run_world
from tools.datasets.world_catalog import GENRES
from tools.datasets.world_users import COUNTRIES, COUNTRY_TZ, WorldModel

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Small enough to keep the module fast, big enough for the statistics below.
MAIN: dict[str, Any] = {"users": 200, "items": 2000, "events": 40_000, "seed": 7, "days": 14.0}


@dataclass
class Parsed:
    summary: WorldSummary
    catalog: list[Event]
    events: list[Event]
    raw_events: list[bytes]
    world: dict[str, Any]

    def plays(self) -> Iterator[Play]:
        return (e for e in self.events if isinstance(e, Play))

    def upserts(self) -> dict[str, ItemUpsert]:
        return {e.item_id: e for e in self.catalog if isinstance(e, ItemUpsert)}


def _parse(summary: WorldSummary) -> Parsed:
    raw_events = summary.events_path.read_bytes().splitlines()
    catalog = [decode_event(line) for line in summary.catalog_path.read_bytes().splitlines()]
    events: list[Event] = []
    for line in raw_events:
        try:
            events.append(decode_event(line))
        except EventError:
            continue
    return Parsed(summary, catalog, events, raw_events, json.loads(summary.world_path.read_bytes()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Parsed:
    return _parse(generate_world(tmp_path_factory.mktemp("world"), **MAIN))


@pytest.fixture(scope="module")
def frozen_world(tmp_path_factory: pytest.TempPathFactory) -> Parsed:
    """The same world with drift switched off: the control for the drift test."""
    model = WorldModel(regime_shifts=0.0, walk_sd=0.0, style_walk_sd=0.0)
    config = WorldConfig(**MAIN, model=model)
    return _parse(run_world(tmp_path_factory.mktemp("frozen"), config))


def _user_genre_sequences(parsed: Parsed, min_plays: int) -> list[list[str]]:
    upserts = parsed.upserts()
    per_user: dict[str, list[str]] = collections.defaultdict(list)
    for play in parsed.plays():
        per_user[play.user_id].append(upserts[play.item_id].genres[0])
    return [seq for seq in per_user.values() if len(seq) >= min_plays]


def _tv(a: list[str], b: list[str]) -> float:
    """Total variation distance between the genre distributions of two play lists."""
    ca, cb = collections.Counter(a), collections.Counter(b)
    return 0.5 * sum(abs(ca[g] / len(a) - cb[g] / len(b)) for g in GENRES)


# -- validity, determinism, counts --------------------------------------------------------------


def test_every_line_decodes_canonically_and_in_time_order(world: Parsed) -> None:
    assert len(world.raw_events) == MAIN["events"] == len(world.events)
    for path in (world.summary.catalog_path, world.summary.events_path):
        previous = 0
        for line in path.read_bytes().splitlines():
            event = decode_event(line)
            assert encode(event) == line  # canonical bytes, as the schema encoder writes them
            assert event.ts >= previous
            previous = event.ts


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    params = {"users": 40, "items": 300, "events": 3000, "days": 2.0}
    a = generate_world(tmp_path / "a", seed=3, **params)  # type: ignore[arg-type]
    b = generate_world(tmp_path / "b", seed=3, **params)  # type: ignore[arg-type]
    c = generate_world(tmp_path / "c", seed=4, **params)  # type: ignore[arg-type]
    for name in ("catalog.jsonl", "events.jsonl", "world.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name
    assert a.events_path.read_bytes() != c.events_path.read_bytes()
    assert a.catalog_path.read_bytes() != c.catalog_path.read_bytes()


def test_counts_match_world_json(world: Parsed) -> None:
    doc = world.world
    counts = collections.Counter(type(e).__struct_config__.tag for e in world.events)
    assert doc["counts"] == {k: counts.get(k, 0) for k in doc["counts"]}
    assert doc["events"] == len(world.raw_events) == world.summary.events
    catalog_counts = collections.Counter(type(e).__struct_config__.tag for e in world.catalog)
    assert doc["catalog_counts"] == dict(catalog_counts)
    assert doc["catalog_events"] == len(world.catalog)
    assert doc["malformed"] == 0
    assert doc["seed"] == MAIN["seed"] and doc["params"]["users"] == MAIN["users"]
    assert doc["version"].startswith("streamrec-world/")
    assert doc["first_event_ts"] == world.events[0].ts and doc["last_event_ts"] == world.events[-1].ts
    assert doc["start_ts"] <= doc["first_event_ts"] < doc["end_ts"] == doc["start_ts"] + MAIN["days"] * DAY_MS
    assert doc["users_seen"] == counts["user_upsert"]


def test_progress_reports_every_line_in_several_steps(tmp_path: Path) -> None:
    steps: list[int] = []
    generate_world(tmp_path, users=50, items=200, events=2500, days=2.0, progress=steps.append)
    assert sum(steps) == 2500 and len(steps) > 10  # written as it goes, not at the end


def test_invalid_parameters_are_refused(tmp_path: Path) -> None:
    for bad in ({"users": 0}, {"items": 0}, {"events": -1}, {"malformed_rate": 1.5}, {"days": 0.0}):
        with pytest.raises(ValueError):
            generate_world(tmp_path, **bad)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=st.integers(1, 30), items=st.integers(1, 120), events=st.integers(0, 600),
    seed=st.integers(-(2**40), 2**40), days=st.floats(0.05, 3.0),
)
def test_small_worlds_keep_every_invariant(
    users: int, items: int, events: int, seed: int, days: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        summary = generate_world(Path(tmp), users=users, items=items, events=events, seed=seed, days=days)
        parsed = _parse(summary)
    assert len(parsed.raw_events) == len(parsed.events) == events
    assert sum(1 for e in parsed.catalog if isinstance(e, ItemUpsert)) == items
    _check_invariants(parsed)


def _check_invariants(parsed: Parsed) -> None:
    """Time order, profiles first, titles only while in the catalogue and within maturity limits,
    one user and device per session, local_hour consistent with ts and country."""
    upserts = parsed.upserts()
    removed = {e.item_id: e.ts for e in parsed.catalog if isinstance(e, ItemRemove)}
    profile: dict[str, UserUpsert] = {}
    sessions: dict[str, tuple[str, str | None, str | None]] = {}
    previous = 0
    for event in parsed.events:
        assert event.ts >= previous
        previous = event.ts
        if isinstance(event, UserUpsert):
            assert event.user_id not in profile
            profile[event.user_id] = event
            continue
        assert not isinstance(event, ItemUpsert | ItemRemove)
        assert event.user_id in profile, "user_upsert must precede the user's events"
        limit = MATURITY_ORDER.index(profile[event.user_id].maturity_limit or "NR")
        titles = event.item_ids if isinstance(event, Impression) else [event.item_id]
        for item_id in titles:
            item = upserts[item_id]
            assert item.ts <= event.ts < removed.get(item_id, 2**62)
            assert item.available
            assert MATURITY_ORDER.index(item.maturity_rating) <= limit
        ctx = event.context
        assert ctx is not None and ctx.session_id is not None and ctx.local_hour is not None
        key = (event.user_id, ctx.device, ctx.country)
        assert sessions.setdefault(ctx.session_id, key) == key
        assert ctx.country == profile[event.user_id].country
        tz = int(COUNTRY_TZ[COUNTRIES.index(ctx.country)])
        assert ctx.local_hour == (event.ts // HOUR_MS + tz) % 24


def test_main_world_keeps_every_invariant(world: Parsed) -> None:
    _check_invariants(world)


def test_sessions_are_contiguous_per_user(world: Parsed) -> None:
    """Sessions of one user never overlap: once a user's next session starts, the last one is over."""
    closed: set[str] = set()
    current: dict[str, str] = {}
    for event in world.events:
        if isinstance(event, UserUpsert | ItemUpsert | ItemRemove) or event.context is None:
            continue
        session = event.context.session_id
        assert session is not None and session not in closed
        before = current.get(event.user_id)
        if before is not None and before != session:
            closed.add(before)
        current[event.user_id] = session


# -- catalogue ----------------------------------------------------------------------------------


def test_default_catalogue_has_ten_thousand_titles_with_metadata(tmp_path: Path) -> None:
    summary = generate_world(tmp_path, events=0)
    catalog = [decode_event(line) for line in summary.catalog_path.read_bytes().splitlines()]
    items = [e for e in catalog if isinstance(e, ItemUpsert)]
    assert len(items) >= 10_000 and summary.events_path.read_bytes() == b""
    assert {g for e in items for g in e.genres} <= set(GENRES)
    assert all(e.title and e.genres and e.tags and e.duration_seconds for e in items)
    assert {e.maturity_rating for e in items} == set(MATURITY_ORDER)
    assert 0.05 < np.mean([e.is_original for e in items]) < 0.3
    appearances = collections.Counter(name for e in items for name in e.cast)
    assert appearances.most_common(1)[0][1] >= 20  # stars recur across many titles
    new = [e for e in items if e.ts > summary.start_ts]
    assert 0.05 <= len(new) / len(items) <= 0.10
    assert all(summary.start_ts < e.ts < summary.end_ts and e.release_ts == e.ts for e in new)
    assert all(e.release_ts <= summary.start_ts for e in items if e.ts == summary.start_ts)
    assert any(isinstance(e, ItemRemove) for e in catalog)


# -- behaviour ----------------------------------------------------------------------------------


def test_popularity_is_a_power_law(world: Parsed) -> None:
    plays = collections.Counter(p.item_id for p in world.plays())
    ranked = sorted(plays.values(), reverse=True)
    top = MAIN["items"] // 100  # the top 1% of titles
    share = sum(ranked[:top]) / sum(ranked)
    assert share > 0.25, share  # uniform popularity would give 1%


def test_new_releases_arrive_mid_log_with_a_decaying_boost(world: Parsed) -> None:
    upserts = world.upserts()
    start, end = world.world["start_ts"], world.world["end_ts"]
    new = {i: e.ts for i, e in upserts.items() if e.ts > start}
    ages = np.array([(p.ts - new[p.item_id]) / DAY_MS for p in world.plays() if p.item_id in new])
    assert len(ages) > 100 and (ages >= 0).all()
    # Plays per new title per day in its first 2 days, against days 4 to 8 after release (only
    # titles released early enough to be seen for the whole 8 days count).
    early = {i for i, ts in new.items() if ts + 8 * DAY_MS < end}
    ages_early = np.array([(p.ts - new[p.item_id]) / DAY_MS for p in world.plays() if p.item_id in early])
    first = np.count_nonzero(ages_early < 2) / 2
    later = np.count_nonzero((ages_early >= 4) & (ages_early < 8)) / 4
    assert first > 1.5 * later, (first, later)


def test_local_hour_and_device_patterns(world: Parsed) -> None:
    hours = collections.Counter(
        e.context.local_hour for e in world.events if isinstance(e, Impression) and e.context
    )
    evening = sum(hours[h] for h in range(18, 24))
    small_hours = sum(hours[h] for h in range(2, 8))
    assert evening > 3 * small_hours, hours
    # Each user mostly watches on one device.
    per_user: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for e in world.events:
        if isinstance(e, Impression) and e.context and e.context.device:
            per_user[e.user_id][e.context.device] += 1
    heavy = [c for c in per_user.values() if sum(c.values()) >= 10]
    assert np.mean([c.most_common(1)[0][1] / sum(c.values()) for c in heavy]) > 0.6


def test_choices_follow_taste(world: Parsed) -> None:
    """In any stretch of 20 plays a user sticks to a few genres, far more than the global mix does."""
    shares = []
    for seq in _user_genre_sequences(world, 40):
        for i in range(0, len(seq) - 20, 20):
            shares.append(sum(n for _, n in collections.Counter(seq[i : i + 20]).most_common(3)) / 20)
    everyone = collections.Counter(g for seq in _user_genre_sequences(world, 1) for g in seq)
    global_top3 = sum(n for _, n in everyone.most_common(3)) / sum(everyone.values())
    assert np.mean(shares) > max(0.6, global_top3 + 0.2), (np.mean(shares), global_top3)


def test_tastes_drift(world: Parsed, frozen_world: Parsed) -> None:
    """First third vs last third of a heavy user's plays differ far more than two interleaved thirds
    do; in the control world without drift they do not. Removing drift makes this test fail."""

    def gap(parsed: Parsed) -> tuple[float, float]:
        seqs = _user_genre_sequences(parsed, 45)
        assert len(seqs) >= 20
        chrono = np.mean([_tv(s[: len(s) // 3], s[-(len(s) // 3) :]) for s in seqs])
        # Same sample sizes as the thirds, but spread over the whole log: noise without drift.
        interleaved = np.mean([_tv(s[0::3][: len(s) // 3], s[2::3][: len(s) // 3]) for s in seqs])
        return float(chrono), float(interleaved)

    chrono, interleaved = gap(world)
    control_chrono, control_interleaved = gap(frozen_world)
    # Measured over seeds 0-5: about 2.1x with drift, 1.0x-1.4x without (new releases shift genre
    # popularity a little even when tastes stand still).
    assert chrono > 1.7 * interleaved, (chrono, interleaved)
    assert control_chrono < 1.55 * control_interleaved, (control_chrono, control_interleaved)
    assert chrono > control_chrono + 0.2


# -- malformed lines ----------------------------------------------------------------------------


def test_malformed_lines_replace_a_share_and_never_decode(tmp_path: Path) -> None:
    params = {"users": 60, "items": 400, "events": 8000, "seed": 11, "days": 3.0}
    clean = generate_world(tmp_path / "clean", **params)  # type: ignore[arg-type]
    dirty = generate_world(tmp_path / "dirty", malformed_rate=0.2, **params)  # type: ignore[arg-type]
    clean_lines = clean.events_path.read_bytes().splitlines()
    dirty_lines = dirty.events_path.read_bytes().splitlines()
    assert len(clean_lines) == len(dirty_lines) == 8000
    bad = 0
    for before, after in zip(clean_lines, dirty_lines, strict=True):
        if before == after:
            decode_event(after)
            continue
        bad += 1
        with pytest.raises(EventError):
            decode_event(after)
        assert not isinstance(decode_event(before), UserUpsert)  # profiles stay valid
    doc = json.loads(dirty.world_path.read_bytes())
    assert doc["malformed"] == bad == dirty.malformed
    assert 0.15 * 8000 < bad < 0.25 * 8000
    assert all(n > 0 for n in doc["malformed_counts"].values())
    assert sum(doc["counts"].values()) + bad == 8000


@pytest.mark.parametrize("kind", range(5))
def test_each_corruption_fails_decoding(world: Parsed, kind: int) -> None:
    for line in world.raw_events[:300]:
        bad = corrupt(line, kind)
        assert b"\n" not in bad
        with pytest.raises(EventError):
            decode_event(bad)
