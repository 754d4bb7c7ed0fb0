"""The client side of the per-slot writes (``docs/cluster-exactly-once.md``): slot tags, and how a batch's item
counters are cut into one call per hash slot (the Redis side runs in tests/integration/test_cluster_exactly_once.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models.features.state import EventBatch, ItemStatic
from online_state.keys import KeyLayout
from online_state.slots import SLOTS, slot_of, slot_tag
from schemas.events import Click, Play
from streams.slot_apply import item_entries, plan_item_calls

ITEMS = [f"t{i}" for i in range(50)]
STATIC = ItemStatic.build(ITEMS, [[]] * len(ITEMS), np.zeros(len(ITEMS), np.int64), np.zeros(len(ITEMS), np.int64),
                          np.zeros(len(ITEMS), np.int8), np.zeros(len(ITEMS), np.bool_))


def _records() -> list[SimpleNamespace]:
    events = []
    for k in range(200):
        common = {"event_id": f"e{k}", "ts": 1_700_000_000_000 + k * 60_000, "schema_version": 1,
                  "user_id": f"u{k % 7}", "item_id": ITEMS[(k * 7) % len(ITEMS)]}
        events.append(Play(**common) if k % 2 else Click(**common))
    return [SimpleNamespace(offset=1000 + k, event=e) for k, e in enumerate(events)]


def test_every_slot_has_a_tag_that_lands_on_it() -> None:
    assert all(slot_of(f"sr:applied:{{{slot_tag(s)}}}") == s for s in range(SLOTS))
    assert KeyLayout("p").applied(7) == f"p:applied:{{{slot_tag(7)}}}"
    with pytest.raises(ValueError):
        slot_tag(SLOTS)


def test_a_batch_is_one_call_per_slot_from_its_first_offset() -> None:
    keys, records = KeyLayout("p"), _records()
    calls = plan_item_calls(keys, records, STATIC)
    assert len({c.slot for c in calls}) == len(calls)
    assert all(slot_of(k) == c.slot and c.first == 1000 for c in calls for k in c.keys)
    assert sorted(k for c in calls for k in c.keys) == sorted(keys.item_state(i) for i in ITEMS)
    whole = item_entries(EventBatch.from_events([r.event for r in records], STATIC))
    assert {k: e for c in calls for k, e in zip(c.keys, c.entries, strict=True)} == {
        keys.item_state(i): e for i, e in whole.items()}


def test_a_partial_slot_is_recomputed_from_the_records_after_its_marker() -> None:
    keys, records = KeyLayout("p"), _records()
    first, second = plan_item_calls(keys, records, STATIC)[:2]
    redo = plan_item_calls(keys, records, STATIC, {first.slot: 1150, second.slot: 1000})
    assert {c.slot: c.first for c in redo} == {first.slot: 1150, second.slot: 1000}
    tail = item_entries(EventBatch.from_events([r.event for r in records if r.offset >= 1150], STATIC))
    (again,) = [c for c in redo if c.slot == first.slot]
    assert dict(zip(again.keys, again.entries, strict=True)) == {
        keys.item_state(i): e for i, e in tail.items() if slot_of(keys.item_state(i)) == first.slot}
