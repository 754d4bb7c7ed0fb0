"""The user simulator's parts without a server: the behaviour model (position bias, affinity, determinism), the events
it posts (valid, attributed, in time order), the ground truth rebuilt from world.json (number for number the
generator's), and the driver's loop against an in-process transport (429s honoured, experiments tallied, the same
seed giving the same events)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from schemas.decoder import decode_event
from tools.datasets import world as world_module
from tools.datasets.world import WorldConfig, generate_world, replay_world, run_world
from tools.datasets.world_users import TasteModel
from tools.simulate.behaviour import Behaviour, decide, id_maker, next_step_delay_ms, satiated, step_events
from tools.simulate.driver import SimulationConfig, simulate
from tools.simulate.truth import GroundTruth, load_truth

SMALL: dict[str, Any] = {"users": 60, "items": 300, "events": 4000, "seed": 5, "days": 5.0}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim-world")
    generate_world(out, **SMALL)
    return out


@pytest.fixture(scope="module")
def truth(small_world: Path) -> GroundTruth:
    return load_truth(small_world)


# -- the behaviour model --------------------------------------------------------------------------


def test_higher_affinity_gets_more_clicks_plays_and_completes() -> None:
    rng = np.random.default_rng(1)
    low = decide(np.full((20_000, 10), 0.2), rng)
    high = decide(np.full((20_000, 10), 0.8), rng)
    assert high.click.mean() > 2.5 * low.click.mean()
    assert high.play.mean() > 2.5 * low.play.mean()
    # Of the titles started, the liked ones are finished more and skipped less.
    assert high.complete.sum() / high.play.sum() > low.complete.sum() / low.play.sum() + 0.2
    assert high.skip.sum() / high.play.sum() < low.skip.sum() / low.play.sum() - 0.1


def test_higher_positions_get_more_plays() -> None:
    plays = decide(np.full((40_000, 10), 0.6), np.random.default_rng(2)).play.mean(axis=0)
    assert np.all(np.diff(plays) < 0), plays  # strictly fewer plays at every lower slot (position bias)
    assert plays[0] > 4 * plays[9]
    # Position bias does not drown taste: a liked title at slot 5 beats a disliked one at slot 0.
    q = np.full((40_000, 10), 0.1)
    q[:, 5] = 0.9
    mixed = decide(q, np.random.default_rng(3)).play.mean(axis=0)
    assert mixed[5] > mixed[0]


def test_unknown_titles_are_never_clicked_and_plays_per_list_are_capped() -> None:
    q = np.full((5000, 10), 1.0)
    q[:, 0] = np.nan
    d = decide(q, np.random.default_rng(4), Behaviour(examine_top=1.0, examine_decay=1.0, click_scale=1.0))
    assert not d.click[:, 0].any()
    assert d.click.sum(axis=1).max() == 3  # max_plays: the first three clicked only


def test_decisions_are_deterministic_given_a_seed() -> None:
    q = np.random.default_rng(0).random((50, 10))
    a, b = decide(q, np.random.default_rng(7)), decide(q, np.random.default_rng(7))
    c = decide(q, np.random.default_rng(8))
    for name in ("examined", "click", "play", "skip", "complete", "watched_frac", "browse_s"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.examined, c.examined)
    assert next_step_delay_ms(False, np.random.default_rng(9)) == next_step_delay_ms(False, np.random.default_rng(9))


def test_step_events_are_valid_attributed_and_in_time_order() -> None:
    q = np.array([0.9, 0.1, 0.95, 0.9, 0.8, 0.2, 0.9, 0.9, 0.9, 0.9])
    d = decide(q, np.random.default_rng(11), Behaviour(examine_top=1.0, examine_decay=1.0, click_scale=1.0,
                                                       play_given_click=1.0))
    items = [f"i{n}" for n in range(10)]
    context = {"device": "tv", "country": "NL", "local_hour": 21, "session_id": "s1"}
    step = step_events(user_id="u1", item_ids=items, durations=np.full(10, 3600.0), decisions=d,
                       start_ts=1_767_830_400_000, request_id="req-1", context=context, new_id=id_maker("e-"),
                       impression=True)
    events = [decode_event(orjson.dumps(e)) for e in step.events]  # every one passes the schema
    kinds = [e["type"] for e in step.events]
    assert kinds[0] == "impression" and step.events[0]["item_ids"] == items
    assert all(e["request_id"] == "req-1" for e in step.events)
    assert len({e.event_id for e in events}) == len(events)
    ts = [e["ts"] for e in step.events]
    assert ts == sorted(ts) and step.end_ts == ts[-1]
    clicks = [e for e in step.events if e["type"] == "click"]
    assert [c["position"] for c in clicks] == np.flatnonzero(d.click).tolist()
    assert len(clicks) == 3 and step.counts["play"] == 3
    assert step.counts["complete"] + step.counts["skip"] + step.counts["progress"] == 3
    # Without an impression (the server logged the exposure): only the interactions.
    again = step_events(user_id="u1", item_ids=items, durations=np.full(10, 3600.0), decisions=d, start_ts=0,
                        request_id="r", context=context, new_id=id_maker("x-"), impression=False)
    assert [e["type"] for e in again.events] == kinds[1:]


# -- the ground truth -----------------------------------------------------------------------------


def test_rebuilt_world_matches_the_generator_number_for_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The users' state after ``run_world`` (tastes drifted through every session of the log) equals the state
    ``replay_world`` rebuilds from the same config, and the config read back from world.json is the same config."""
    made: list[TasteModel] = []

    class Recording(TasteModel):
        def build(self, n: int) -> Any:
            users = super().build(n)
            made.append(self)
            self.users = users  # type: ignore[attr-defined]
            return users

    monkeypatch.setattr(world_module, "TasteModel", Recording)
    config = WorldConfig(**SMALL)
    summary = run_world(tmp_path, config)
    monkeypatch.undo()
    generated = made[0].users  # type: ignore[attr-defined]
    doc = orjson.loads(summary.world_path.read_bytes())
    assert world_module.config_from_json(doc) == config
    rebuilt = replay_world(world_module.config_from_json(doc))
    for name in ("country", "limit", "age", "device1", "device2", "activity", "regime", "walk", "style_anchor",
                 "style_walk", "last_ms", "next_shift"):
        assert np.array_equal(getattr(generated, name), getattr(rebuilt.users, name)), name
    assert rebuilt.users.ids == generated.ids
    assert made[0].rng.bit_generator.state == rebuilt.taste.rng.bit_generator.state  # same draws, no more
    # The generator's bytes are unchanged by the rebuild's helpers: the same config still writes the same log.
    again = tmp_path / "again"
    run_world(again, config)
    assert (again / "events.jsonl").read_bytes() == summary.events_path.read_bytes()


def test_truth_maps_the_logs_ids_and_its_affinity_explains_the_log(small_world: Path, truth: GroundTruth) -> None:
    catalog = [orjson.loads(line) for line in (small_world / "catalog.jsonl").read_bytes().splitlines()]
    upserts = {e["item_id"]: e for e in catalog if e["type"] == "item_upsert"}
    assert set(upserts) == set(truth.catalog.ids)
    for item, n in list(truth.item_index.items())[:50]:
        assert upserts[item]["duration_seconds"] == pytest.approx(truth.catalog.duration[n])
    events = [orjson.loads(line) for line in (small_world / "events.jsonl").read_bytes().splitlines()]
    profiles = {e["user_id"]: e for e in events if e["type"] == "user_upsert"}
    index = {u: n for n, u in enumerate(truth.users.ids)}
    for user, e in profiles.items():
        assert e["country"] == truth.country(index[user])
    # Titles the log's users completed in its last two days are ones the rebuilt (end-of-log) taste likes more
    # than what they skipped: the affinity is the generator's.
    late = truth.origin_ts - 2 * 86_400_000
    by_kind: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e["type"] in ("complete", "skip") and e["ts"] >= late:
            u = index[e["user_id"]]
            by_kind[e["type"]].append(float(truth.affinity(u, truth.items([e["item_id"]]))[0]))
    assert np.mean(by_kind["complete"]) > np.mean(by_kind["skip"]) + 0.05, {k: len(v) for k, v in by_kind.items()}
    assert np.isnan(truth.affinity(0, truth.items(["not-in-this-world"])))[0]


# -- the driver, against an in-process transport --------------------------------------------------


class FakeApi:
    """Answers lists of the world's titles (per user, fixed), an experiment for half of the users, one 429 with
    Retry-After on the first request, and records every posted batch."""

    def __init__(self, truth: GroundTruth) -> None:
        self.truth = truth
        self.posted: list[dict[str, Any]] = []
        self.requests = 0
        self.times: dict[str, list[float]] = defaultdict(list)  # per user: when each try arrived
        self.throttled = ""

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/recommendations/"):
            self.requests += 1
            user = request.url.path.rsplit("/", 1)[1]
            self.times[user].append(asyncio.get_running_loop().time())
            if self.requests == 1:
                self.throttled = user
                return httpx.Response(429, headers={"Retry-After": "0.3"}, json={"error": {"message": "slow"}})
            assert int(request.url.params["now"]) >= self.truth.origin_ts
            start = sum(map(ord, user)) % (self.truth.catalog.n - 10)
            items = [{"item_id": i, "score": 1.0, "sources": ["x"]} for i in self.truth.catalog.ids[start:start + 10]]
            body: dict[str, Any] = {"user_id": user, "request_id": f"r-{self.requests}", "model_version": "v",
                                    "items": items, "degraded": False}
            if int(user[1:]) % 2:
                body["experiments"] = [{"name": "ranker", "variant": "treatment"}]
            return httpx.Response(200, json=body)
        assert request.url.path == "/v1/events" and request.headers["X-API-Key"] == "k"
        batch = orjson.loads(request.content)
        self.posted.extend(batch)
        return httpx.Response(200, json={"accepted": len(batch), "refused": [], "request_id": "p"})


def _run(truth: GroundTruth, seed: int) -> tuple[dict[str, Any], FakeApi]:
    api = FakeApi(truth)
    config = SimulationConfig(url="http://sim.test", api_key="k", users=12, minutes=0.04, seed=seed,
                              concurrency=4, time_scale=3000.0, min_gap_s=0.02, run_id="t")
    summary = asyncio.run(simulate(truth, config, transport=httpx.MockTransport(api.handler)))
    return summary, api


def test_driver_runs_users_honours_429_and_is_deterministic(small_world: Path) -> None:
    summary, api = _run(load_truth(small_world), seed=3)
    assert summary["requests"] > 30 and summary["failures"] == 0
    assert summary["throttled_tries"] == 1 and summary["http_tries"]["recommendations 429"] == 1
    retried = api.times[api.throttled]
    assert retried[1] - retried[0] >= 0.28, "the retry waited for Retry-After"
    assert summary["events_posted"] == len(api.posted) > 0
    assert summary["plays"] == sum(e["type"] == "play" for e in api.posted)
    assert summary["latency_ms"]["p50"] is not None and summary["mean_true_affinity_shown"] is not None
    variants = summary["experiments"]["ranker"]["treatment"]
    assert 0 < variants["users"] <= 12 and variants["requests"] > 0
    # Answers in an experiment are logged by the server: the simulator posts impressions for the others only.
    in_experiment = {e["user_id"] for e in api.posted if int(e["user_id"][1:]) % 2}
    assert not any(e["type"] == "impression" for e in api.posted if e["user_id"] in in_experiment)
    assert any(e["type"] == "impression" for e in api.posted)
    assert summary["impressions"] == summary["requests"] - summary["requests_in_experiments"] > 0

    # Same seed, same world: each user's events are the same (as far as both runs got), ids and all.
    _, api2 = _run(load_truth(small_world), seed=3)
    _, api3 = _run(load_truth(small_world), seed=4)

    def per_user(posted: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for e in posted:
            out[e["user_id"]].append((e["type"], e["ts"], e.get("item_id"), e["event_id"]))
        return out

    a, b = per_user(api.posted), per_user(api2.posted)
    assert set(a) == set(b)
    for user in a:
        n = min(len(a[user]), len(b[user]))
        assert n > 0 and a[user][:n] == b[user][:n], user
    assert set(per_user(api3.posted)) != set(a) or any(
        per_user(api3.posted)[u][:1] != a[u][:1] for u in a)


def test_a_title_already_played_is_seldom_restarted_and_heavy_viewers_come_back_sooner() -> None:
    q = np.array([0.5, 0.5, 0.5])
    out = satiated(q, ["a", "b", "c"], {"b"}, Behaviour(rewatch=0.1))
    np.testing.assert_allclose(out, [0.5, 0.05, 0.5])
    assert satiated(q, ["a", "b", "c"], set()) is q

    def mean_away_s(activity: float) -> float:
        rng = np.random.default_rng(0)
        gaps = [next_step_delay_ms(False, rng, Behaviour(leave_prob=1.0), activity)[0] for _ in range(2000)]
        return float(np.mean(gaps)) / 1000
    heavy, light = mean_away_s(4.0), mean_away_s(0.25)
    assert heavy < light / 5, (heavy, light)
