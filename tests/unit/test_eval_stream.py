"""Pure parts of `streamrec eval-stream`: the split, the target rule, the metrics, the run's settings."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from foundation.child_env import settings_env
from foundation.settings import Settings
from tools.eval_stream import (
    Probe,
    arm_metrics,
    read_records,
    relative_gain,
    run_settings,
    series,
    split_records,
)
from tools.replay import LogRecord

T0 = 1_767_225_600_000


def _line(kind: str, ts: int, user: str = "u1", item: str = "m1", **extra: object) -> bytes:
    body: dict[str, object] = {"type": kind, "event_id": f"e{ts}-{kind}-{user}-{item}", "ts": ts,
                               "schema_version": 1, "user_id": user, "item_id": item, **extra}
    return orjson.dumps(body)


def _item(item: str, ts: int) -> bytes:
    return orjson.dumps({"type": "item_upsert", "event_id": f"c-{item}", "ts": ts, "schema_version": 1,
                         "item_id": item, "title": f"Title {item}", "genres": ["Drama"], "release_ts": ts})


def _write(tmp_path: Path, catalog: list[bytes], events: list[bytes]) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.jsonl").write_bytes(b"\n".join(catalog) + b"\n")
    (data / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    return data


def test_split_cuts_interactions_writes_the_prefix_and_keeps_late_titles_out(tmp_path: Path) -> None:
    catalog = [_item("m1", T0), _item("m2", T0), _item("late", T0 + 50_000)]
    events = [_line("play", T0 + 1000 * i, user=f"u{i % 3}", item=f"m{1 + i % 2}") for i in range(40)]
    events += [_line("play", T0 + 60_000 + i, user="u9", item="late") for i in range(1)]
    records = read_records(_write(tmp_path, catalog, events))
    split = split_records(records, 0.5, samples=100, seed=0, train_dir=tmp_path / "train")
    n_prefix_interactions = sum(not r.is_catalog for r in split.prefix)
    assert n_prefix_interactions == 20  # half of the 41 interaction records, floored
    assert all(r.ts <= split.cut_ts for r in split.prefix)
    train_catalog = (tmp_path / "train" / "catalog.jsonl").read_bytes().splitlines()
    assert len(train_catalog) == 2 and b'"late"' not in b"".join(train_catalog)
    assert len((tmp_path / "train" / "events.jsonl").read_bytes().splitlines()) == 20
    # The late title's first play is a new pair: a target; the m1/m2 re-plays of known pairs are not.
    targets = [split.rest[i] for i in split.targets]
    assert [(t.event.user_id, t.event.item_id) for t in targets] == [("u9", "late")]


def test_target_rule_first_engagement_only_and_ratings_need_four_stars(tmp_path: Path) -> None:
    events = [_line("play", T0 + i, user="w", item="m1") for i in range(10)]  # a prefix to cut after
    events += [
        _line("impression", T0 + 100, user="a", item="m1") .replace(b'"item_id":"m1"', b'"item_ids":["m2"],'
                                                                     b'"request_id":"r1"'),
        _line("play", T0 + 101, user="a", item="m2"),       # target (an impression is not an interaction)
        _line("complete", T0 + 102, user="a", item="m2", watched_seconds=100),  # same pair: not a target
        _line("rating", T0 + 103, user="b", item="m3", value=3.5),  # below four stars: seen, not a target
        _line("play", T0 + 104, user="b", item="m3"),        # pair already seen through the rating
        _line("rating", T0 + 105, user="c", item="m3", value=4.5),  # target
        _line("skip", T0 + 106, user="d", item="m4"),         # not an engagement
        _line("add_to_list", T0 + 107, user="d", item="m5"),  # target
    ]
    records = read_records(_write(tmp_path, [_item("m1", T0)], events))
    split = split_records(records, 0.5, samples=100, seed=0, train_dir=tmp_path / "train")
    got = [(split.rest[i].event.user_id, split.rest[i].event.item_id) for i in split.targets]
    assert ("a", "m2") in got and ("c", "m3") in got and ("d", "m5") in got
    assert ("b", "m3") not in got and ("d", "m4") not in got
    assert len(got) == 3


def test_samples_are_a_reproducible_subset(tmp_path: Path) -> None:
    events = [_line("play", T0 + i, user=f"u{i}", item=f"m{i}") for i in range(400)]
    records = read_records(_write(tmp_path, [_item("m0", T0)], events))
    a = split_records(records, 0.25, samples=50, seed=7, train_dir=tmp_path / "a")
    b = split_records(records, 0.25, samples=50, seed=7, train_dir=tmp_path / "b")
    assert a.targets == b.targets and len(a.targets) == 50 and a.targets == sorted(a.targets)


def test_split_rejects_a_share_outside_the_unit_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_share"):
        split_records([], 1.0, samples=1, seed=0, train_dir=tmp_path)


def test_arm_metrics_from_ranks() -> None:
    m = arm_metrics([0, 9, 10, 19, 20, -1, -1, -1])
    assert m["n"] == 8
    assert m["hr@10"] == pytest.approx(2 / 8)
    assert m["hr@20"] == pytest.approx(4 / 8)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(11)) / 8)
    assert arm_metrics([])["n"] == 0


def test_series_splits_probes_in_time_order_into_equal_windows() -> None:
    probes = [Probe(i, T0 + (10 - i), "u", "m", ranks={"online": 0 if i < 5 else -1, "frozen": -1})
              for i in range(10)]
    s = series(probes, 2)
    assert s["n"] == [5, 5]
    assert s["t_start"][0] < s["t_start"][1]
    # Later probes (lower i here, since ts falls with i) are hits in the online arm only.
    assert s["online"]["hr@10"] == [0.0, 1.0]
    assert s["frozen"]["hr@20"] == [0.0, 0.0]


def test_relative_gain_and_no_division_by_zero() -> None:
    online = {"hr@10": 0.3, "hr@20": 0.6, "ndcg@10": 0.2}
    frozen = {"hr@10": 0.2, "hr@20": 0.0, "ndcg@10": 0.1}
    gain = relative_gain(online, frozen)
    assert gain["hr@10"] == pytest.approx(0.5) and gain["hr@20"] is None and gain["ndcg@10"] == pytest.approx(1.0)


def test_run_settings_use_their_own_topics_and_database() -> None:
    base = Settings(redis_url="redis://127.0.0.1:6390/0")
    s = run_settings(base, "abc", 3)
    assert s.redis_url == "redis://127.0.0.1:6390/3"
    assert {s.topic_interactions, s.topic_catalog, s.topic_item_vectors, s.topic_dead_letters} == {
        "eval-abc-interactions", "eval-abc-catalog", "eval-abc-item-vectors", "eval-abc-dead-letters"}
    assert s.kafka_bootstrap == base.kafka_bootstrap


def test_child_env_carries_every_setting_and_wins_over_the_parent() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6390/5", topic_interactions="x-int")
    env = settings_env(settings, base={"STREAMREC_REDIS_URL": "redis://elsewhere:1/0", "PATH": "/bin"})
    assert env["STREAMREC_REDIS_URL"] == "redis://127.0.0.1:6390/5"
    assert env["STREAMREC_TOPIC_INTERACTIONS"] == "x-int"
    assert env["PATH"] == "/bin"
    assert Path(env["STREAMREC_STATE_DIR"]).is_absolute()


def test_records_keep_their_original_bytes(tmp_path: Path) -> None:
    line = _line("play", T0, user="u1", item="m1")
    records = read_records(_write(tmp_path, [_item("m1", T0)], [line]))
    assert isinstance(records[-1], LogRecord) and records[-1].raw == line
