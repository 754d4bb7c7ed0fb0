"""``streamrec simulate`` against the real system: a ``streamrec serve`` process and a ``streamrec worker`` process on
the session's Kafka broker and redis-server, with the small trained bundle, driven by the CLI for ~20 s with 30 users
of the very world the bundle was trained on.

What it checks: lists were answered and their titles are the world's (the ground truth knows them), the events the
simulator posted were accepted and are in Kafka, and the worker applied them to the online state: the simulated
sessions (their ``session_id``s) with their plays are in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from test_page_browser import _ready, _spawn
from test_worker_dead_letters import per_test_settings

from foundation.child_env import settings_env
from foundation.redis_io import redis_client
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import open_bundle
from online_state.keys import KeyLayout
from online_state.sessions import decode_session
from tools.catch_up import end_offsets, wait_applied
from tools.datasets.world import generate_world
from tools.stack import process
from tools.stack.probes import free_port

REPO = Path(__file__).resolve().parents[2]
# The world the session's small bundle is trained on (tests/integration/conftest.py, _small_bundle_source): the
# generator is deterministic, so the same parameters give the same users and titles.
BUNDLE_WORLD = {"users": 120, "items": 600, "events": 8000, "seed": 9, "days": 7}
API_KEY = "it-simulate-key"
SIM_USERS = 30
SIM_SECONDS = 20


@dataclass
class Running:
    url: str
    settings: Settings
    env: dict[str, str]
    tmp: Path

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{(self.tmp / name).read_text(errors='replace')[-3000:]}"
                         for name in ("worker.log", "server.log"))


@pytest.fixture
def world(small_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "world"
    generate_world(out, **BUNDLE_WORLD)  # type: ignore[arg-type]
    catalog = {orjson.loads(line)["item_id"] for line in (out / "catalog.jsonl").read_bytes().splitlines()}
    assert set(open_bundle(small_bundle).json("item_ids")) <= catalog, "not the bundle's world: see BUNDLE_WORLD"
    return out


@pytest.fixture
def running(stack: Settings, small_bundle: Path, tmp_path: Path) -> Iterator[Running]:
    """``streamrec worker`` and ``streamrec serve`` (one process each) on topics of this test's own."""
    with _running(stack, small_bundle, tmp_path) as r:
        yield r


@contextlib.contextmanager
def _running(stack: Settings, small_bundle: Path, tmp_path: Path, **update: object) -> Iterator[Running]:
    settings = per_test_settings(stack, "simulate")
    asyncio.run(ensure_topics_retrying(settings))
    settings = settings.model_copy(update={"api_key": API_KEY, "log_level": "WARNING", **update})
    env = settings_env(settings, base=dict(os.environ))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    children = [
        _spawn(["streamrec.cli", "worker", "--artifacts", str(small_bundle), "--metrics-port", "0"], env,
               tmp_path / "worker.log"),
        _spawn(["streamrec.cli", "serve", "--artifacts", str(small_bundle), "--port", str(port), "--workers", "1"],
               env, tmp_path / "server.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _ready(url, children[1], tmp_path / "server.log")
        yield Running(url, settings, env, tmp_path)
    finally:
        for child in children:
            process.terminate(child)


async def _simulated_sessions(settings: Settings) -> list[tuple[str, dict[str, int]]]:
    """(session id, event counts) of every session in Redis that the simulator started."""
    redis = redis_client(settings)
    keys = KeyLayout()
    try:
        found = []
        async for key in redis.scan_iter(match=keys.session("*"), count=500):
            session = decode_session(await redis.get(key))
            if session is not None and (session.sid or "").startswith("sim-"):
                found.append((session.sid or "", dict(session.n)))
        return found
    finally:
        await redis.aclose()


async def _applied(settings: Settings) -> tuple[int, float]:
    """Records on the interactions topic, once the worker has applied them all (and how long that took)."""
    ends = await end_offsets(settings)
    redis = redis_client(settings)
    try:
        waited = await wait_applied(redis, ends, timeout_s=45)
    finally:
        await redis.aclose()
    return sum(n for (topic, _), n in ends.items() if topic == settings.topic_interactions), waited


def _simulate(running: Running, world: Path, users: int, seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "simulate", "--world", str(world), "--users", str(users),
         "--minutes", str(seconds / 60), "--url", running.url, "--seed", "1", "--concurrency", "8", "--json"],
        cwd=REPO, env={**running.env, "STREAMREC_LOG_JSON": "true"}, capture_output=True, text=True,
        timeout=seconds + 60, check=False)


def test_simulated_users_are_answered_and_their_events_reach_the_online_state(running: Running, world: Path) -> None:
    started = time.monotonic()
    done = _simulate(running, world, SIM_USERS, SIM_SECONDS)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n{running.logs()}"
    assert API_KEY not in done.stdout + done.stderr, "the API key was printed or logged"
    summary = orjson.loads(done.stdout)
    print("simulate summary:", orjson.dumps(summary).decode())  # the figures, for `pytest -s`

    # Lists answered, of the world's titles, with latencies measured; nothing failed.
    assert summary["requests"] >= SIM_USERS, summary
    assert summary["failures"] == 0, (summary["failures_by_kind"], running.logs())
    assert summary["users_active"] >= SIM_USERS * 0.9
    assert summary["shown_unknown_titles"] == 0 and 0 < summary["mean_true_affinity_shown"] < 1
    assert summary["latency_ms"]["n"] >= summary["requests"] and summary["latency_ms"]["p99"] > 0
    assert SIM_SECONDS - 1 <= summary["wall_s"] <= SIM_SECONDS + 15 and elapsed < SIM_SECONDS + 50
    # Events posted and accepted: the plays and their outcomes, and one impression per list outside experiments (the
    # server logs the exposures of answers in one).
    assert summary["events_refused"] == 0 and summary["events_posted"] > 0
    assert summary["impressions"] == summary["requests"] - summary["requests_in_experiments"]
    assert summary["plays"] > 0 and summary["clicks"] >= summary["plays"]
    assert summary["plays"] == summary["completes"] + summary["skips"] + summary["abandoned"]
    assert summary["events_posted"] == summary["impressions"] + summary["clicks"] + summary["plays"] \
        + summary["completes"] + summary["skips"] + summary["abandoned"]

    # In Kafka (the server's producer), and applied by the worker to Redis: the simulated sessions are there.
    in_topic, _ = asyncio.run(_applied(running.settings))
    assert in_topic >= summary["events_posted"]
    sessions = asyncio.run(_simulated_sessions(running.settings))
    assert len({sid.rsplit("-s", 1)[0] for sid, _ in sessions}) >= SIM_USERS * 0.9, sessions[:5]
    # A user's key holds their current session only (a user who left and came back has a new one): its counts.
    assert all(sum(n.values()) > 0 for _, n in sessions), sessions[:5]


# CI's small A/A and A/B, end to end: the server assigns and logs exposures, the simulator's users act, the worker
# counts, and `streamrec experiments report` reports. Every simulated user is in both experiments (two layers).
EXPERIMENTS = {"version": 1, "experiments": [
    {"name": "aa", "layer": "aa", "salt": "ci-aa", "variants": [{"name": "a"}, {"name": "b"}]},
    {"name": "ranker", "layer": "ranking", "salt": "ci-ranker", "variants": [
        {"name": "ranker"}, {"name": "retrieval_order", "changes": {"ranker": False}}]},
]}


def _report(running: Running, name: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", "experiments", "report", name, "--json"],
                          cwd=REPO, env=running.env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.usefixtures("no_experiments_document")
def test_a_small_aa_and_ab_run_end_to_end(stack: Settings, small_bundle: Path, world: Path, tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    path.write_bytes(orjson.dumps(EXPERIMENTS))
    with _running(stack, small_bundle, tmp_path, experiments_file=path) as running:
        done = _simulate(running, world, 40, 25)
        assert done.returncode == 0, f"{done.stderr[-4000:]}\n{running.logs()}"
        summary = orjson.loads(done.stdout)
        assert summary["failures"] == 0 and summary["requests_in_experiments"] == summary["requests"] > 0
        asyncio.run(_applied(running.settings))  # every event and exposure applied by the worker
        reports = {name: _report(running, name) for name in ("aa", "ranker")}
    for name, report in reports.items():
        seen = summary["experiments"][name]  # what the simulator's users were answered
        variants = {v["name"]: v for v in report["variants"]}  # type: ignore[attr-defined]
        assert {n: v["users"] for n, v in variants.items()} == {n: s["users"] for n, s in seen.items()}, name
        assert {n: v["exposures"] for n, v in variants.items()} == {n: s["requests"] for n, s in seen.items()}
        assert report["srm"]["flag"] is False, report["srm"]  # type: ignore[index]
        comparison = next(iter(report["comparisons"].values()))  # type: ignore[attr-defined]
        plays = comparison["metrics"]["plays_per_user"]
        lo, hi = plays["abs_ci"]
        assert lo <= plays["abs_diff"] <= hi and 0 <= plays["p_value"] <= 1
        assert plays["always_valid_p"] >= plays["p_value"]  # the sequential p is never below the fixed-horizon p
    # Every play the simulator sent followed an answer in both experiments and carried its request id: each is
    # counted once in each experiment.
    for report in reports.values():
        counted = sum(v["plays_per_user"] * v["users"] for v in report["variants"])  # type: ignore[attr-defined]
        assert round(counted) == summary["plays"], (counted, summary["plays"])
