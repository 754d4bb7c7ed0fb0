"""`streamrec stack` against the real servers: a Kafka 4.x (KRaft) broker and redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from kafka_checks import assert_kafka_refuses
from pydantic import SecretStr

from foundation.kafka_io import connection_options, make_admin
from foundation.redis_io import redis_client as make_redis_client
from foundation.settings import Settings
from foundation.topics import DEAD_LETTER_RETENTION_MS, ensure_topics, topic_specs
from tools.stack import manager, probes, process
from tools.stack.layout import StackLayout

REPO_ROOT = Path(__file__).resolve().parents[2]
StackFactory = Callable[[str, int, int, int], Settings]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "stack", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def pids(settings: Settings) -> dict[str, int]:
    layout = StackLayout.from_settings(settings)
    found = {}
    for name, path in (("kafka", layout.kafka_pid_file), ("redis", layout.redis_pid_file)):
        record = process.read_record(path)
        if record is not None:
            found[name] = record.pid
    return found


# --- up / status -------------------------------------------------------------------------------


async def test_up_is_idempotent(stack: Settings) -> None:
    before = pids(stack)
    result = await manager.up(stack)
    assert result.started == ()
    assert set(result.already_running) == {"kafka", "redis"}
    assert result.created_topics == ()
    assert result.status.healthy
    assert pids(stack) == before


def test_cli_status_and_second_up(stack: Settings, stack_env: dict[str, str]) -> None:
    as_json = run_cli(stack_env, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["healthy"] is True
    assert report["kafka_version"] == stack.kafka_version
    assert {name: s["pid"] for name, s in report["services"].items()} == pids(stack)
    assert all(s["healthy"] and s["running"] for s in report["services"].values())
    assert {spec.name for spec in topic_specs(stack)} <= set(report["topics"])

    table = run_cli(stack_env, "status")
    assert table.returncode == 0, table.stderr
    assert "healthy" in table.stdout and "unhealthy" not in table.stdout

    again = run_cli(stack_env, "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 2


# --- Topics ------------------------------------------------------------------------------------


async def test_topics_have_partitions_and_configs(stack: Settings) -> None:
    specs = {spec.name: spec for spec in topic_specs(stack)}
    admin = make_admin(stack)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(list(specs))}
        partitions = {name: len(described[name]["partitions"]) for name in specs}
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in specs])
    finally:
        await admin.close()
    assert partitions == {
        stack.topic_interactions: stack.interactions_partitions,
        stack.topic_catalog: stack.catalog_partitions,
        stack.topic_item_vectors: stack.catalog_partitions,
        stack.topic_item_state: stack.catalog_partitions,
        stack.topic_dead_letters: 4,
    }
    configs = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}
        for response in responses
        for resource in response.resources
    }
    assert configs[stack.topic_catalog]["cleanup.policy"] == "compact"
    assert configs[stack.topic_item_vectors]["cleanup.policy"] == "compact"
    assert configs[stack.topic_item_state]["cleanup.policy"] == "compact"
    assert configs[stack.topic_interactions]["cleanup.policy"] == "delete"
    assert configs[stack.topic_dead_letters]["cleanup.policy"] == "delete"
    assert configs[stack.topic_dead_letters]["retention.ms"] == str(DEAD_LETTER_RETENTION_MS)


async def test_ensure_topics_is_idempotent(stack: Settings) -> None:
    assert await ensure_topics(stack) == []


async def test_ensure_topics_creates_missing_topics(stack: Settings) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = {
        "topic_interactions": f"it-interactions-{suffix}",
        "topic_catalog": f"it-catalog-{suffix}",
        "topic_item_vectors": f"it-item-vectors-{suffix}", "topic_item_state": f"it-item-state-{suffix}",
        "topic_dead_letters": f"it-dead-letters-{suffix}",
    }
    settings = stack.model_copy(update=names)
    try:
        assert sorted(await ensure_topics(settings)) == sorted(names.values())
        assert await ensure_topics(settings) == []
    finally:
        admin = make_admin(stack)
        await admin.start()
        try:
            await admin.delete_topics(list(names.values()))
        finally:
            await admin.close()


# --- Client compatibility: produce, consume in a group, commit ---------------------------------


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout_s: float = 30.0) -> list[bytes]:
    values: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=500)
            values += [message.value for messages in batches.values() for message in messages]
    return values


async def test_round_trip_with_idempotent_producer_and_consumer_group(stack: Settings) -> None:
    """Plain aiokafka clients, logged in with the stack's SASL/SCRAM credentials."""
    kafka = connection_options(stack)
    topic, group = f"it-round-trip-{uuid.uuid4().hex[:8]}", f"it-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
        producer = AIOKafkaProducer(**kafka, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for i in range(30):
                await producer.send(topic, value=f"v{i}".encode(), key=f"user-{i % 7}".encode())
            await producer.flush()
        finally:
            await producer.stop()

        def consumer() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                topic,
                **kafka,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )

        first = consumer()
        await first.start()
        try:
            values = await _consume(first, 30)
            await first.commit()
            committed = {tp.partition: await first.committed(tp) for tp in first.assignment()}
        finally:
            await first.stop()
        assert sorted(values) == sorted(f"v{i}".encode() for i in range(30))
        assert sum(committed.values()) == 30

        offsets = await admin.list_consumer_group_offsets(group)
        assert {tp.partition: meta.offset for tp, meta in offsets.items()} == committed

        # A new member of the group resumes from the committed offsets: only the new record arrives.
        second = consumer()
        await second.start()
        try:
            producer = AIOKafkaProducer(**kafka, enable_idempotence=True)
            await producer.start()
            try:
                await producer.send_and_wait(topic, value=b"after-commit", key=b"user-0")
            finally:
                await producer.stop()
            assert await _consume(second, 1) == [b"after-commit"]
            assert await second.getmany(timeout_ms=500) == {}
            tps = [TopicPartition(topic, p) for p in range(3)]
            assert sum((await second.end_offsets(tps)).values()) == 31
        finally:
            await second.stop()
    finally:
        await admin.delete_topics([topic])
        await admin.close()


# --- Redis -------------------------------------------------------------------------------------


async def test_redis_set_get(redis_client) -> None:
    assert await redis_client.set("streamrec:it:key", "value") is True
    assert await redis_client.get("streamrec:it:key") == b"value"
    assert await redis_client.incr("streamrec:it:counter") == 1


async def test_redis_client_is_flushed_per_test(redis_client) -> None:
    assert await redis_client.dbsize() == 0


# --- Credentials: the stack is authenticated by default ----------------------------------------


async def test_redis_refuses_clients_without_the_password(stack: Settings) -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, ResponseError

    anonymous = aioredis.Redis.from_url(stack.redis_url, socket_timeout=5)
    wrong_password = stack.model_copy(update={"redis_password": SecretStr("not-the-password")})
    wrong = make_redis_client(wrong_password, socket_timeout=5)
    try:
        with pytest.raises(AuthenticationError):  # NOAUTH: every command needs the password
            await anonymous.set("streamrec:it:anonymous", "x")
        with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)invalid|WRONGPASS"):
            await wrong.ping()
    finally:
        await anonymous.aclose()
        await wrong.aclose()
    right = make_redis_client(stack)
    try:
        assert await right.ping() is True
        assert await right.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert int((await right.config_get("maxmemory"))["maxmemory"]) > 0
    finally:
        await right.aclose()


async def test_kafka_refuses_clients_without_the_scram_login(stack: Settings) -> None:
    plaintext = stack.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    wrong = stack.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    for settings in (plaintext, wrong):
        await assert_kafka_refuses(settings)
    admin = make_admin(stack)
    try:
        await admin.start()
        assert stack.topic_interactions in await admin.list_topics()
    finally:
        await admin.close()


def test_credentials_are_private_and_never_printed(stack: Settings, stack_env: dict[str, str]) -> None:
    layout = StackLayout.from_settings(stack)
    assert layout.credentials_file.stat().st_mode & 0o777 == 0o600
    assert layout.kafka_config.stat().st_mode & 0o777 == layout.redis_config.stat().st_mode & 0o777 == 0o600
    secrets = [stack.redis_password.get_secret_value(), stack.kafka_sasl_password.get_secret_value()]
    assert all(len(secret) >= 32 for secret in secrets)
    # Every process of this state dir finds them without anything exported.
    found = Settings(state_dir=stack.state_dir, _env_file=(layout.credentials_file,))
    assert found.redis_password == stack.redis_password and found.kafka_security_protocol == "SASL_PLAINTEXT"
    shown = [run_cli(stack_env, "status", "--json"), run_cli(stack_env, "status"), run_cli(stack_env, "up")]
    assert all(result.returncode == 0 for result in shown), [result.stderr for result in shown]
    assert json.loads(shown[0].stdout)["credentials_file"] == str(layout.credentials_file)
    logs = [path.read_text(errors="replace") for path in layout.logs_dir.glob("*") if path.is_file()]
    for text in [*(r.stdout + r.stderr for r in shown), *logs, repr(stack), stack.model_dump_json()]:
        assert not any(secret in text for secret in secrets)


# --- down ---------------------------------------------------------------------------------------


_CREDENTIAL_VARIABLES = ("STREAMREC_REDIS_PASSWORD", "STREAMREC_KAFKA_SASL", "STREAMREC_KAFKA_SECURITY_PROTOCOL")


def _alive(pid: int) -> bool:
    info = process.proc_info(pid)
    return info is not None and info.alive


def _cmdlines_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = process.proc_info(int(entry.name))
            if info is not None and info.alive and text in " ".join(info.cmdline):
                found.append(f"{entry.name}: {' '.join(info.cmdline)[:200]}")
    return found


def test_down_stops_exactly_the_started_processes(
    stack: Settings, stack_factory: StackFactory, env_for: Callable[[Settings], dict[str, str]]
) -> None:
    """A second stack on other ports: `down` stops its two processes and nothing else."""
    session_pids = pids(stack)
    decoy = subprocess.Popen(["sleep", "600"])
    try:
        # Ports 1000 above the session's, so that sessions with other STREAMREC_TEST_PORT_OFFSETs stay clear.
        other = stack_factory("down", 20092, 20093, 17379)
        started = pids(other)
        assert set(started) == {"kafka", "redis"}
        assert all(_alive(pid) for pid in started.values())
        assert not set(started.values()) & set(session_pids.values())

        result = run_cli(env_for(other), "down")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("stopped") == 2

        assert not any(_alive(pid) for pid in started.values())
        layout = StackLayout.from_settings(other)
        assert not layout.kafka_pid_file.exists() and not layout.redis_pid_file.exists()
        assert _cmdlines_mentioning(str(layout.root)) == []
        for port in (other.kafka_port, other.kafka_controller_port, other.redis_port):
            assert not probes.port_open("127.0.0.1", port)

        status = run_cli(env_for(other), "status", "--json")
        assert status.returncode == 1
        assert json.loads(status.stdout)["healthy"] is False

        # Nothing else was touched: the session's stack and an unrelated process still run.
        assert decoy.poll() is None
        assert pids(stack) == session_pids
        assert all(_alive(pid) for pid in session_pids.values())

        # A later `up` reuses the credentials (the broker's storage holds the SCRAM user), and a process given
        # only the state dir and the ports finds them in credentials.env: nothing secret is exported.
        before = layout.credentials_file.read_bytes()
        bare = {k: v for k, v in env_for(other).items() if not k.startswith(_CREDENTIAL_VARIABLES)}
        restarted = run_cli(bare, "up")
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.count("started") == 2
        assert layout.credentials_file.read_bytes() == before
        status = run_cli(bare, "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["healthy"] is True, status.stdout
    finally:
        decoy.kill()
        decoy.wait()
