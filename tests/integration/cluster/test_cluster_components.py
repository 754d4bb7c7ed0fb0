"""Every component on the cluster stack (issue 12 item 4): server, worker, ``inspect``, ``--rebuild``, the demo.

One ``stack up --brokers 3 --redis-cluster`` for the module (conftest.py), then, in this order:

1. the per-request user read (``online_state.reads.read_online_state``) is ONE command, an ``MGET``, on the one
   master that owns the user's slot (``INFO commandstats`` of every master, before and after);
2. end to end: a worker process and a server process on the cluster; events POSTed over HTTP (with a key of the
   API-key table, itself on the cluster) are applied and change the user's answer; ``streamrec inspect user``
   shows the user; the Redis master owning the user's slot is SIGKILLed: the server answers again on its own
   (same process, redis-py's cluster client refreshes its slot map), and a further event is applied;
3. ``--rebuild``'s ``delete_state`` deletes the state of every master (SCAN and UNLINK across the cluster);
4. ``streamrec demo --cluster`` end to end (last: ``demo --down`` stops the stack).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import redis.asyncio.cluster as aiocluster
from cluster_support import REDIS_PORT, REPO_ROOT, ClusterStack
from test_cluster_stack import _cluster_nodes

from foundation.child_env import settings_env
from foundation.redis_io import redis_client
from foundation.settings import Settings
from models.recommend.model import RecommenderModel
from online_state import api_keys
from online_state.feature_codec import item_fields
from online_state.feature_reads import FeatureReader, same_snapshot
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.reads import RequestScopes, SharedReads, read_online_state
from online_state.redis_store import RedisFeatureStore
from online_state.sessions import SESSION_BLOB_VERSION, SessionBlob, encode_session
from online_state.user_vectors import pack_user_vector
from streams.rebuild import delete_state
from tools.eval_stream import arm_keys, clear_arm, copy_prefix, run_settings
from tools.stack import manager, process
from tools.stack.layout import StackLayout
from tools.stack.probes import free_port

STREAMREC = [sys.executable, "-m", "streamrec.cli"]
T0 = 1_767_225_600_000
# Commands that read or write data: what the user read may send (the rest, REPLCONF, CLUSTER, INFO, is noise).
DATA_COMMANDS = ("mget", "get", "hmget", "hgetall", "zrevrange", "zrevrangebyscore", "evalsha", "eval", "fcall")


async def _commandstats(client: Any) -> dict[int, dict[str, int]]:
    """Calls per data command on every master: ``{port: {command: calls}}``."""
    out: dict[int, dict[str, int]] = {}
    for node in client.get_primaries():
        info = await client.info("commandstats", target_nodes=node)
        out[int(node.port)] = {name: int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in DATA_COMMANDS}
    return out


def _delta(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    """The commands sent between two snapshots, per master (zero counts left out)."""
    return {port: {name: n - before[port][name] for name, n in counts.items() if n != before[port][name]}
            for port, counts in after.items()}


# --- 1. The per-request user read is one command on one node -------------------------------------------------


async def test_user_read_is_one_mget_on_the_master_owning_the_users_slot(cluster_stack: ClusterStack) -> None:
    settings = cluster_stack.settings
    client = redis_client(settings)
    assert isinstance(client, aiocluster.RedisCluster)
    keys = KeyLayout(f"it-read-{uuid.uuid4().hex[:6]}")
    user = "reader-1"
    try:
        await client.initialize()
        space, dim = 7, 8
        session = SessionBlob(v=SESSION_BLOB_VERSION, sid="s1", start=T0, last=T0 + 5, dev="tv", n={"play": 2},
                              rec=[("i1", T0), ("i2", T0 + 5)], g={})
        await client.set(keys.user_vector(user), pack_user_vector(np.ones(dim), 1, space))
        await client.set(keys.session(user), encode_session(session))
        owner = int(client.get_node_from_key(keys.user_state(user)).port)
        shared = SharedReads(ttl_s=600)
        now = int(time.time() * 1000)

        async def read() -> Any:
            return await read_online_state(client, keys, user, RequestScopes(country="US"), now, trending_k=10,
                                           new_k=10, space=space, dim=dim, shared=shared)

        # First request: the user's MGET plus the shared lists it does not hold yet (in one pipeline; the
        # lists' keys live on other masters, the user's three keys on one).
        before = await _commandstats(client)
        state = await read()
        first = _delta(before, await _commandstats(client))
        assert first[owner].get("mget") == 1, first
        assert all("mget" not in counts for port, counts in first.items() if port != owner), first
        assert state.user_vector is not None and state.session_recent == [("i1", T0), ("i2", T0 + 5)]

        # Every later request at the wall clock: the shared lists are held, so the request sends Redis exactly
        # one command, the MGET of its user's three keys, to the one master owning their slot.
        before = await _commandstats(client)
        state = await read()
        later = _delta(before, await _commandstats(client))
        assert later == {port: ({"mget": 1} if port == owner else {}) for port in later}, later
        assert state.user_vector is not None and [i for i, _ in state.recent] == ["i1", "i2"]
    finally:
        await client.delete(keys.user_vector(user), keys.session(user))
        await client.aclose()


async def test_candidate_rows_are_read_from_every_master(cluster_stack: ClusterStack, small_bundle: Path) -> None:
    """The server's read of the candidates' rows when its item-state table does not cover a request: on a cluster
    the one-script read (keys of many slots) is off, and the pipelined HMGETs give the same snapshot."""
    model = RecommenderModel.load(small_bundle)
    client = redis_client(cluster_stack.settings)
    keys = KeyLayout(f"it-rows-{uuid.uuid4().hex[:6]}")
    items = [str(i) for i in model.items.ids[:40]]
    now = int(time.time() * 1000)
    fields, _ = item_fields(now)
    try:
        await client.initialize()
        assert len({int(client.get_node_from_key(keys.item_state(i)).port) for i in items}) == 3
        for n, item in enumerate(items):
            await client.hset(keys.item_state(item), mapping={fields[0]: n + 1, fields[-1]: 10 * (n + 1)})
        store = RedisFeatureStore(client, model.static, keys=keys)
        reader = FeatureReader(store)
        assert not reader.scripting  # a script's keys must be of one slot on a cluster
        snap = await reader.read("nobody", items, now)
        assert same_snapshot(snap, await store.read("nobody", items, now))
        assert snap.items.counts[:, 0].tolist() == list(range(1, len(items) + 1))
        assert snap.items.pop[:, -1, 1].tolist() == [10 * (n + 1) for n in range(len(items))]
    finally:
        await delete_state(client, keys)
        await client.aclose()


# --- 2. Worker + server end to end, through the failover of the user's master ------------------------------------


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def _until(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str,
                 children: tuple[tuple[subprocess.Popen[bytes], Path], ...] = ()) -> Any:
    """Poll ``check`` until it returns something truthy; fails with the children's log tails otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        for child, log in children:
            assert child.poll() is None, f"{log.name} exited: {process.tail(str(log))}"
        try:
            last = await check()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(0.25)
    tails = "\n".join(f"--- {log.name}\n{process.tail(str(log))}" for _, log in children)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s (last: {last!r})\n{tails}")


def _play(user: str, item: str, n: int) -> bytes:
    return orjson.dumps({"type": "play", "event_id": f"{user}-play-{n}", "ts": T0 + n, "schema_version": 1,
                         "user_id": user, "item_id": item})


def _inspect(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([*STREAMREC, "inspect", *args, "--json"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


async def _user_off_the_seed(settings: Settings) -> tuple[str, int]:
    """A new user id whose slot's master is not the seed node of ``redis_url`` (and that master's port).

    The seed stays up through the failover because a process started meanwhile (``inspect``) finds the cluster
    through it: ``redis_url`` names one node (see the report of issue 12 item 4)."""
    client = redis_client(settings)
    try:
        await client.initialize()
        while True:
            user = f"cu-{uuid.uuid4().hex[:6]}"
            port = int(client.get_node_from_key(DEFAULT_KEYS.user_state(user)).port)
            if port != REDIS_PORT:
                return user, port
    finally:
        await client.aclose()


async def test_worker_and_server_on_the_cluster_survive_the_users_master_failing(
        cluster_stack: ClusterStack, small_bundle: Path, tmp_path: Path) -> None:
    settings = cluster_stack.settings.model_copy(update={"log_level": "WARNING"})
    env = settings_env(settings)
    # Only keys of the table (itself a key on the cluster, read by the server's key source), no static key.
    env.pop("STREAMREC_API_KEY", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["STREAMREC_AUTH"] = "true"
    admin = redis_client(settings)
    key_name = f"cluster-{uuid.uuid4().hex[:6]}"
    key = await api_keys.create(admin, key_name, (api_keys.EVENTS_WRITE, api_keys.RECOMMENDATIONS_READ))
    await admin.aclose()
    port, metrics_port = free_port(), free_port()
    worker_log, server_log = tmp_path / "worker.log", tmp_path / "serve.log"
    worker = _spawn(["streamrec.commands.worker", "--artifacts", str(small_bundle), "--metrics-port",
                     str(metrics_port), "--session-timeout-ms", "6000"], env, worker_log)
    server = _spawn(["streamrec.cli", "serve", "--artifacts", str(small_bundle), "--port", str(port),
                     "--workers", "1"], env, server_log)
    children = ((worker, worker_log), (server, server_log))
    user, victim_port = await _user_off_the_seed(settings)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    victim_name = ""
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def ready() -> bool:
                """Ready, Redis reachable, and the item-state snapshot loaded (a SCAN of every master)."""
                async with http.get("/readyz") as response:
                    body = await response.json()
                    return response.status == 200 and body["redis"] is True and body["item_state"]["loaded"]

            await _until(ready, 120, "the server ready on the cluster", children)

            async def answer() -> dict[str, Any] | None:
                async with http.get(f"/v1/recommendations/{user}", params={"k": "10"}) as response:
                    body = await response.json()
                    return body if response.status == 200 and not body["degraded"] else None

            before = await _until(answer, 30, "an answer that is not degraded", children)
            played = [item["item_id"] for item in before["items"][:3]]
            assert len(played) == 3, before

            async def post(body: bytes) -> None:
                async with http.post("/v1/events", data=body) as response:
                    assert response.status == 202, (response.status, await response.text())

            for n, item in enumerate(played):
                await post(_play(user, item, n))

            # The worker applies the plays: the titles just played leave the user's answer (watched exclusions
            # come from the session and feature state the server reads in its one MGET).
            async def excluded(titles: list[str]) -> dict[str, Any] | None:
                """The answer, once it is not degraded and holds none of ``titles``."""
                body = await answer()
                return body if body is not None and not set(titles) & {i["item_id"] for i in body["items"]} else None

            await _until(lambda: excluded(played), 60, "the plays reflected in the answer", children)
            shown = _inspect(env, "user", user)
            assert shown["features"] is not None and shown["session"], shown
            assert {r["item_id"] for r in shown["session"]["recent"]} >= set(played), shown["session"]
            assert shown["keys"]["session"]["key"] == DEFAULT_KEYS.session(user)
            trending = _inspect(env, "trending", "--at", str(T0 + 10), "--k", "50")
            assert set(played) <= {row["item_id"] for row in trending["items"]}, trending

            # SIGKILL the master owning the user's slot; its replica is promoted (cluster-node-timeout 2 s).
            nodes = await _cluster_nodes(settings, REDIS_PORT)
            victim_id = next(n["id"] for n in nodes if n["address"].endswith(f":{victim_port}"))
            replica_id = next(n["id"] for n in nodes if n["master"] == victim_id)
            layout = StackLayout.from_settings(cluster_stack.base)
            victim = layout.redis_node(victim_port - REDIS_PORT)
            victim_name = victim.name
            record = process.read_record(victim.pid_file)
            assert record is not None and process.owns(record)
            os.kill(record.pid, signal.SIGKILL)
            killed_at = time.monotonic()

            async def promoted() -> bool:  # as the seed node sees it
                nodes = await _cluster_nodes(settings, REDIS_PORT)
                return "master" in next(n["flags"] for n in nodes if n["id"] == replica_id)

            await _until(promoted, 30, "the replica promoted")
            # The same server process answers again, not degraded, with the user's state (no restart).
            recovered = await _until(lambda: excluded(played), 60, "the server answering after the failover",
                                     children)
            answered_s = time.monotonic() - killed_at
            await _until(ready, 30, "the server ready again after the failover", children)
            # A further event is applied (the worker rode through the failover too).
            after_item = recovered["items"][0]["item_id"]
            await post(_play(user, after_item, 99))
            await _until(lambda: excluded([*played, after_item]), 60, "a play after the failover applied",
                         children)
            applied_s = time.monotonic() - killed_at
            assert server.poll() is None and worker.poll() is None
            shown = _inspect(env, "user", user)
            assert after_item in {r["item_id"] for r in shown["session"]["recent"]}, shown["session"]
        print(f"master :{victim_port} of the user's slot killed: answers again after {answered_s:.1f}s, a new play "
              f"applied after {applied_s:.1f}s")
    finally:
        process.terminate(server)
        process.terminate(worker)
        if victim_name:  # the killed node returns (as a replica) for the tests after this one
            again = await manager.up(cluster_stack.base)
            assert again.started == (victim_name,)
        admin = redis_client(settings)
        await api_keys.revoke(admin, key_name)
        await admin.aclose()


# --- 3. --rebuild deletes the state on every master ---------------------------------------------------------------


async def test_rebuild_deletes_every_key_under_the_prefix_on_every_master(cluster_stack: ClusterStack) -> None:
    client = redis_client(cluster_stack.settings)
    keys = KeyLayout(f"it-rebuild-{uuid.uuid4().hex[:6]}")
    other = KeyLayout(f"it-keep-{uuid.uuid4().hex[:6]}")
    try:
        await client.initialize()
        names = [keys.user_state(f"u{n}") for n in range(300)] + [keys.item_state(f"i{n}") for n in range(300)]
        assert len({int(client.get_node_from_key(name).port) for name in names}) == 3  # every master holds some
        await client.mset_nonatomic({name: b"x" for name in names})
        await client.set(other.item_state("i0"), b"kept")
        assert await delete_state(client, keys) == len(names)
        assert [name async for name in client.scan_iter(match=keys.everything)] == []
        assert await client.get(other.item_state("i0")) == b"kept"
    finally:
        await client.delete(other.item_state("i0"))
        await client.aclose()


async def test_eval_stream_arms_are_key_prefixes_copied_across_slots_on_the_cluster(
        cluster_stack: ClusterStack) -> None:
    """eval-stream's arms on Redis Cluster (one database): two key prefixes of the run; the frozen arm's snapshot
    is every key of the online arm copied under its own prefix (other slots: item and trending keys), TTLs
    kept; clearing an arm empties its prefix on every master and nothing else."""
    settings = cluster_stack.settings
    run_id = uuid.uuid4().hex[:8]
    online, frozen = arm_keys(settings, run_id, "online"), arm_keys(settings, run_id, "frozen")
    assert online.prefix != frozen.prefix and run_settings(settings, run_id, 3).redis_url == settings.redis_url
    client = redis_client(settings)
    try:
        await client.initialize()
        users = {online.user_state(f"u{n}"): f"user {n}".encode() for n in range(200)}
        items = {online.item_state(f"i{n}"): {"play": n} for n in range(200)}
        await client.mset_nonatomic(users)
        for name, fields in items.items():
            await client.hset(name, mapping=fields)
        await client.expire(online.session("u0"), 600)  # no key: no TTL to copy
        await client.set(online.session("u1"), b"s", ex=600)
        names = [*users, *items, online.session("u1")]
        assert len({int(client.get_node_from_key(name).port) for name in names}) == 3
        assert await copy_prefix(client, online, frozen) == len(names)
        assert await client.mget_nonatomic([frozen.user_state(f"u{n}") for n in range(200)]) == list(users.values())
        assert await client.hget(frozen.item_state("i7"), "play") == b"7"
        assert 0 < await client.ttl(frozen.session("u1")) <= 600 and await client.ttl(frozen.user_state("u1")) == -1
        await clear_arm(client, online, cluster=True)
        assert [n async for n in client.scan_iter(match=online.everything)] == []
        assert len([n async for n in client.scan_iter(match=frozen.everything)]) == len(names)
    finally:
        await clear_arm(client, online, cluster=True)
        await clear_arm(client, frozen, cluster=True)
        await client.aclose()


def test_eval_stream_runs_on_the_cluster(cluster_stack: ClusterStack, tmp_path: Path) -> None:
    """``streamrec eval-stream --quick`` on the cluster stack: the worker and both arms' services on their key
    prefixes, the report of both arms well formed, and nothing of the arms left in the cluster's one database."""
    env = {**settings_env(cluster_stack.settings), "COLUMNS": "200"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    world = tmp_path / "world"
    generated = subprocess.run([*STREAMREC, "generate", "--out", str(world), "--users", "80", "--items", "300",
                                "--events", "6000", "--days", "6", "--seed", "3"], env=env, cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120, check=False)
    assert generated.returncode == 0, generated.stderr
    out = tmp_path / "report.json"
    run = subprocess.run([*STREAMREC, "eval-stream", "--data", str(world), "--artifacts", str(tmp_path / "artifacts"),
                          "--out", str(out), "--quick", "--samples", "60", "--window", "400"],
                         env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = orjson.loads(out.read_bytes())
    for arm in ("online", "frozen"):
        assert report["arms"][arm]["n"] == 60
        assert report["degraded"][arm] == 0, report["degraded_reasons"]
    assert "state at the cut copied to the frozen arm" in run.stderr and "(0 keys)" not in run.stderr

    async def leftovers() -> list[Any]:
        client = redis_client(cluster_stack.settings)
        try:
            return [name async for name in client.scan_iter(match="sr-eval-*")]
        finally:
            await client.aclose()

    assert asyncio.run(leftovers()) == []


# --- 4. streamrec demo --cluster (last: its --down stops the module's stack) ---------------------------------------


def test_demo_runs_on_the_cluster_stack(cluster_stack: ClusterStack, tmp_path: Path) -> None:
    """``streamrec demo --cluster`` end to end on the module's cluster stack (it reuses a running one, as ``stack up``
    does): the worker and server it starts run on the Redis Cluster and the three brokers, and the output is the
    single-node demo's. The client is given only the state dir and the first ports, like a user's shell."""
    base = cluster_stack.base
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_") or k == "STREAMREC_TEST_PORT_OFFSET"}
    # No bootstrap list, no credentials: the demo finds them in the state dir's credentials.env.
    env |= {"STREAMREC_STATE_DIR": str(base.state_dir), "STREAMREC_KAFKA_CONTROLLER_PORT": str(
        base.kafka_controller_port), "STREAMREC_REDIS_URL": base.redis_url, "STREAMREC_CACHE_DIR": str(base.cache_dir),
        "STREAMREC_SERVER_PORT": str(free_port()), "COLUMNS": "200"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = ["demo", "--cluster", "--data", str(tmp_path / "demo"), "--users", "60", "--items", "300", "--events",
            "4000", "--artifacts", str(tmp_path / "artifacts"), "--show-users", "1", "--worker-metrics-port", "0"]
    started = time.monotonic()
    done = subprocess.run([*STREAMREC, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    print(f"demo --cluster took {time.monotonic() - started:.0f}s")
    run_dir = StackLayout.from_settings(base).run_dir
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = done.stdout
        assert "local cluster stack" in out and "Redis Cluster" in out
        assert all(f"redis-{i}" in out for i in range(6)) and all(f"kafka-{i}" in out for i in range(3))
        assert "trained bundle" in out and "published" in out and "the worker has applied every record" in out
        assert "plays and completes" in out and "the new answer was visible" in out and "not within" not in out, \
            out[-3000:]
        records = [process.read_record(run_dir / f"demo-{name}.json") for name in ("worker", "server")]
        assert all(r is not None and process.owns(r) for r in records), "the demo must leave its apps running"
    finally:
        down = subprocess.run([*STREAMREC, "demo", "--down"], env=env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=240, check=False)
    assert down.returncode == 0, down.stderr
    assert not list(run_dir.glob("*.json")), "every pid file is removed"
