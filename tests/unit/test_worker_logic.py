"""Pure logic of the stream worker: offset skipping, dead-letter records, the in-memory catalogue."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.dead_letters import dead_letter, decode_records, send_dead_letters
from schemas.decoder import catalog_decoder, interaction_decoder
from schemas.topics import DLQ_HEADERS
from streams.offsets import NOTHING_APPLIED, fresh_records, gap, parse_stored, resume_position
from streams.worker import CatalogTable, default_effects

T0 = 1_767_225_600_000


def _record(offset: int, value: bytes | None, key: bytes | None = b"u1", topic: str = "interactions",
            partition: int = 3) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key, value=value)


def _play(ts: int = T0, user: str = "u1") -> bytes:
    return orjson.dumps({"type": "play", "event_id": f"e{ts}", "ts": ts, "schema_version": 1, "user_id": user,
                         "item_id": "i1"})


def _upsert(item: str, genres: list[str], ts: int = T0, **extra: object) -> bytes:
    return orjson.dumps({"type": "item_upsert", "event_id": f"c{item}{ts}", "ts": ts, "schema_version": 1,
                         "item_id": item, "title": "T", "genres": genres, "release_ts": ts, **extra})


# --- offsets ---------------------------------------------------------------------------------------


def test_parse_stored() -> None:
    assert parse_stored(None) == NOTHING_APPLIED
    assert parse_stored(b"41") == 41
    assert parse_stored("7") == 7


@given(st.integers(0, 50), st.integers(0, 40), st.integers(-1, 100))
def test_fresh_records_are_exactly_those_after_the_stored_offset(first: int, n: int, stored: int) -> None:
    records = [_record(first + k, b"x") for k in range(n)]
    fresh = fresh_records(records, stored)
    assert [r.offset for r in fresh] == [r.offset for r in records if r.offset > stored]


def test_replayed_batch_is_skipped_entirely() -> None:
    records = [_record(k, b"x") for k in range(10, 20)]
    assert list(fresh_records(records, 19)) == []
    assert list(fresh_records(records, 25)) == []
    assert [r.offset for r in fresh_records(records, 14)] == list(range(15, 20))
    assert fresh_records(records, NOTHING_APPLIED) == records


def test_resume_position_and_gap() -> None:
    assert resume_position(NOTHING_APPLIED) is None  # from the beginning: Redis is the source of truth
    assert resume_position(99) == 100
    assert gap([_record(100, b"x")], 99) == 0
    assert gap([_record(105, b"x")], 99) == 5
    assert gap([_record(5, b"x")], NOTHING_APPLIED) == 0


# --- dead letters ----------------------------------------------------------------------------------


def test_dead_letter_keeps_the_original_bytes_key_and_the_contract_headers() -> None:
    raw = b'{not json'
    decoded = decode_records([_record(7, _play()), _record(8, raw, key=b"u9"), _record(9, None, key=b"u2")],
                             interaction_decoder)
    assert len(decoded.events) == 1
    assert [letter.value for letter in decoded.letters] == [raw, None]  # in record order
    letter = decoded.letters[0]
    assert letter.key == b"u9"
    assert [name for name, _ in letter.headers] == list(DLQ_HEADERS)
    headers = dict(letter.headers)
    assert headers["x-error-field"] == b"$"
    assert headers["x-error-reason"]
    assert headers["x-source-topic"] == b"interactions"
    assert headers["x-source-partition"] == b"3"
    assert headers["x-source-offset"] == b"8"


def test_wrong_type_and_wrong_topic_name_the_field() -> None:
    wrong_type = orjson.dumps({"type": "play", "event_id": "e", "ts": "x", "schema_version": 1, "user_id": "u",
                               "item_id": "i"})
    decoded = decode_records([_record(0, wrong_type), _record(1, _upsert("i1", ["Drama"]))], interaction_decoder)
    fields = [dict(letter.headers)["x-error-field"] for letter in decoded.letters]
    assert fields == [b"$.ts", b"$.type"]
    assert decoded.events == []


def test_dead_letter_of_one_record() -> None:
    from schemas.decoder import EventError

    letter = dead_letter(_record(12, b"zz", key=None, topic="catalog", partition=1), EventError("$.genres", "bad"))
    assert letter.key is None and letter.value == b"zz"
    assert dict(letter.headers)["x-source-topic"] == b"catalog"


async def test_send_dead_letters_waits_for_every_ack() -> None:
    import asyncio

    sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    acks: list[asyncio.Future[None]] = []

    class Producer:
        async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                       headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[None]:
            sent.append((topic, key, value, headers or []))
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.01, future.set_result, None)
            acks.append(future)
            return future

    letters = decode_records([_record(k, b"nope") for k in range(3)], interaction_decoder).letters
    assert await send_dead_letters(Producer(), "dead-letters", letters) == 3
    assert all(f.done() for f in acks)
    assert [s[0] for s in sent] == ["dead-letters"] * 3
    assert await send_dead_letters(Producer(), "dead-letters", []) == 0


# --- catalogue -------------------------------------------------------------------------------------


def test_catalog_table_appends_new_titles_and_keeps_first_seen() -> None:
    table = CatalogTable()
    events = decode_records([_record(0, _upsert("a", ["Drama"], ts=T0)),
                             _record(1, _upsert("b", ["Comedy", "Drama"], ts=T0 + 5, is_original=True)),
                             _record(2, _upsert("a", ["Horror"], ts=T0 + 9, maturity_rating="R")),
                             _record(3, orjson.dumps({"type": "item_remove", "event_id": "r", "ts": T0 + 10,
                                                      "schema_version": 1, "item_id": "b"}))],
                            catalog_decoder).events
    assert table.apply(events) == 3
    static = table.static()
    assert static.item_ids == ["a", "b"]  # a removed title keeps its row
    assert static.genre_vocab == ["Comedy", "Drama", "Horror"]  # no bundle: sorted, as load_catalog
    a, b = static.index["a"], static.index["b"]
    assert static.first_seen_ts[a] == T0  # the first upsert's time, like load_catalog
    assert static.genre_unit[a, static.genre_vocab.index("Horror")] == 1.0
    assert static.genre_unit[a, static.genre_vocab.index("Drama")] == 0.0
    assert bool(static.is_original[b])
    np.testing.assert_allclose(static.genre_unit[b, :2], [0.5, 0.5])
    assert table.version == 1
    assert table.apply([]) == 0 and table.version == 1


def test_catalog_table_matches_load_catalog(tmp_path: object) -> None:
    from pathlib import Path

    from models.dataset import load_catalog
    from models.features.state import ItemStatic
    from tools.datasets.world import generate_world

    out = Path(str(tmp_path))
    generate_world(out, users=10, items=80, events=300, seed=2)
    lines = (out / "catalog.jsonl").read_bytes().splitlines()
    table = CatalogTable()
    table.apply(decode_records([_record(k, line) for k, line in enumerate(lines)], catalog_decoder).events)
    mine, theirs = table.static(), ItemStatic.from_catalog(load_catalog(out / "catalog.jsonl"))
    assert mine.item_ids == theirs.item_ids
    for name in ("release_ts", "first_seen_ts", "maturity", "is_original", "item_hash", "genre_norm"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name), err_msg=name)
    assert mine.genre_vocab == theirs.genre_vocab
    np.testing.assert_array_equal(mine.genre_unit, theirs.genre_unit)


def test_catalog_table_keeps_the_bundle_vocabulary_first() -> None:
    table = CatalogTable(genre_vocab=["Western", "Drama"])
    table.apply(decode_records([_record(0, _upsert("a", ["Drama", "Anime"]))], catalog_decoder).events)
    assert table.static().genre_vocab == ["Western", "Drama", "Anime"]


# --- plumbing --------------------------------------------------------------------------------------


def test_effect_registry_skips_missing_modules_and_uses_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    module = types.ModuleType("fake_effect_module")
    module.make_effect = lambda ctx: SimpleNamespace(name="fake", ctx=ctx)  # type: ignore[attr-defined]
    broken = types.ModuleType("broken_effect_module")

    def boom(ctx: object) -> None:
        raise RuntimeError("half written")

    broken.make_effect = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_effect_module", module)
    monkeypatch.setitem(sys.modules, "broken_effect_module", broken)
    effects = default_effects(SimpleNamespace(), ("no_such_module_xyz", "broken_effect_module", "fake_effect_module"))
    assert [e.name for e in effects] == ["fake"]
