"""The experiments effect's logic (streams/experiments.py) and the report's read (online_state/experiments.py).

Pure logic first: attribution by request id, by title within the window, nothing outside it, the first exposure's
variant and pre-period, interleaving credit, click-through by position, the shared counters. Then the effect
through the exactly-once protocol on fakeredis, read back by :func:`read_experiment_data`.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import numpy as np

from models.experiments.data import LATENCY_EDGES_MS, POSITIONS
from online_state.experiments import (
    EXPERIMENT_BLOB_VERSION,
    ExperimentBlob,
    decode_experiment_blob,
    encode_experiment_blob,
    latency_bucket,
    read_experiment_data,
)
from online_state.keys import KeyLayout
from schemas.events import AddToList, Click, ExposureTag, Impression, InteractionEvent, Play, Rating, Skip
from streams.effect_contract import apply_events
from streams.experiments import (
    ATTRIBUTION_WINDOW_MS,
    REQUEST_ID_WINDOW_MS,
    ExperimentEffect,
    ExperimentWrites,
    apply_experiment_events,
)

T0 = 1_767_225_600_000
MIN = 60_000
KEYS = KeyLayout("xt")
COUNTS = KEYS.experiment_counts("ranker")
_n = 0


def _id() -> str:
    global _n
    _n += 1
    return f"e{_n}"


def impression(user: str, ts: int, items: list[str], rid: str, variant: str = "new", *, teams: list[str] | None = None,
               server_ms: float | None = None, degraded: bool = False) -> Impression:
    tags = [ExposureTag(name="ranker", variant=variant)]
    if teams is not None:
        tags.append(ExposureTag(name="draft", variant="interleaved", teams=teams))
    return Impression(event_id=_id(), ts=ts, schema_version=1, user_id=user, item_ids=items, request_id=rid,
                      experiments=tags, server_ms=server_ms, degraded=degraded)


def play(user: str, ts: int, item: str, rid: str | None = None) -> Play:
    return Play(event_id=_id(), ts=ts, schema_version=1, user_id=user, item_id=item, request_id=rid)


def click(user: str, ts: int, item: str, rid: str | None = None) -> Click:
    return Click(event_id=_id(), ts=ts, schema_version=1, user_id=user, item_id=item, request_id=rid)


def run(events: list[InteractionEvent], blobs: dict[str, ExperimentBlob | None] | None = None) -> ExperimentWrites:
    users, positive = ExperimentEffect.relevant(events)
    stored: dict[str, ExperimentBlob | None] = {u: None for u in users}
    stored.update(blobs or {})
    return apply_experiment_events(stored, events, positive, KEYS)


def test_an_outcome_with_a_request_id_goes_to_that_exposure() -> None:
    out = run([impression("u", T0, ["a", "b"], "r1"), impression("u", T0 + MIN, ["c", "a"], "r2"),
               play("u", T0 + 2 * MIN, "a", rid="r1")])
    entry = out.blobs["u"].exp["ranker"]
    assert (entry.plays, entry.hits, entry.engagements, entry.exposures) == (1, 1, 1, 2)
    assert out.attributed == 1 and out.unattributed == 0


def test_without_a_request_id_the_most_recent_exposure_of_the_title_takes_it() -> None:
    # r2 showed "a" at position 1, r1 at position 0: a click without a request id is r2's, at position 1.
    out = run([impression("u", T0, ["a", "b"], "r1"), impression("u", T0 + MIN, ["c", "a"], "r2"),
               click("u", T0 + 2 * MIN, "a")])
    assert out.counts[COUNTS]["new:clicks:1"] == 1 and "new:clicks:0" not in out.counts[COUNTS]
    # With r1's request id, the same click is r1's position 0.
    out = run([impression("u", T0, ["a", "b"], "r1"), impression("u", T0 + MIN, ["c", "a"], "r2"),
               click("u", T0 + 2 * MIN, "a", rid="r1")])
    assert out.counts[COUNTS]["new:clicks:0"] == 1 and "new:clicks:1" not in out.counts[COUNTS]


def test_an_unknown_request_id_falls_back_to_the_title() -> None:
    out = run([impression("u", T0, ["a"], "r1"), play("u", T0 + MIN, "a", rid="elsewhere")])
    assert out.attributed == 1 and out.blobs["u"].exp["ranker"].plays == 1


def test_outside_the_window_nothing_is_attributed_but_engagement_counts() -> None:
    late = T0 + ATTRIBUTION_WINDOW_MS + 1
    out = run([impression("u", T0, ["a"], "r1"), play("u", late, "a"), play("u", T0 + 5 * MIN, "z"),
               play("u", T0 + REQUEST_ID_WINDOW_MS + 1, "a", rid="r1")])  # "z": a title the exposure did not show
    entry = out.blobs["u"].exp["ranker"]
    assert (entry.plays, entry.hits, entry.engagements) == (0, 0, 3)
    assert out.attributed == 0 and out.unattributed == 3
    # Just inside the window, it is; and with the answer's request id, for the longer window.
    out = run([impression("u", T0, ["a"], "r1"), play("u", T0 + ATTRIBUTION_WINDOW_MS, "a"),
               play("u", T0 + REQUEST_ID_WINDOW_MS, "b", rid="r1")])
    assert out.blobs["u"].exp["ranker"].plays == 2 and out.attributed == 2


def test_the_first_exposure_sets_variant_and_pre_period() -> None:
    events: list[InteractionEvent] = [play("u", T0 + k, f"p{k}") for k in range(3)]
    events.append(Skip(event_id=_id(), ts=T0 + 5, schema_version=1, user_id="u", item_id="p0"))  # not positive
    events += [impression("u", T0 + MIN, ["a"], "r1", variant="new"),
               impression("u", T0 + 2 * MIN, ["b"], "r2", variant="other"),  # reassigned: the row keeps "new"
               play("u", T0 + 3 * MIN, "b")]
    out = run(events)
    blob = out.blobs["u"]
    entry = blob.exp["ranker"]
    assert (entry.variant, entry.first, entry.pre, entry.exposures, entry.engagements) == ("new", T0 + MIN, 3, 2, 1)
    assert blob.total == 4
    counts = out.counts[COUNTS]
    assert counts["new:users"] == 1 and "other:users" not in counts  # first exposures only
    assert counts["new:exposures"] == 1 and counts["other:exposures"] == 1  # the counters follow what was shown
    assert out.members == {KEYS.experiment_users("ranker", "new"): {"u": None}}


def test_events_before_any_exposure_only_raise_total() -> None:
    out = run([play("u", T0, "a"), click("u", T0 + 1, "a")])
    assert out.blobs["u"].total == 2 and not out.blobs["u"].exp and not out.counts
    assert out.attributed == out.unattributed == 0


def test_interleaving_credits_the_team_that_drafted_the_title() -> None:
    out = run([impression("u", T0, ["a", "b", "c"], "r1", teams=["A", "B", "A"]),
               play("u", T0 + MIN, "b"), click("u", T0 + MIN, "c", rid="r1"),
               Rating(event_id=_id(), ts=T0 + MIN, schema_version=1, user_id="u", item_id="c", value=4.0),
               AddToList(event_id=_id(), ts=T0 + MIN, schema_version=1, user_id="u", item_id="zz")])
    draft = out.blobs["u"].exp["draft"]
    assert draft.credit == {"B": 1, "A": 2}  # b by B; c (click, rating) by A; zz was not on the list
    assert (draft.plays, draft.clicks, draft.ratings, draft.hits, draft.engagements) == (1, 1, 1, 3, 4)
    assert out.counts[KEYS.experiment_counts("draft")]["interleaved:clicks:2"] == 1


def test_the_shared_counters_of_an_exposure() -> None:
    items = [f"i{k}" for k in range(POSITIONS + 5)]
    out = run([impression("u", T0, items, "r1", server_ms=12.0, degraded=True),
               impression("v", T0, items[:3], "r2", server_ms=1e6)])
    counts = out.counts[COUNTS]
    assert [counts.get(f"new:shown:{p}", 0) for p in range(POSITIONS)] == [2] * 3 + [1] * (POSITIONS - 3)
    assert f"new:shown:{POSITIONS}" not in counts
    assert counts[f"new:lat:{LATENCY_EDGES_MS.index(15)}"] == 1  # 12 ms: the (10, 15] bucket
    assert counts[f"new:lat:{len(LATENCY_EDGES_MS) - 1}"] == 1  # past every finite edge
    assert counts["new:degraded"] == 1 and counts["new:exposures"] == 2 and counts["new:users"] == 2
    assert list(out.titles[KEYS.experiment_titles("ranker", "new")]) == items
    assert latency_bucket(1.0) == 0 and latency_bucket(0.0) == 0


def test_the_recent_exposures_are_bounded_and_the_blob_round_trips() -> None:
    events: list[InteractionEvent] = [impression("u", T0 + k, [f"i{k}"], f"r{k}") for k in range(30)]
    events.append(impression("u", T0 + 2 * REQUEST_ID_WINDOW_MS, ["x"], "late"))  # the rest fall out of the window
    blob = run(events[:30]).blobs["u"]
    assert [e.rid for e in blob.recent] == [f"r{k}" for k in range(29, 9, -1)]
    blob = run(events).blobs["u"]
    assert [e.rid for e in blob.recent] == ["late"]
    again = decode_experiment_blob(encode_experiment_blob(blob))
    assert again == blob and again is not None and again.v == EXPERIMENT_BLOB_VERSION
    assert decode_experiment_blob(None) is None


def test_a_stored_blob_is_continued() -> None:
    first = run([play("u", T0, "p"), impression("u", T0 + MIN, ["a"], "r1")]).blobs["u"]
    stored = decode_experiment_blob(encode_experiment_blob(first))
    out = run([play("u", T0 + 2 * MIN, "a")], {"u": stored})
    entry = out.blobs["u"].exp["ranker"]
    assert (entry.pre, entry.plays, entry.engagements, out.blobs["u"].total) == (1, 1, 1, 2)
    assert not out.counts  # a play without a click adds to no shared counter


async def _apply(redis: Any, keys: KeyLayout, events: list[Any], first: int, *, protocol: str = "transaction"
                 ) -> None:
    effect = ExperimentEffect(keys=keys)
    await apply_events(redis, [effect], keys, "interactions", events, first, protocol)


async def test_counts_through_the_protocol_read_back_for_the_report() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    keys = KeyLayout("xr")
    events: list[Any] = [
        play("u1", T0, "p"), play("u1", T0 + 1, "q"),
        impression("u1", T0 + MIN, ["a", "b"], "r1", variant="control", teams=["A", "B"], server_ms=3.0),
        impression("u2", T0 + MIN, ["b", "c"], "r2", variant="new", teams=["B", "A"], degraded=True),
        impression("u3", T0 + MIN, ["c", "d"], "r3", variant="new", teams=["A", "B"]),
        click("u1", T0 + 2 * MIN, "b", rid="r1"), play("u1", T0 + 3 * MIN, "b"),
        play("u2", T0 + 2 * MIN, "c"), play("u2", T0 + 3 * MIN, "zz"),
    ]
    await _apply(redis, keys, events[:5], 0)
    await _apply(redis, keys, events[5:], 5)
    await _apply(redis, keys, events, 0)  # a redelivery: skipped by the stored offset
    data = await read_experiment_data(redis, keys, "ranker", "ab", {"control": 1.0, "new": 1.0}, catalogue_size=40)
    assert [v.name for v in data.variants] == ["control", "new"] and data.control == "control"
    assert data.catalogue_size == 40 and data.weights == {"control": 1.0, "new": 1.0}
    control, new = data.variants
    assert control.users == ["u1"] and new.users == ["u2", "u3"]
    assert control.clicks.tolist() == [1] and control.plays.tolist() == [1] and control.hits.tolist() == [2]
    assert control.engagements.tolist() == [2] and control.pre_engagements.tolist() == [2]
    assert new.plays.tolist() == [1, 0] and new.hits.tolist() == [1, 0] and new.engagements.tolist() == [2, 0]
    assert new.exposures.tolist() == [1, 1] and new.pre_engagements.tolist() == [0, 0]
    assert control.clicks_by_position.tolist() == [0, 1] + [0] * (POSITIONS - 2)
    assert new.shown_by_position[:3].tolist() == [2, 2, 0] and new.degraded == 1 and control.degraded == 0
    assert control.latency_counts[latency_bucket(3.0)] == 1 and control.latency_counts.sum() == 1
    assert control.titles_shown == 2 and new.titles_shown == 3
    assert all(isinstance(v.credit, np.ndarray) and v.credit.sum() == 0 for v in data.variants)

    draft = await read_experiment_data(redis, keys, "draft", "interleave", {"A": 1.0, "B": 1.0})
    assert [v.name for v in draft.variants] == ["A", "B"]
    a, b = draft.variants
    assert a.users == b.users == ["u1", "u2", "u3"]
    # u1 engaged twice with b (team B at r1); u2 once with c (team A at r2).
    assert a.credit.tolist() == [0, 1, 0] and b.credit.tolist() == [2, 0, 0]
    assert a.exposures.tolist() == [1, 1, 1] and a.shown_by_position[:2].tolist() == [3, 3]
    assert a.titles_shown == 4

    empty = await read_experiment_data(redis, keys, "nothing", "ab", {"x": 1.0})
    assert [v.n_users for v in empty.variants] == [0] and empty.variants[0].exposures.tolist() == []
