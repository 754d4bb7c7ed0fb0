"""Every Redis key the layout builds, pinned to its string: a change of the layout (which would strand every
stored value) fails here first."""

from __future__ import annotations

import pytest

from online_state.keys import DEFAULT_KEYS, DEFAULT_PREFIX, KeyLayout


def test_every_key_of_the_default_layout() -> None:
    keys = KeyLayout()
    assert keys == DEFAULT_KEYS and keys.prefix == DEFAULT_PREFIX == "sr"
    assert keys.user_state("42") == "sr:u:{u:42}"
    assert keys.item_state("m7") == "sr:i:m7"
    assert keys.user_vector("42") == "sr:uv:{u:42}"
    assert keys.session("42") == "sr:s:{u:42}"
    assert keys.experiment_user("42") == "sr:x:{u:42}"
    assert keys.experiment_counts("ranker") == "sr:xc:ranker"
    assert keys.experiment_users("ranker", "control") == "sr:xu:ranker:control"
    assert keys.experiment_titles("ranker", "control") == "sr:xt:ranker:control"
    assert keys.trending("24h", "all", 7) == "sr:trend:24h:all:g7"
    assert keys.trending("1h", "country:US", -1) == "sr:trend:1h:country:US:g-1"
    assert keys.new_releases == "sr:new_releases"
    assert keys.item_learning(0xABC, "m7") == "sr:il:00000abc:m7"
    assert keys.item_learning(-1, "m7") == "sr:il:ffffffff:m7"  # crc32 spaces as unsigned 32 bits
    assert keys.item_learning_space(0xABC) == "sr:il:00000abc:"
    assert keys.offset("interactions", 3) == "sr:offset:interactions:3"
    assert keys.applied(0).startswith(keys.applied_family) and keys.applied_family == "sr:applied:"
    assert keys.everything == "sr:*"


def test_another_prefix_moves_every_key() -> None:
    keys = KeyLayout("bench1")
    assert keys.user_state("u") == "bench1:u:{u:u}" and keys.offset("catalog", 0) == "bench1:offset:catalog:0"
    assert keys.everything == "bench1:*"


def test_a_star_gives_the_scan_pattern_of_a_family() -> None:
    assert DEFAULT_KEYS.user_state("*") == "sr:u:{u:*}"
    assert DEFAULT_KEYS.offset("*", "*") == "sr:offset:*:*"


@pytest.mark.parametrize("prefix", ["", "sr*", "a?b", "x[1]"])
def test_a_prefix_that_is_no_exact_pattern_is_refused(prefix: str) -> None:
    # --rebuild deletes everything matching the prefix's pattern: it must match exactly the prefix's keys.
    with pytest.raises(ValueError, match="prefix"):
        KeyLayout(prefix)


def test_a_users_keys_share_one_hash_slot_and_others_do_not() -> None:
    from online_state.slots import slot_of
    keys = KeyLayout()
    for user in ("42", "}x", "a}b", "{odd}", ""):
        slots = {slot_of(k) for k in (keys.user_state(user), keys.user_vector(user), keys.session(user),
                                      keys.event_window(user), keys.experiment_user(user))}
        assert len(slots) == 1, user
    assert len({slot_of(keys.user_state(str(u))) for u in range(100)}) > 90  # users spread over the slots


def test_the_per_slot_protocol_stages_a_users_experiment_blob_with_the_user() -> None:
    # The slot protocol puts a user's keys in the user stage by family: the experiments blob is one of them, the
    # experiments' shared counters, user sets and title sketches are not.
    keys = KeyLayout()
    assert keys.is_user_key(keys.experiment_user("42"))
    for key in (keys.experiment_counts("x"), keys.experiment_users("x", "a"), keys.experiment_titles("x", "a")):
        assert not keys.is_user_key(key)
