"""Pure logic of the stream worker: offset skipping, dead-letter records, the live catalogue, the effect list."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.dead_letters import dead_letter, decode_records, send_dead_letters
from foundation.settings import Settings
from models.catalog import load_catalog
from models.features.state import ItemStatic
from online_state.offsets import NOTHING_APPLIED, parse_stored
from schemas.decoder import EventError, catalog_decoder, interaction_decoder
from schemas.topics import DLQ_HEADERS
from streams import worker as worker_module
from streams.catalogue import LiveCatalogue
from streams.effects_registry import (
    CATALOG_EFFECTS,
    FEATURES_ONLY,
    INTERACTION_EFFECTS,
    EffectBuildError,
    NamedFactory,
    build_effects,
)
from streams.offsets import fresh_records, gap, resume_position
from tools.datasets.world import generate_world

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


def test_live_catalogue_follows_upserts_and_removals() -> None:
    catalogue = LiveCatalogue()
    first = catalogue.static()
    assert catalogue.static() is first  # the same object while the table does not change
    events = decode_records([_record(0, _upsert("a", ["Drama"], ts=T0)),
                             _record(1, _upsert("b", ["Comedy", "Drama"], ts=T0 + 5, is_original=True)),
                             _record(2, _upsert("a", ["Horror"], ts=T0 + 9, maturity_rating="R")),
                             _record(3, orjson.dumps({"type": "item_remove", "event_id": "r", "ts": T0 + 10,
                                                      "schema_version": 1, "item_id": "b"}))],
                            catalog_decoder).events
    catalogue.apply(events)
    static = catalogue.static()
    assert static is not first
    assert static.item_ids == ["a", "b"]  # a removed title keeps its row (its events still need its genres)
    assert catalogue.table.available == [True, False]  # the one catalogue model: removal = unavailable
    a, b = static.index["a"], static.index["b"]
    assert static.first_seen_ts[a] == T0
    assert static.genre_unit[a, static.genre_vocab.index("Horror")] == 1.0
    assert bool(static.is_original[b])
    assert catalogue.genres_of("b") == ["Comedy", "Drama"] and catalogue.genres_of("nope") == []


def test_live_catalogue_keeps_the_bundle_vocabulary_first() -> None:
    catalogue = LiveCatalogue(base_vocab=["Western", "Drama"])
    catalogue.apply(decode_records([_record(0, _upsert("a", ["Drama", "Anime"]))], catalog_decoder).events)
    assert catalogue.static().genre_vocab == ["Western", "Drama", "Anime"]


def test_live_catalogue_matches_load_catalog(tmp_path: Path) -> None:
    out = tmp_path
    generate_world(out, users=10, items=80, events=300, seed=2)
    lines = (out / "catalog.jsonl").read_bytes().splitlines()
    catalogue = LiveCatalogue()
    catalogue.apply(decode_records([_record(k, line) for k, line in enumerate(lines)], catalog_decoder).events)
    mine, theirs = catalogue.static(), ItemStatic.from_catalog(load_catalog(out / "catalog.jsonl"))
    assert mine.item_ids == theirs.item_ids
    for name in ("release_ts", "first_seen_ts", "maturity", "is_original", "item_hash", "genre_norm"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name), err_msg=name)
    assert mine.genre_vocab == theirs.genre_vocab
    np.testing.assert_array_equal(mine.genre_unit, theirs.genre_unit)


# --- the effect list -------------------------------------------------------------------------------


def test_the_effect_list_is_explicit_and_ordered() -> None:
    assert [f.name for f in INTERACTION_EFFECTS] == ["features", "trending", "session", "user_vectors",
                                                     "item_learning", "experiments"]
    assert [f.name for f in FEATURES_ONLY] == ["features"]
    assert [f.name for f in CATALOG_EFFECTS] == ["new_releases", "item_vectors"]


def test_a_failing_effect_factory_stops_start_up_naming_the_effect() -> None:
    def boom(ctx: object) -> None:
        raise RuntimeError("half written")

    factories = (NamedFactory("fine", lambda ctx: SimpleNamespace(name="fine")), NamedFactory("trending", boom))
    with pytest.raises(EffectBuildError, match=r"'trending'.*half written"):
        build_effects(factories, SimpleNamespace())  # type: ignore[arg-type]


def test_an_effect_that_does_not_apply_is_left_out() -> None:
    factories = (NamedFactory("vectors", lambda ctx: None), NamedFactory("fine", lambda ctx: SimpleNamespace(name="f")))
    assert [e.name for e in build_effects(factories, SimpleNamespace())] == ["f"]  # type: ignore[arg-type]


def test_a_worker_whose_effect_fails_to_build_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: object) -> None:
        raise ValueError("no such model file")

    monkeypatch.setattr(worker_module, "INTERACTION_EFFECTS", (NamedFactory("session", boom),))
    worker = worker_module.Worker(Settings(), worker_module.WorkerOptions())
    with pytest.raises(EffectBuildError, match=r"'session'.*no such model file"):
        worker._build_effects()
