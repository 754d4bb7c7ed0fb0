"""Forward-decay arithmetic of ``streams.trending`` without Redis: the stored increments commute,
read back as a naive exponentially decayed counter, and generations are a function of event time."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_state.keys import KeyLayout
from online_state.trending import (
    GENERATION_HALF_LIVES,
    WINDOWS,
    generation,
    landmark,
    read_factor,
    scope_from_dict,
)
from schemas.events import Click, Context, Impression, Play, Rating, Skip, UserUpsert
from streams.effects import Batch, BatchInfo
from streams.trending import TrendingEffect, decayed_naive, event_weights, forward_amount

T0 = 1_700_000_000_000
INFO = BatchInfo("interactions", 0, 0, 0)


def stored_then_read(events: list[tuple[float, int]], now_ms: int, half_life: int) -> float:
    """What Redis + ``read_trending`` compute: per-generation sums, scaled, current + previous."""
    sums: dict[int, float] = {}
    for w, ts in events:
        gen, amount = forward_amount(w, ts, half_life)
        sums[gen] = sums.get(gen, 0.0) + amount
    current = generation(now_ms, half_life)
    return sum(sums.get(g, 0.0) * read_factor(g, now_ms, half_life) for g in (current, current - 1))


@pytest.mark.parametrize("window", list(WINDOWS))
def test_matches_naive_decayed_counter(window: str) -> None:
    half_life = WINDOWS[window]
    rng = random.Random(7)
    # Events spread over 100 half-lives: they cross at least one generation boundary.
    events = [(rng.choice([0.25, 1.0, 1.5, 2.0]), T0 + rng.randrange(0, 100 * half_life)) for _ in range(2_000)]
    for now in (T0 + 100 * half_life, T0 + 130 * half_life + 12_345, max(ts for _, ts in events)):
        recent = [(w, ts) for w, ts in events if ts <= now]
        expected = decayed_naive(recent, now, half_life)
        got = stored_then_read(recent, now, half_life)
        assert got == pytest.approx(expected, rel=1e-9)


@given(
    st.lists(st.tuples(st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0]), st.integers(0, 200 * WINDOWS["1h"])),
             min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_order_independent(events: list[tuple[float, int]], rnd: random.Random) -> None:
    half_life = WINDOWS["1h"]
    now = T0 + 200 * half_life
    shifted = [(w, T0 + ts) for w, ts in events]
    shuffled = shifted[:]
    rnd.shuffle(shuffled)
    a, b = stored_then_read(shifted, now, half_life), stored_then_read(shuffled, now, half_life)
    assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    # Events over two generations old are dropped: each weighs < 2**-60 of a fresh one.
    dropped_bound = sum(w for w, _ in events) * 2.0**-GENERATION_HALF_LIVES
    assert a == pytest.approx(decayed_naive(shifted, now, half_life), rel=1e-9, abs=dropped_bound)


def test_exponent_bounded_and_generation_deterministic() -> None:
    for half_life in WINDOWS.values():
        span = GENERATION_HALF_LIVES * half_life
        for ts in (0, 1, span - 1, span, span + 1, T0, -1, -span - 1):
            gen = generation(ts, half_life)
            assert landmark(gen, half_life) <= ts < landmark(gen + 1, half_life)
            _, amount = forward_amount(1.0, ts, half_life)
            assert 1.0 <= amount < 2.0**GENERATION_HALF_LIVES
            assert generation(ts, half_life) == gen  # a pure function of the event time
        # The switch happens exactly at the boundary, the same for every worker.
        assert generation(span - 1, half_life) + 1 == generation(span, half_life)


def test_effect_increments_are_batching_independent() -> None:
    rng = random.Random(3)
    ctx = [Context(country="US", device="tv", local_hour=21), Context(country="FR"), None]
    events = [
        Play(event_id=f"e{i}", ts=T0 + rng.randrange(0, 90 * WINDOWS["1h"]), schema_version=1,
             user_id=f"u{i % 5}", item_id=f"i{rng.randrange(8)}", context=rng.choice(ctx))
        for i in range(300)
    ]
    effect = TrendingEffect()

    def totals(batches: list[list[Play]]) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for batch in batches:
            for (_, key), members in effect.increments(batch).items():
                for item, amount in members.items():
                    out[key, item] = out.get((key, item), 0.0) + amount
        return out

    whole = totals([events])
    shuffled = events[:]
    rng.shuffle(shuffled)
    pieces = totals([shuffled[i:i + 7] for i in range(0, len(shuffled), 7)])
    assert whole.keys() == pieces.keys()
    for key, value in whole.items():
        assert math.isclose(value, pieces[key], rel_tol=1e-12)
    assert any(":country:US:" in key for key, _ in whole)
    assert any(":hour:21:" in key for key, _ in whole)


def test_weights_positive_kinds_only() -> None:
    base = {"ts": T0, "schema_version": 1, "user_id": "u", "item_id": "i"}
    events = [
        Play(event_id="a", **base), Skip(event_id="b", **base), Click(event_id="c", **base),
        Rating(event_id="d", value=5.0, **base), Rating(event_id="e", value=0.5, **base),
        Impression(event_id="f", ts=T0, schema_version=1, user_id="u", item_ids=["i"], request_id="r"),
        UserUpsert(event_id="g", ts=T0, schema_version=1, user_id="u"),
    ]
    assert event_weights(events) == pytest.approx([1.0, 0.0, 0.25, 2.0, 0.25, 0.0, 0.0])
    keys = TrendingEffect().increments(events)
    assert all(set(members) == {"i"} for members in keys.values())


def test_scopes_and_keys() -> None:
    assert scope_from_dict(None) == "all" and scope_from_dict({}) == "all"
    assert scope_from_dict({"country": "US", "device": None}) == "country:US"
    assert scope_from_dict({"hour": "7"}) == "hour:7"
    with pytest.raises(ValueError):
        scope_from_dict({"country": "US", "device": "tv"})
    with pytest.raises(ValueError):
        scope_from_dict({"city": "Paris"})
    assert KeyLayout().trending("1h", "all", 5) == "sr:trend:1h:all:g5"
    assert TrendingEffect().read(None, Batch(INFO, [])).queued == 0  # increments need no reads
