"""Several worker processes on one host (issue 12, item 3).

- A metrics port that is taken stops a worker before it joins the consumer group: it exits at once, with one
  line naming the port and the ways out, and the worker that already owns the partitions is never revoked
  (before the fix the newcomer joined, took partitions through a rebalance, then died on ``EADDRINUSE``).
- ``streamrec worker --processes 2``: two processes in the group, both assigned partitions and both serving
  metrics (``port`` and ``port + 1``); a generated log is applied exactly once (every user's and item's
  features equal the log applied once in memory, and the two processes' ``processed`` counters add up to
  the log); SIGTERM to the pool stops both cleanly.
- The pool itself (:mod:`streams.process_pool`) with stand-in children: one child's failure stops the others
  and is the pool's exit code; a taken port is refused before any child starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from test_worker_exactly_once import _assert_features  # the same comparison with the log applied once

from foundation.child_env import settings_env
from foundation.kafka_io import make_admin
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.dataset import load_log
from models.features.state import ItemStatic
from online_state.keys import DEFAULT_KEYS
from schemas.decoder import EventError, interaction_decoder
from streams.metrics import MetricsPortInUse
from streams.process_pool import ProcessSpec, WorkerPool, metrics_ports
from streams.worker import GROUP_ID
from tools.datasets.world import generate_world
from tools.replay import replay_log
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
WORKER = [sys.executable, "-m", "streamrec.commands.worker"]
ARGS = ["--max-records", "200", "--session-timeout-ms", "6000"]


def _settings(stack: Settings, tag: str) -> Settings:
    suffix = f"{tag}-{uuid.uuid4().hex[:8]}"
    return stack.model_copy(update={
        "topic_interactions": f"interactions-{suffix}", "topic_catalog": f"catalog-{suffix}",
        "topic_item_vectors": f"item-vectors-{suffix}", "topic_item_state": f"item-state-{suffix}",
        "topic_dead_letters": f"dead-letters-{suffix}", "interactions_partitions": PARTITIONS,
        "artifacts": Path("/nonexistent-bundle"),  # no bundle: the features, trending and sessions
        "log_level": "INFO", "log_json": True,
    })


def _env(stack_env: dict[str, str], settings: Settings) -> dict[str, str]:
    return settings_env(settings, base=stack_env)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _log_events(path: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in path.read_text().splitlines():
        if f'"{event}"' in line:
            with_event = json.loads(line[line.index("{"):])
            if with_event.get("event") == event:
                found.append(with_event)
    return found


async def _wait_log(path: Path, event: str, count: int, proc: subprocess.Popen[bytes],
                    seconds: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + seconds
    while True:
        found = _log_events(path, event)
        if len(found) >= count:
            return found
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {count}x {event}:\n{path.read_text()[-3000:]}"
        await asyncio.sleep(0.05)


async def _members(settings: Settings) -> list[set[int]]:
    """The group's members, as the interactions partitions each is assigned (the broker's view)."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    admin = make_admin(settings)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([GROUP_ID])
    finally:
        await admin.close()
    [group] = response.groups
    members = group[5]  # error_code, group_id, state, protocol_type, protocol, members, ...
    owned = []
    for member in members:
        raw = member[-1]  # member_assignment is every version's last field
        assignment = ConsumerProtocolMemberAssignment.decode(raw) if raw else None
        owned.append({p for topic, parts in (assignment.assignment if assignment else []) for p in parts
                      if topic == settings.topic_interactions})
    return owned


def _listening_port() -> socket.socket:
    """A socket listening on a free loopback port (what another worker's metrics server holds)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` both free on loopback."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise AssertionError("no two consecutive free ports")


async def test_a_taken_metrics_port_stops_the_worker_before_it_joins_the_group(
    stack: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    settings = _settings(stack, "port")
    await ensure_topics_retrying(settings)
    env = _env(stack_env, settings)
    first = _spawn([*WORKER, *ARGS, "--metrics-port", "0"], env, tmp_path / "first.log")
    try:
        await _wait_log(tmp_path / "first.log", "worker.assigned", 1, first)
        assert [len(parts) for parts in await _members(settings)] == [PARTITIONS]
        with _listening_port() as holder:
            port = holder.getsockname()[1]
            started = time.monotonic()
            second = await asyncio.to_thread(subprocess.run, [*WORKER, *ARGS, "--metrics-port", str(port)],
                                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                                             check=False)
            took = time.monotonic() - started
        output = second.stdout + second.stderr
        assert second.returncode == 2, output
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output
        assert f"127.0.0.1:{port} is already in use" in errors[0]
        assert "--metrics-port" in errors[0] and "--processes" in errors[0]
        assert "Traceback" not in output
        # It never reached Kafka: no assignment, no start-up past the port, and quickly (no group round trips).
        assert "worker.assigned" not in output and "worker.started" not in output
        assert took < 20, f"{took:.1f} s"
        # The group never saw it: the first worker still owns every partition and was never revoked.
        assert [len(parts) for parts in await _members(settings)] == [PARTITIONS]
        first_log = (tmp_path / "first.log").read_text()
        assert "worker.revoked" not in first_log
        assert len(_log_events(tmp_path / "first.log", "worker.assigned")) == 1
    finally:
        terminate(first, timeout_s=20)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]


@dataclasses.dataclass
class _World:
    path: Path
    events: list  # decoded interaction events, log order
    static: ItemStatic


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> _World:
    path = tmp_path_factory.mktemp("pool-world")
    generate_world(path, users=80, items=150, events=3000, seed=21, days=7)
    events = []
    for line in (path / "events.jsonl").read_bytes().splitlines():
        try:
            events.append(interaction_decoder.decode(line))
        except EventError:
            continue
    return _World(path, events, ItemStatic.from_catalog(load_log(path).catalog))


async def _applied(client: aioredis.Redis, settings: Settings) -> int:
    keys = [DEFAULT_KEYS.offset(settings.topic_interactions, p) for p in range(PARTITIONS)]
    return sum(int(v) + 1 for v in await client.mget(keys) if v is not None)


async def _scrape(port: int) -> dict[str, float]:
    """The worker's ``streamrec_worker_events_total`` samples on ``port``, by ``topic/outcome``."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {f"{s.labels['topic']}/{s.labels['outcome']}": s.value
            for family in text_string_to_metric_families(text) if family.name == "streamrec_worker_events"
            for s in family.samples if s.name == "streamrec_worker_events_total"}


async def test_processes_share_the_partitions_apply_once_and_stop_together(
    stack: Settings, stack_env: dict[str, str], redis_client: aioredis.Redis, world: _World, tmp_path: Path
) -> None:
    settings = _settings(stack, "pool")
    await ensure_topics_retrying(settings)
    await replay_log(world.path / "catalog.jsonl", settings)  # the catalogue first: workers read it at start-up
    port = _free_port_pair()
    log_path = tmp_path / "pool.log"
    pool = _spawn([*WORKER, *ARGS, "--processes", "2", "--metrics-port", str(port)], _env(stack_env, settings),
                  log_path)
    pids: list[int] = []
    try:
        started = await _wait_log(log_path, "worker_pool.started", 2, pool)
        pids = [int(str(e["pid"])) for e in started]
        assert sorted((e["index"], e["metrics_port"]) for e in started) == [(0, port), (1, port + 1)]
        # Both in the group, each assigned part of the partitions (the broker's view), before any event.
        deadline = time.monotonic() + 60
        while True:
            owned = await _members(settings)
            if len(owned) == 2 and all(owned) and set.union(*owned) == set(range(PARTITIONS)):
                break
            assert pool.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"partitions never split between the processes: {owned}"
            await asyncio.sleep(0.2)
        await replay_log(world.path / "events.jsonl", settings)
        deadline = time.monotonic() + 60
        while (done := await _applied(redis_client, settings)) < len(world.events):
            assert pool.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"only {done} of {len(world.events)} applied"
            await asyncio.sleep(0.05)
        # Both metrics ports answer, both processes applied events, and together each event once.
        topic = settings.topic_interactions
        counts = [await _scrape(port), await _scrape(port + 1)]
        processed = [c.get(f"{topic}/processed", 0) for c in counts]
        duplicates = [c.get(f"{topic}/duplicate", 0) for c in counts]
        assert all(n > 0 for n in processed), processed
        assert sum(processed) + sum(duplicates) == len(world.events), (processed, duplicates)
        await _assert_features(redis_client, world)
    finally:
        terminate(pool, timeout_s=40)
    output = log_path.read_text()
    assert pool.returncode == 0, output[-3000:]
    stopped = _log_events(log_path, "worker_pool.process_stopped")
    assert sorted((e["index"], e["exit_code"]) for e in stopped) == [(0, 0), (1, 0)], output[-3000:]
    assert len(_log_events(log_path, "worker.stopped")) == 2  # each child shut down its clients
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- the pool alone, with stand-in children ------------------------------------------------------------------

_SLEEPER = ("import signal, sys, time, pathlib\n"
            "signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path(sys.argv[1]).write_text('term'), sys.exit(0)))\n"
            "pathlib.Path(sys.argv[2]).write_text('up')\n"
            "time.sleep(60)\n")


def _sleeper(index: int, tmp: Path) -> ProcessSpec:
    return ProcessSpec(index, (sys.executable, "-c", _SLEEPER, str(tmp / f"term{index}"), str(tmp / f"up{index}")), 0)


async def test_one_failing_process_stops_the_pool_with_its_code(tmp_path: Path) -> None:
    failing = ProcessSpec(1, (sys.executable, "-c", f"import pathlib, time, sys\n"
                              f"while not pathlib.Path({str(tmp_path / 'up0')!r}).exists(): time.sleep(0.01)\n"
                              f"sys.exit(3)"), 0)
    started = time.monotonic()
    code = await asyncio.wait_for(WorkerPool([_sleeper(0, tmp_path), failing], stop_timeout_s=10).run(), 30)
    assert code == 3
    assert (tmp_path / "term0").read_text() == "term"  # the other process was sent SIGTERM and stopped
    assert time.monotonic() - started < 20


async def test_the_pool_forwards_a_stop_to_every_process(tmp_path: Path) -> None:
    pool = WorkerPool([_sleeper(0, tmp_path), _sleeper(1, tmp_path)], stop_timeout_s=10)
    task = asyncio.ensure_future(pool.run())
    deadline = time.monotonic() + 20
    while not ((tmp_path / "up0").exists() and (tmp_path / "up1").exists()):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    pool._on_signal(signal.SIGTERM)  # what the SIGTERM handler calls (the real signal: the --processes test)
    assert await asyncio.wait_for(task, 20) == 0
    assert (tmp_path / "term0").read_text() == (tmp_path / "term1").read_text() == "term"


def test_the_processes_die_with_a_killed_pool(tmp_path: Path) -> None:
    """SIGKILL to the pool (no handler runs): the kernel sends each child SIGTERM (PR_SET_PDEATHSIG)."""
    specs = [_sleeper(i, tmp_path) for i in range(2)]
    script = ("import sys\n"
              "from streams.process_pool import ProcessSpec, run_pool\n"
              f"sys.exit(run_pool([ProcessSpec(i, argv, 0) for i, argv in enumerate({[s.argv for s in specs]!r})]))\n")
    pool = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.monotonic() + 30
    try:
        while not ((tmp_path / "up0").exists() and (tmp_path / "up1").exists()):
            assert time.monotonic() < deadline and pool.poll() is None
            time.sleep(0.01)
    finally:
        pool.kill()
        pool.wait()
    while not ((tmp_path / "term0").exists() and (tmp_path / "term1").exists()):
        assert time.monotonic() < deadline, "the children outlived the pool"
        time.sleep(0.01)


async def test_a_taken_port_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    with _listening_port() as holder:
        port = holder.getsockname()[1]
        pool = WorkerPool([_sleeper(0, tmp_path), dataclasses.replace(_sleeper(1, tmp_path), metrics_port=port)])
        with pytest.raises(MetricsPortInUse, match=f"127.0.0.1:{port} is already in use"):
            await pool.run()
    assert pool.started == []


def test_process_i_serves_metrics_on_port_plus_i() -> None:
    assert metrics_ports(9108, 3) == [9108, 9109, 9110]
    assert metrics_ports(0, 3) == [0, 0, 0]
    with pytest.raises(ValueError, match="past 65535"):
        metrics_ports(65535, 2)
