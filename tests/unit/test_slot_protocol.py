"""The per-slot protocol's pure parts (streams.slot_protocol, streams.node_pipelines): which stage and slot a write
goes to, how values travel to the function, and the single node's GET coalescing. The gates themselves run in Redis:
tests/integration/test_cluster_exactly_once.py."""

from __future__ import annotations

import msgspec
import pytest

from online_state.keys import KeyLayout
from online_state.slots import slot_of
from streams.node_pipelines import coalesce_gets, expand_gets, recorder
from streams.redis_batch import recorded
from streams.slot_protocol import SlotProtocolError, _group, _lua_str, _plain

KEYS = KeyLayout()


def test_user_keys_go_to_the_user_stage_and_everything_else_to_the_item_stage_by_slot() -> None:
    pipe = recorder()
    pipe.set(KEYS.user_state("u1"), b"state")
    pipe.set(KEYS.session("u1"), b"session", ex=60)
    pipe.hincrby(KEYS.item_state("m1"), "play", 1)
    pipe.hincrby(KEYS.item_state("m1"), "v", 1)
    pipe.zincrby(KEYS.trending("24h", "all", 3), 0.5, "m1")
    pipe.set(KEYS.event_window("u2"), b"w")
    item, user = _group(recorded(pipe), KEYS)
    assert dict(user.slots) == {slot_of(KEYS.user_state("u1")): [0, 1], slot_of(KEYS.event_window("u2")): [5]}
    assert dict(item.slots) == {slot_of(KEYS.item_state("m1")): [2, 3], slot_of(KEYS.trending("24h", "all", 3)): [4]}


@pytest.mark.parametrize("command", ["FCALL", "MSET"])
def test_a_multi_key_write_is_refused(command: str) -> None:
    with pytest.raises(SlotProtocolError, match="one command per key"):
        _group([((command, "lib", 2, "a", "b"), {})], KEYS)


@pytest.mark.parametrize("size", [0, 5, 31, 32, 255, 256, 65535, 65536])
def test_bytes_travel_as_msgpack_str_of_any_length(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    raw = msgspec.msgpack.encode(_lua_str(data))
    assert raw[0] not in (0xC4, 0xC5, 0xC6)  # no bin type: Redis 7.0's cmsgpack refuses them
    assert raw.endswith(data) and len(raw) - size in (1, 2, 3, 5)
    text = b"a" * size  # the same header read back by a msgpack decoder, as a str of that length
    assert msgspec.msgpack.decode(raw[: len(raw) - size] + text) == text.decode()


def test_numbers_are_sent_as_redis_py_sends_them() -> None:
    assert _plain((("ZINCRBY", "k", 0.1, "m"), {})) == ["ZINCRBY", "k", "0.1", "m"]
    assert _plain((("HINCRBY", "k", "f", 2**60), {})) == ["HINCRBY", "k", "f", str(2**60)]  # exact, beyond 2**53
    with pytest.raises(Exception, match="Invalid input"):
        _plain((("SET", "k", True), {}))


def test_runs_of_get_are_one_mget_and_replies_come_back_in_order() -> None:
    pipe = recorder()
    pipe.get("a")
    pipe.get("b")
    pipe.hmget("h", ["f"])
    pipe.get("c")
    packed, spans = coalesce_gets(recorded(pipe))
    assert [args for args, _ in packed] == [("MGET", "a", "b"), ("HMGET", "h", "f"), ("GET", "c")]
    assert expand_gets([[b"1", None], [b"x"], b"3"], spans) == [b"1", None, [b"x"], b"3"]
