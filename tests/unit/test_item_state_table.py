"""The in-process copy of every title's feature state: rows in Redis' field order, newest version kept, and
reads answered only when the popularity epochs they need are held."""

from __future__ import annotations

import numpy as np

from models.features.state import ITEM_COUNT_NAMES
from online_state.feature_codec import item_fields
from online_state.item_state import (
    EPOCHS_KEPT,
    ItemStateRecord,
    ItemStateTable,
    decode_record,
    encode_record,
    record_of,
)

DAY = 86_400_000


def _hash(version: int, rng: np.random.Generator, epochs: dict[str, list[int]]) -> dict[str, int]:
    row = {name: int(rng.integers(0, 1000)) for name in ITEM_COUNT_NAMES if rng.random() < 0.8}
    for prefix, held in epochs.items():
        for epoch in held:
            row[f"{prefix}:{epoch}"] = int(rng.integers(1, 1 << 30))
    row["v"] = version
    return row


def _expected(row: dict[str, int], now: int) -> list[int]:
    """What Redis' HMGET of item_fields(now) gives for this hash (absent fields: 0)."""
    fields, _ = item_fields(now)
    return [row.get(f, 0) for f in fields]


def test_values_are_redis_rows_in_field_order() -> None:
    rng = np.random.default_rng(0)
    now = 20_000 * DAY
    _, (d, w) = item_fields(now)
    hashes = {f"i{n}": _hash(1, rng, {"d": [d - 1, d], "w": [w - 1, w]} if n % 3 else {"d": [d]})
              for n in range(50)}
    table = ItemStateTable(capacity=4)  # grows
    table.loaded = True
    for item, row in hashes.items():
        flat = [x for k, v in row.items() for x in (k.encode(), str(v).encode())]  # as HGETALL replies
        assert table.apply(item, record_of(flat, 0))
    ids = [*hashes, "never-seen"]
    assert table.covers((d, w))
    got = table.values(ids, (d, w))
    want = np.array([_expected(hashes[i], now) for i in hashes] + [[0] * got.shape[1]])
    np.testing.assert_array_equal(got, want)


def test_newer_version_wins_whatever_the_order() -> None:
    table = ItemStateTable()
    table.loaded = True
    new = ItemStateRecord(v=5, t=0, f=["play", 50, "d:10", 7])
    old = ItemStateRecord(v=4, t=0, f=["play", 40, "d:10", 6, "d:9", 3])
    assert table.apply("x", new)
    assert not table.apply("x", old)  # arrives late: ignored
    assert table.ignored == 1
    assert table.values(["x"], (10, 1))[0].tolist()[:1] == [50]
    # A newer row replaces the whole row: a field it lacks is zero, not the old value.
    assert table.apply("x", ItemStateRecord(v=6, t=0, f=["click", 2, "d:11", 1]))
    row = dict(zip(item_fields(11 * 8 * DAY)[0], table.values(["x"], (11, 1))[0].tolist(), strict=True))
    assert row["play"] == 0 and row["click"] == 2 and row["d:10"] == 0 and row["d:11"] == 1


def test_only_the_latest_epochs_are_held_and_older_reads_are_not_covered() -> None:
    table = ItemStateTable()
    assert not table.covers((5, 1))  # nothing loaded yet: reads go to Redis
    table.loaded = True
    for epoch in range(1, EPOCHS_KEPT + 3):
        table.apply(f"i{epoch}", ItemStateRecord(v=1, t=0, f=[f"d:{epoch}", epoch]))
    newest = EPOCHS_KEPT + 2
    assert table.covers((newest, 1))
    assert table.covers((newest + 5, 1))  # epochs newer than any held are zeros, as in Redis
    assert not table.covers((2, 1))  # d:1 was dropped: such a read must go to Redis
    assert table.values([f"i{newest}"], (newest, 1))[0, len(ITEM_COUNT_NAMES) + 1] == newest
    # A record of a dropped epoch is kept for its other fields only.
    assert table.apply("late", ItemStateRecord(v=1, t=0, f=["play", 3, "d:1", 99]))
    assert table.values(["late"], (newest, 1))[0].tolist()[0] == 3


def test_record_codec_round_trip() -> None:
    record = record_of({b"play": b"3", b"v": b"9", b"d:100": b"12345678901"}, 1_700_000_000_000)
    assert record == ItemStateRecord(v=9, t=1_700_000_000_000, f=["play", 3, "d:100", 12345678901])
    assert decode_record(encode_record(record)) == record


def test_row_map_follows_both_sides_growing() -> None:
    table = ItemStateTable()
    table.loaded = True
    universe = ["a", "b", "c"]
    index = {item: r for r, item in enumerate(universe)}
    table.apply("b", ItemStateRecord(v=1, t=0, f=["play", 2]))
    assert table.row_map(universe, index).tolist() == [-1, 0, -1]
    table.apply("z", ItemStateRecord(v=1, t=0, f=["play", 9]))  # not in the universe (yet)
    table.apply("a", ItemStateRecord(v=1, t=0, f=["play", 1]))
    universe.append("z")
    index["z"] = 3
    mapping = table.row_map(universe, index)
    assert mapping.tolist() == [2, 0, -1, 1]
    rows = np.array([3, 0, 2, 1])
    np.testing.assert_array_equal(table.values_at(mapping[rows], (10, 1)),
                                  table.values([universe[r] for r in rows], (10, 1)))
    assert table.values_at(mapping[rows], (10, 1))[:, 0].tolist() == [9, 1, 0, 2]
