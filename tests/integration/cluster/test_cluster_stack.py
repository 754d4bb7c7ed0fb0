"""The local cluster stack (issue 12 item 1, and the Kafka/Redis failover half of item 5).

One ``stack up --brokers 3 --redis-cluster`` per module (conftest.py), then, in this order:

1. it came up with one call: topics with replication factor 3 and ``min.insync.replicas=2``, a Redis Cluster that
   reports ``cluster_state:ok`` with 3 masters and 3 replicas, clients without credentials refused, and the
   clients of the state dir find the whole topology in credentials.env;
2. a Kafka broker SIGKILLed mid-stream: an idempotent producer (acks=all) keeps sending, a consumer keeps reading,
   every acknowledged record is read exactly once (before the broker comes back, and again after);
   2b. the same under a real worker (on the session's single redis-server): every title's play counter equals the
   topic's log applied once, and every acknowledged event is in that log;
3. a Redis master SIGKILLed: its replica is promoted within seconds, and a cluster client
   (``foundation.redis_io.redis_client``) keeps writing and reading keys of all slots; keys written (and
   replicated: ``WAIT``) before the kill are still there;
4. ``stack down`` stops every process.
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
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from cluster_support import BROKERS, KAFKA_CONTROLLER_PORT, REDIS_PORT, REPO_ROOT, ClusterStack
from kafka_checks import assert_kafka_refuses
from redis.exceptions import AuthenticationError

from foundation.kafka_io import make_admin, make_producer, start_groupless, stop_quietly
from foundation.redis_io import redis_client
from foundation.settings import Settings
from foundation.topics import topic_specs
from tools.stack import manager, probes, process
from tools.stack.layout import StackLayout

REDIS_NODES = 6
CLI_TIMEOUT_S = 120


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamrec.cli", "stack", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def _bare_env(cluster: ClusterStack) -> dict[str, str]:
    """A client given only the state dir and the first ports: credentials and topology come from credentials.env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_") or k == "STREAMREC_TEST_PORT_OFFSET"}
    return env | {
        "STREAMREC_STATE_DIR": str(cluster.base.state_dir),
        "STREAMREC_KAFKA_CONTROLLER_PORT": str(KAFKA_CONTROLLER_PORT),
        "STREAMREC_REDIS_URL": cluster.base.redis_url,
        "STREAMREC_CACHE_DIR": str(cluster.base.cache_dir),
    }


def _node_client(settings: Settings, port: int, **options: Any) -> aioredis.Redis:
    return redis_client(settings, probes.node_url(settings, "127.0.0.1", port), cluster=False, **options)


async def _cluster_nodes(settings: Settings, port: int) -> list[dict[str, str]]:
    """``CLUSTER NODES`` of the node on ``port``: id, address, flags and master id of every node it knows."""
    client = _node_client(settings, port, socket_timeout=5)
    try:
        raw = await client.execute_command("CLUSTER", "NODES")
    finally:
        await client.aclose()
    if isinstance(raw, dict):  # redis-py parsed it: {address: {node_id, flags, master_id, ...}}
        return [{"id": v["node_id"], "address": k.split("@")[0], "flags": v["flags"],
                 "master": v.get("master_id", "-")} for k, v in raw.items()]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return [{"id": r[0], "address": r[1].split("@")[0], "flags": r[2], "master": r[3]} for r in rows]


# --- 1. One call brings up a replicated, protected cluster ------------------------------------------------


async def test_cluster_comes_up_replicated_and_protected(cluster_stack: ClusterStack) -> None:
    settings = cluster_stack.settings
    names = [*(f"kafka-{i}" for i in range(BROKERS)), *(f"redis-{i}" for i in range(REDIS_NODES))]
    assert sorted(cluster_stack.started) == sorted(names)
    print(f"cluster stack up in {cluster_stack.seconds:.1f}s")
    assert settings.kafka_bootstrap.count(",") == BROKERS - 1 and settings.redis_cluster

    # Topics: replication factor 3, two replicas in sync per acknowledged write.
    specs = {spec.name: spec for spec in topic_specs(settings)}
    admin = make_admin(settings)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(list(specs))}
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in specs])
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert len(cluster["brokers"]) == BROKERS
    for name, spec in specs.items():
        partitions = described[name]["partitions"]
        assert len(partitions) == spec.partitions
        assert all(len(p["replicas"]) == 3 and len(p["isr"]) == 3 for p in partitions), name
    configs = {r[3]: {e[0]: e[1] for e in r[4]} for response in responses for r in response.resources}
    assert all(configs[name]["min.insync.replicas"] == "2" for name in specs)

    # Redis: every node sees the cluster ok, 3 masters with one replica each.
    client = _node_client(settings, REDIS_PORT)
    try:
        info = await probes.cluster_info(client)
    finally:
        await client.aclose()
    assert (info["cluster_state"], info["cluster_size"], info["cluster_known_nodes"]) == ("ok", "3", "6")
    nodes = await _cluster_nodes(settings, REDIS_PORT)
    masters = {n["id"] for n in nodes if "master" in n["flags"]}
    replicas = [n for n in nodes if "slave" in n["flags"]]
    assert len(masters) == 3 and len(replicas) == 3
    assert sorted(n["master"] for n in replicas) == sorted(masters)  # one replica per master

    # Clients without credentials are refused: every Redis node, and the brokers.
    for i in range(REDIS_NODES):
        anonymous = aioredis.Redis(host="127.0.0.1", port=REDIS_PORT + i, socket_timeout=5)
        try:
            with pytest.raises(AuthenticationError):
                await anonymous.set("streamrec:it:anonymous", "x")
        finally:
            await anonymous.aclose()
    await assert_kafka_refuses(settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"}))

    # A process given only the state dir and first ports finds the whole topology; `status --json` lists it all.
    env = _bare_env(cluster_stack)
    read = Settings(state_dir=cluster_stack.base.state_dir, redis_url=cluster_stack.base.redis_url)
    assert read.kafka_bootstrap == settings.kafka_bootstrap and read.redis_cluster
    assert read.kafka_replication_factor == 3
    shown = _cli(env, "status", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    report = json.loads(shown.stdout)
    assert report["topology"] == {"brokers": BROKERS, "redis_cluster": True}
    assert list(report["services"]) == names
    assert all(s["healthy"] and s["running"] and s["pid"] for s in report["services"].values())
    assert "cluster_state:ok" in report["services"]["redis-3"]["detail"]
    assert set(specs) <= set(report["topics"])


# --- 2. A broker SIGKILLed mid-stream ------------------------------------------------------------------------

RECORDS = 3000
KILL_AT = 1000
PARTITIONS = 6
CHUNK = 100


async def _leaders(settings: Settings, topic: str) -> dict[int, int]:
    admin = make_admin(settings)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for p in described["partitions"]}


async def _read_all(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[int]:
    """Every record of ``topic`` from the beginning to its end offsets, with a fresh consumer."""
    consumer, ends = await start_groupless(settings, topic, auto_offset_reset="earliest")
    seen: list[int] = []
    try:
        async with asyncio.timeout(timeout_s):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=500)
                seen += [int(record.value) for records in batch.values() for record in records]
    finally:
        await stop_quietly(consumer)
    return seen


async def test_kafka_broker_killed_mid_stream_loses_no_acknowledged_record(cluster_stack: ClusterStack) -> None:
    settings = cluster_stack.settings
    topic = f"cluster-broker-kill-{uuid.uuid4().hex[:8]}"
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 3, topic_configs={"min.insync.replicas": "2"})])
    finally:
        await admin.close()
    for _ in range(100):  # leaders elected
        leaders = await _leaders(settings, topic)
        if len(leaders) == PARTITIONS and all(leader >= 0 for leader in leaders.values()):
            break
        await asyncio.sleep(0.1)

    read_live: list[int] = []
    read_set: set[int] = set()
    wanted: set[int] = set()  # filled once every send is answered
    caught_up = asyncio.Event()
    consumer, _ = await start_groupless(settings, topic, auto_offset_reset="earliest")

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            values = [int(record.value) for records in batch.values() for record in records]
            read_live.extend(values)
            read_set.update(values)
            if wanted and wanted <= read_set:
                caught_up.set()

    reader = asyncio.create_task(consume())
    producer = make_producer(settings, request_timeout_ms=40_000)
    await producer.start()
    acked: set[int] = set()
    failed: set[int] = set()
    layout = StackLayout.from_settings(cluster_stack.base)
    victim_index = -1
    killed_at = 0.0
    try:
        for start in range(0, RECORDS, CHUNK):
            if start == KILL_AT:
                # The leader of partition 0 (also holding other partitions' replicas) dies without a word.
                victim_index = (await _leaders(settings, topic))[0] - 1
                record = process.read_record(layout.kafka_node(victim_index).pid_file)
                assert record is not None and process.owns(record)
                os.kill(record.pid, signal.SIGKILL)
                killed_at = time.monotonic()
            ids = range(start, min(start + CHUNK, RECORDS))
            futures = [await producer.send(topic, value=str(n).encode(), key=str(n % 97).encode()) for n in ids]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            for n, outcome in zip(ids, outcomes, strict=True):
                (failed if isinstance(outcome, BaseException) else acked).add(n)
        sent_s = time.monotonic() - killed_at
        # The consumer keeps reading through the failover: every acknowledged record, broker still down.
        wanted.update(acked)
        async with asyncio.timeout(60):
            await caught_up.wait()
        caught_up_s = time.monotonic() - killed_at
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await stop_quietly(consumer)
        await stop_quietly(producer)
    print(f"broker kafka-{victim_index} killed: {len(acked)} acknowledged, {len(failed)} failed; "
          f"all sent {sent_s:.1f}s and all read {caught_up_s:.1f}s after the kill")
    assert len(acked) >= RECORDS - CHUNK, f"{len(failed)} sends failed: the cluster did not fail over"
    assert not set(read_live) - acked - failed  # nothing read that was never sent
    counts = Counter(read_live)
    assert all(counts[n] == 1 for n in acked)  # exactly once (idempotent producer, one consumer)

    # The broker comes back (a plain `up` acts on the remembered topology and starts only what is down).
    again = await manager.up(cluster_stack.base)
    assert again.started == (f"kafka-{victim_index}",)
    assert again.status.healthy
    log = Counter(await _read_all(settings, topic))
    assert all(log[n] == 1 for n in acked), "an acknowledged record is missing or duplicated"
    assert set(log) <= acked | failed


# --- 2b. A broker SIGKILLed under a real worker ------------------------------------------------------------

WORKER_USERS = 12
WORKER_ITEMS = 10
WORKER_EVENTS = 600
WORKER_KILL_AT = 200


async def test_a_worker_on_the_kafka_cluster_applies_exactly_once_through_a_broker_kill(
    cluster_stack: ClusterStack, stack: Settings, redis_client: aioredis.Redis
) -> None:
    """Kills: the broker leading partition 0 of the interactions topic (SIGKILL), mid-stream, under a real worker
    (in-process, on the session's single redis-server: a Kafka cluster before Redis Cluster). Compares: each
    title's play counter in Redis with the plays in the topic (read back after the broker returns), and the
    acknowledged sends with that log: nothing acknowledged lost, nothing applied twice."""
    from test_worker_dead_letters import T0, _play, _upsert, _wait_for, per_test_settings, running_worker

    from foundation.topics import ensure_topics_retrying
    from online_state.keys import DEFAULT_KEYS

    kafka = cluster_stack.settings
    settings = per_test_settings(stack, "kcluster").model_copy(update={
        name: getattr(kafka, name) for name in (
            "kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
            "kafka_sasl_password", "kafka_ssl_cafile", "kafka_replication_factor")
    })
    assert settings.kafka_replication_factor == 3
    await ensure_topics_retrying(settings)
    layout = StackLayout.from_settings(cluster_stack.base)
    producer = make_producer(settings, request_timeout_ms=40_000)
    await producer.start()
    acked: set[str] = set()
    victim = -1
    try:
        for item in range(WORKER_ITEMS):
            await producer.send_and_wait(settings.topic_catalog, _upsert(f"i{item}", T0), key=f"i{item}".encode())
        async with running_worker(settings) as worker:
            for start in range(0, WORKER_EVENTS, 50):
                if start == WORKER_KILL_AT:
                    victim = (await _leaders(settings, settings.topic_interactions))[0] - 1
                    record = process.read_record(layout.kafka_node(victim).pid_file)
                    assert record is not None and process.owns(record)
                    os.kill(record.pid, signal.SIGKILL)
                batch = []
                for n in range(start, start + 50):
                    user, item = f"u{n % WORKER_USERS}", f"i{n % WORKER_ITEMS}"
                    batch.append((f"e{T0 + n}", await producer.send(
                        settings.topic_interactions, _play(user, item, T0 + n), key=user.encode())))
                outcomes = await asyncio.gather(*(fut for _, fut in batch), return_exceptions=True)
                acked.update(eid for (eid, _), out in zip(batch, outcomes, strict=True)
                             if not isinstance(out, BaseException))

            async def applied_all() -> bool:
                return worker.processed + worker.duplicates >= len(acked)

            await _wait_for(applied_all, 90)  # the worker goes on with two brokers
    finally:
        await stop_quietly(producer)
        if victim >= 0:
            again = await manager.up(cluster_stack.base)  # the broker returns for the tests after this one
            assert again.started == (f"kafka-{victim}",)
    assert len(acked) >= WORKER_EVENTS - 50, "the cluster did not fail over"
    log: list[dict[str, Any]] = []
    consumer, ends = await start_groupless(settings, settings.topic_interactions, auto_offset_reset="earliest")
    try:
        async with asyncio.timeout(60):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                got = await consumer.getmany(timeout_ms=500)
                log += [json.loads(r.value) for records in got.values() for r in records]
    finally:
        await stop_quietly(consumer)
    in_log = Counter(event["event_id"] for event in log)
    assert acked <= set(in_log), "an acknowledged event is not in the log"
    plays = Counter(event["item_id"] for event in {e["event_id"]: e for e in log}.values())
    stored = {f"i{i}": int(await redis_client.hget(DEFAULT_KEYS.item_state(f"i{i}"), "play") or 0)
              for i in range(WORKER_ITEMS)}
    assert stored == {f"i{i}": plays[f"i{i}"] for i in range(WORKER_ITEMS)}  # each event applied exactly once
    print(f"worker through the kill of kafka-{victim}: {len(acked)} of {WORKER_EVENTS} acknowledged, "
          f"{sum(stored.values())} applied, {sum(in_log.values()) - len(in_log)} duplicate records in the log")


# --- 3. A Redis master SIGKILLed -----------------------------------------------------------------------------

KEYS = 600
PROMOTION_LIMIT_S = 15.0


async def test_redis_master_killed_replica_takes_over(cluster_stack: ClusterStack) -> None:
    settings = cluster_stack.settings
    client = redis_client(settings)  # a RedisCluster: settings.redis_cluster
    assert type(client).__name__ == "RedisCluster"
    prefix = f"it:failover:{uuid.uuid4().hex[:6]}"
    keys = [f"{prefix}:{n}" for n in range(KEYS)]
    try:
        # Write through each key's master, then WAIT (same connection) until its replica has them.
        await client.initialize()  # the slot map: which master owns which key
        by_port: dict[int, list[str]] = {}
        for key in keys:
            by_port.setdefault(int(client.get_node_from_key(key).port), []).append(key)
        assert len(by_port) == 3  # the keys span every master's slots
        for port, owned in by_port.items():
            node = _node_client(settings, port)
            try:
                pipe = node.pipeline(transaction=False)
                for key in owned:
                    pipe.set(key, key)
                pipe.execute_command("WAIT", 1, 5000)
                replicated = (await pipe.execute())[-1]
            finally:
                await node.aclose()
            assert replicated >= 1, f"the writes to {port} reached no replica"

        victim_port = next(port for port in sorted(by_port) if port != REDIS_PORT)
        layout = StackLayout.from_settings(cluster_stack.base)
        victim = layout.redis_node(victim_port - REDIS_PORT)
        record = process.read_record(victim.pid_file)
        assert record is not None and process.owns(record)
        nodes = await _cluster_nodes(settings, REDIS_PORT)
        victim_id = next(n["id"] for n in nodes if n["address"].endswith(f":{victim_port}"))
        replica = next(n for n in nodes if n["master"] == victim_id)

        os.kill(record.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # The client keeps writing and reading keys of every slot (its own retries ride through the failover).
        victim_keys = by_port[victim_port]
        written = 0
        promoted_s = None
        async with asyncio.timeout(60):
            while promoted_s is None or written < 50:
                key = f"{prefix}:live:{written}"
                await client.set(key, written)
                assert int(await client.get(key)) == written
                assert await client.get(victim_keys[written % len(victim_keys)]) is not None
                written += 1
                if promoted_s is None:
                    seen = await _cluster_nodes(settings, REDIS_PORT)
                    now = next(n for n in seen if n["id"] == replica["id"])
                    if "master" in now["flags"]:
                        promoted_s = time.monotonic() - killed_at
        print(f"redis master :{victim_port} killed: replica :{replica['address']} promoted after "
              f"{promoted_s:.1f}s, {written} writes+reads meanwhile")
        assert promoted_s < PROMOTION_LIMIT_S
        # Every key written (and replicated) before the kill is still there, with its value.
        values = [await client.get(key) for key in keys]
        assert values == [key.encode() for key in keys]
    finally:
        await client.aclose()

    # The killed node comes back (as a replica of its old replica) and the cluster is whole again.
    again = await manager.up(cluster_stack.base)
    assert again.started == (victim.name,)
    assert again.status.healthy


# --- 4. down stops every process -----------------------------------------------------------------------------


def test_down_stops_every_process(cluster_stack: ClusterStack) -> None:
    layout = StackLayout.from_settings(cluster_stack.base)
    status = asyncio.run(manager.status(cluster_stack.base))
    pids = {s.name: s.pid for s in status.services}
    assert all(pids.values()) and len(pids) == BROKERS + REDIS_NODES
    began = time.monotonic()
    result = _cli(_bare_env(cluster_stack), "down")
    print(f"stack down of {len(pids)} processes took {time.monotonic() - began:.1f}s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("stopped") + result.stdout.count("killed") == len(pids), result.stdout
    alive = [pid for pid in pids.values() if pid and (info := process.proc_info(pid)) is not None and info.alive]
    assert alive == []
    assert not any(layout.run_dir.glob("*.json"))
    ports = [port for s in status.services for port in [int(s.address.rpartition(":")[2])]]
    assert not any(probes.port_open("127.0.0.1", port) for port in ports)
    after = _cli(_bare_env(cluster_stack), "status", "--json")
    assert after.returncode == 1 and json.loads(after.stdout)["healthy"] is False
