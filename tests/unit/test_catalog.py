"""The one catalogue model: upserts and removals mean the same thing for training, workers and server."""

from __future__ import annotations

import numpy as np
import orjson

from models.catalog import UNRATED, CatalogTable, load_catalog
from models.features.state import ItemStatic
from schemas.events import ItemRemove, ItemUpsert, encode


def upsert(item: str, ts: int, **kw: object) -> ItemUpsert:
    base = {"event_id": f"u-{item}-{ts}", "ts": ts, "schema_version": 1, "item_id": item, "title": f"T {item}",
            "genres": ["Drama"], "release_ts": 1_000, "maturity_rating": "PG"}
    return ItemUpsert(**(base | kw))  # type: ignore[arg-type]


def remove(item: str, ts: int) -> ItemRemove:
    return ItemRemove(event_id=f"r-{item}-{ts}", ts=ts, schema_version=1, item_id=item)


def test_upsert_adds_rows_in_order_of_first_sight_and_keeps_first_seen() -> None:
    table = CatalogTable()
    change = table.apply([upsert("a", 10), upsert("b", 20), upsert("a", 30, title="A2", genres=["Comedy"])])
    assert table.item_ids == ["a", "b"]
    assert change.added == (0, 1) and set(change.upserted) == {0, 1}
    assert table.first_seen_ts == [10, 20]  # the second upsert of "a" replaced metadata, not first sight
    assert table.titles[0] == "A2" and table.genres[0] == ["Comedy"]


def test_remove_keeps_the_row_and_metadata_and_marks_it_unavailable() -> None:
    table = CatalogTable()
    table.apply([upsert("a", 10, genres=["Horror"])])
    change = table.apply([remove("a", 20), remove("never-seen", 21)])
    assert change.removed == (0,) and change.upserted == ()
    assert table.item_ids == ["a"]  # a removal of an unknown title adds nothing
    assert table.available == [False] and table.genres == [["Horror"]]
    table.apply([upsert("a", 30)])  # it comes back
    assert table.available == [True] and table.first_seen_ts == [10]


def test_a_placeholder_row_takes_its_first_seen_from_the_first_upsert() -> None:
    table = CatalogTable()
    assert table.add_placeholders(["x", "x"]) == [0]
    assert table.available == [False] and table.maturity == [UNRATED]
    table.apply([upsert("x", 50)])
    assert table.first_seen_ts == [50] and table.available == [True]
    assert table.to_catalog().item_ids == ["x"]


def test_placeholders_are_not_training_titles() -> None:
    table = CatalogTable()
    table.add_placeholders(["ghost"])
    table.apply([upsert("a", 1), upsert("b", 2, genres=["Action", "Drama"])])
    catalog = table.to_catalog()
    assert catalog.item_ids == ["a", "b"] and catalog.index == {"a": 0, "b": 1}
    assert catalog.genre_vocab == ["Action", "Drama"]
    assert catalog.genre_matrix.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_load_catalog_applies_the_file_through_the_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    events = [upsert("a", 1), upsert("b", 2), remove("a", 3), upsert("c", 4, available=False), upsert("b", 5,
              year=1999)]
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(b"\n".join(encode(e) for e in events) + b"\n{not json}\n")
    catalog = load_catalog(path)
    assert catalog.item_ids == ["a", "b", "c"]
    assert catalog.available.tolist() == [False, True, False]
    assert catalog.year.tolist() == [0, 1999, 0] and catalog.first_seen_ts.tolist() == [1, 2, 4]
    assert orjson.loads(encode(events[0]))["type"] == "item_upsert"


def test_static_table_keeps_the_base_genre_order_and_sorts_new_genres_after_it() -> None:
    table = CatalogTable()
    table.apply([upsert("a", 1, genres=["Zombie", "Drama"]), upsert("b", 2, genres=["Anime"])])
    static = ItemStatic.from_table(table, base_vocab=["Drama"])
    assert static.genre_vocab == ["Drama", "Anime", "Zombie"]
    assert static.n_items == 2 and np.array_equal(static.first_seen_ts[:2], [1, 2])
