"""Pure logic of the local stack: generated configs, jar cache marker, pid files, verified stop."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from foundation import kafka_io, redis_io
from foundation.child_env import settings_env
from foundation.settings import Settings
from foundation.topics import DEAD_LETTER_RETENTION_MS, topic_specs
from tools.stack import StackError, kafka, manager, process
from tools.stack import credentials as stack_credentials
from tools.stack import redis as redis_service
from tools.stack.credentials import StackCredentials
from tools.stack.layout import StackLayout
from tools.stack.process import ProcessRecord, StopOutcome
from tools.stack.tls import TlsFiles


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap="127.0.0.1:29092",
        kafka_controller_port=29093,
        redis_url="redis://127.0.0.1:26379/0",
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
    )


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


# --- Layout ------------------------------------------------------------------------------------


def test_layout_is_absolute_and_under_the_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    layout = StackLayout.from_settings(Settings(state_dir=Path(".streamrec")))
    assert layout.root == tmp_path / ".streamrec"
    for path in (layout.kafka_config, layout.kafka_data, layout.redis_data, layout.kafka_pid_file, layout.redis_log):
        assert path.is_absolute() and path.is_relative_to(layout.root)


# --- Kafka -------------------------------------------------------------------------------------


def test_server_properties(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    props = parse_properties(kafka.render_server_properties(settings, layout))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:29093"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert Path(props["log.dirs"]) == layout.kafka_data
    assert Path(props["log.dirs"]).is_relative_to(settings.state_dir.resolve())
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
        "default.replication.factor",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


def test_properties_values_are_escaped(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "back\\slash")
    props = kafka.render_server_properties(settings, StackLayout.from_settings(settings))
    assert "back\\\\slash" in props


def test_log4j2_config_writes_to_the_state_dir(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    props = parse_properties(kafka.render_log4j2_properties(layout))
    assert Path(props["appender.file.fileName"]) == layout.kafka_server_log
    assert props["rootLogger.appenderRef.file.ref"] == props["appender.file.name"]


def test_broker_command(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    command = kafka.broker_command("/usr/bin/java", Path("/cache/kafka-4.1.1/libs"), layout)
    assert command[0] == "/usr/bin/java"
    assert "-Xmx512m" in command
    assert command[command.index("-cp") + 1] == "/cache/kafka-4.1.1/libs/*"
    assert command[-2:] == [kafka.MAIN_CLASS, str(layout.kafka_config)]
    assert f"-Dlog4j2.configurationFile={layout.kafka_log4j_config}" in command


def test_cluster_id_is_a_kafka_uuid() -> None:
    cluster_id = kafka.new_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert kafka.new_cluster_id() != cluster_id


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first draw encodes to an id starting with "-" (0xf8 -> "-" in URL-safe base64);
    # kafka-storage would read it as an option, so it must be redrawn.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    cluster_id = kafka.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert base64.urlsafe_b64decode(cluster_id + "==") == b"\x01" * 16


def test_jar_cache_counts_only_after_the_marker(settings: Settings) -> None:
    cache = kafka.jar_cache_dir(settings)
    assert cache == settings.cache_dir / "kafka-4.1.1"
    libs = kafka.libs_dir(cache)
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-4.1.1.jar").write_bytes(b"")
    assert not kafka.jars_complete(cache, "4.1.1")  # a half download
    (cache / kafka.COMPLETE_MARKER).write_text("done\n")
    assert kafka.jars_complete(cache, "4.1.1")
    assert kafka.ensure_jars(settings) == libs  # cached: no Maven run


def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text("#!/bin/sh\n" + script)
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_ensure_jars_redoes_a_half_download(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mvn(
        tmp_path,
        monkeypatch,
        'for a in "$@"; do case "$a" in\n'
        '  -DoutputDirectory=*) d="${a#*=}";;\n'
        '  -Dkafka.version=*) v="${a#*=}";;\n'
        "esac; done\n"
        'mkdir -p "$d" && touch "$d/kafka_2.13-$v.jar" "$d/kafka-clients-$v.jar"\n',
    )
    cache = kafka.jar_cache_dir(settings)
    kafka.libs_dir(cache).mkdir(parents=True)
    (kafka.libs_dir(cache) / "from-an-interrupted-run.jar").touch()  # no marker: incomplete
    libs = kafka.ensure_jars(settings)
    assert libs == kafka.libs_dir(cache)
    assert sorted(p.name for p in libs.iterdir()) == ["kafka-clients-4.1.1.jar", "kafka_2.13-4.1.1.jar"]
    assert kafka.jars_complete(cache, "4.1.1")
    assert [p.name for p in cache.parent.iterdir()] == ["kafka-4.1.1"]  # no temporary folder left


def test_failed_download_leaves_nothing_behind(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mvn(tmp_path, monkeypatch, 'echo "[ERROR] Could not resolve dependencies"; exit 1\n')
    with pytest.raises(StackError, match="Could not resolve dependencies"):
        kafka.ensure_jars(settings)
    assert list(settings.cache_dir.iterdir()) == []


def test_bad_kafka_version_is_refused(tmp_path: Path) -> None:
    settings = Settings(kafka_version="4.1.1; rm -rf /", cache_dir=tmp_path)
    with pytest.raises(StackError, match="does not look like a Kafka release"):
        kafka.ensure_jars(settings)


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("no java here", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert kafka.parse_java_major(output) == major


def test_kafka_4_needs_java_17() -> None:
    assert kafka.required_java("4.1.1") == 17
    assert kafka.required_java("3.9.1") == 11


# --- Redis -------------------------------------------------------------------------------------


def test_redis_conf(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    lines = redis_service.render_redis_conf(settings, layout).splitlines()
    assert "bind 127.0.0.1" in lines
    assert "port 26379" in lines
    assert "daemonize no" in lines
    assert "appendonly yes" in lines
    assert f'dir "{layout.redis_data}"' in lines


def test_redis_conf_quotes_paths(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / 'with space "and quote"')
    text = redis_service.render_redis_conf(settings, StackLayout.from_settings(settings))
    assert 'with space \\"and quote\\"/redis/data"' in text


def test_missing_redis_server_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_service.shutil, "which", lambda _name: None)
    with pytest.raises(StackError, match="apt-get install -y redis-server"):
        redis_service.find_redis_server()


# --- Topics ------------------------------------------------------------------------------------


def test_topic_specs(settings: Settings) -> None:
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert specs["interactions"].partitions == 8
    assert specs["interactions"].configs == {}
    assert specs["catalog"].partitions == specs["item-vectors"].partitions == 4
    assert specs["catalog"].configs["cleanup.policy"] == "compact"
    assert specs["item-vectors"].configs["cleanup.policy"] == "compact"
    assert specs["dead-letters"].partitions == 4
    assert specs["dead-letters"].configs["retention.ms"] == str(DEAD_LETTER_RETENTION_MS)
    assert DEAD_LETTER_RETENTION_MS == 604_800_000
    assert all(spec.replication_factor == 1 for spec in specs.values())


# --- Pid files and stop-by-pid -----------------------------------------------------------------


def test_pid_file_round_trip(tmp_path: Path) -> None:
    record = ProcessRecord(
        name="kafka", pid=123, start_ticks=456, marker="m", port=9092, log_file="/x.log", argv=("java", "-cp")
    )
    path = tmp_path / "run" / "kafka.json"
    process.write_record(path, record)
    assert process.read_record(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["kafka.json"]  # no temporary file left


def test_missing_and_corrupt_pid_files(tmp_path: Path) -> None:
    assert process.read_record(tmp_path / "absent.json") is None
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    assert process.read_record(corrupt) is None
    assert not corrupt.exists()


def test_proc_info_of_this_process() -> None:
    info = process.proc_info(os.getpid())
    assert info is not None and info.alive and info.start_ticks > 0
    assert process.proc_info(2**22 + 7) is None


@pytest.fixture
def sleeper(tmp_path: Path):
    record = process.spawn_detached(
        ["sleep", "300"], name="sleeper", marker="sleep", port=0, log_file=tmp_path / "sleep.log", cwd=tmp_path
    )
    yield record
    if process.owns(record):
        process.stop(record, timeout_s=5)


def test_spawned_process_is_detached_and_ours(sleeper: ProcessRecord) -> None:
    assert process.owns(sleeper)
    assert os.getsid(sleeper.pid) == sleeper.pid  # its own session: outlives the CLI, no terminal signals
    assert process.proc_info(sleeper.pid).cmdline == ("sleep", "300")


def test_stop_refuses_a_pid_that_is_not_ours(sleeper: ProcessRecord) -> None:
    reused = replace(sleeper, start_ticks=sleeper.start_ticks - 1)
    other_program = replace(sleeper, marker="redis-server")
    for record in (reused, other_program):
        assert not process.owns(record)
        assert process.stop(record, timeout_s=1) is StopOutcome.STALE
    assert process.owns(sleeper)


def test_stop_terminates_our_process(sleeper: ProcessRecord, tmp_path: Path) -> None:
    path = tmp_path / "run" / "sleeper.json"
    process.write_record(path, sleeper)
    assert process.stop_pid_file(path, timeout_s=5) is StopOutcome.STOPPED
    assert not process.owns(sleeper)
    assert not path.exists()
    assert process.stop_pid_file(path) is StopOutcome.NOT_RUNNING


def test_stop_falls_back_to_sigkill(tmp_path: Path) -> None:
    ready = tmp_path / "trapped"
    record = process.spawn_detached(
        ["sh", "-c", f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done"],
        name="stubborn",
        marker="trap",
        port=0,
        log_file=tmp_path / "stubborn.log",
        cwd=tmp_path,
    )
    # SIGTERM sent before the shell has installed its trap would simply end it: wait for the trap first.
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists(), "the stubborn shell never started"
    assert process.stop(record, timeout_s=0.5) is StopOutcome.KILLED
    assert not process.owns(record)


def test_spawn_of_a_missing_program_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="could not start nothing"):
        process.spawn_detached(
            ["/nonexistent/program"], name="nothing", marker="x", port=0, log_file=tmp_path / "x.log", cwd=tmp_path
        )


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert process.tail(path, 3) == "line 97\nline 98\nline 99"
    assert process.tail(tmp_path / "absent") == ""


# --- down / status without servers -------------------------------------------------------------


def test_down_discards_pid_files_of_other_processes(settings: Settings) -> None:
    """A pid now used by another process (or another program) is never signalled."""
    decoy = subprocess.Popen(["sleep", "300"])
    try:
        info = process.proc_info(decoy.pid)
        assert info is not None
        layout = StackLayout.from_settings(settings)
        common = {"pid": decoy.pid, "port": 1, "log_file": "x"}
        # Same pid but another start time: the pid was reused after our process exited.
        process.write_record(
            layout.redis_pid_file,
            ProcessRecord(name="redis", start_ticks=info.start_ticks - 1, marker="sleep", **common),
        )
        # Same pid and start time, but not the program we started.
        process.write_record(
            layout.kafka_pid_file,
            ProcessRecord(name="kafka", start_ticks=info.start_ticks, marker=str(layout.kafka_config), **common),
        )
        result = asyncio.run(manager.down(settings))
        assert {item.name: item.outcome for item in result.stopped} == {
            "kafka": StopOutcome.STALE,
            "redis": StopOutcome.STALE,
        }
        assert decoy.poll() is None
        assert not layout.redis_pid_file.exists() and not layout.kafka_pid_file.exists()
    finally:
        decoy.kill()
        decoy.wait()


def test_status_without_a_stack(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    process.write_record(
        layout.redis_pid_file,
        ProcessRecord(name="redis", pid=2**22 + 1, start_ticks=1, marker="x", port=26379, log_file="x"),
    )
    current = asyncio.run(manager.status(settings))
    assert not current.healthy
    assert current.service("kafka").detail.startswith("not started")
    assert "stale pid file" in current.service("redis").detail
    report = current.to_dict()
    assert report["healthy"] is False
    assert set(report["services"]) == {"kafka", "redis"}
    assert report["services"]["kafka"]["address"] == "127.0.0.1:29092"
    assert report["topics"] == []


# --- Credentials and secure transports (issue 11) ----------------------------------------------


def _credentials() -> StackCredentials:
    return StackCredentials(redis_password="r" * 48, kafka_username="streamrec", kafka_password="k" * 48)


def test_authenticated_server_properties(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    props = parse_properties(kafka.render_server_properties(settings, layout, _credentials()))
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:29092"
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    jaas = props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert 'username="streamrec"' in jaas and f'password="{"k" * 48}"' in jaas and jaas.endswith(";")
    assert "PLAINTEXT://" not in props["listeners"].replace("SASL_PLAINTEXT://", "")


def test_tls_server_properties(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    tls = TlsFiles.of(layout)
    props = parse_properties(kafka.render_server_properties(settings, layout, _credentials(), tls))
    assert props["listeners"].startswith("SASL_SSL://127.0.0.1:29092,")
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert Path(props["ssl.keystore.location"]) == tls.server_pem
    assert "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config" in props


def test_authenticated_redis_conf(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    conf = redis_service.render_redis_conf(settings.model_copy(update={"redis_maxmemory": "256mb"}), layout,
                                           _credentials())
    lines = conf.splitlines()
    assert f'requirepass "{"r" * 48}"' in lines
    assert "maxmemory 256mb" in lines and "maxmemory-policy noeviction" in lines
    plain = redis_service.render_redis_conf(settings, layout).splitlines()
    assert not any(line.startswith("requirepass") for line in plain)
    assert "maxmemory 1gb" in plain and "maxmemory-policy noeviction" in plain  # bounded even without a password


def test_configs_holding_secrets_are_private(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    kafka.write_configs(settings, layout, _credentials())
    redis_service.write_config(settings, layout, _credentials())
    for path in (layout.kafka_config, layout.redis_config):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_credentials_are_made_once_private_and_reused(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    made = stack_credentials.ensure(settings, layout)
    assert layout.credentials_file.stat().st_mode & 0o777 == 0o600
    assert len(made.redis_password) >= 32 and len(made.kafka_password) >= 32
    assert made.redis_password != made.kafka_password
    assert stack_credentials.ensure(settings, layout) == made  # a later `up` reuses them
    assert made.redis_password not in repr(made) and made.kafka_password not in repr(made)
    # Every Settings() of this state dir reads them; real environment variables still win.
    read = Settings(state_dir=settings.state_dir)
    assert read.redis_password.get_secret_value() == made.redis_password
    assert read.kafka_security_protocol == "SASL_PLAINTEXT"
    assert (read.kafka_sasl_username, read.kafka_sasl_password.get_secret_value()) == (
        "streamrec", made.kafka_password)


def test_credentials_file_is_found_from_the_environment_and_loses_to_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_credentials.ensure(settings, StackLayout.from_settings(settings))
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(settings.state_dir))
    assert Settings().kafka_security_protocol == "SASL_PLAINTEXT"
    monkeypatch.setenv("STREAMREC_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("STREAMREC_REDIS_PASSWORD", "from-the-environment")
    explicit = Settings()
    assert explicit.kafka_security_protocol == "PLAINTEXT"
    assert explicit.redis_password.get_secret_value() == "from-the-environment"
    assert Settings(_env_file=None).redis_password.get_secret_value() == "from-the-environment"


def test_operator_chosen_secrets_are_kept(settings: Settings) -> None:
    chosen = settings.model_copy(update={"redis_password": SecretStr("mine"), "kafka_sasl_username": "ops"})
    made = stack_credentials.ensure(chosen, StackLayout.from_settings(settings))
    assert (made.redis_password, made.kafka_username) == ("mine", "ops")


def test_secrets_print_masked_but_reach_children(settings: Settings) -> None:
    secret = settings.model_copy(update={"redis_password": SecretStr("redis-pw-123"),
                                         "kafka_sasl_password": SecretStr("kafka-pw-456")})
    for text in (repr(secret), str(secret), secret.model_dump_json()):
        assert "redis-pw-123" not in text and "kafka-pw-456" not in text
    env = settings_env(secret)
    assert env["STREAMREC_REDIS_PASSWORD"] == "redis-pw-123"
    assert env["STREAMREC_KAFKA_SASL_PASSWORD"] == "kafka-pw-456"


def test_a_storage_formatted_without_the_scram_user_is_refused(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    layout.make_dirs()
    (layout.kafka_data / "meta.properties").write_text("node.id=1\n")
    kafka.check_scram_storage(layout, None)  # a plaintext stack needs no SCRAM user
    with pytest.raises(StackError, match="formatted without this stack's SCRAM user"):
        kafka.check_scram_storage(layout, _credentials())
    layout.kafka_scram_marker.write_text(_credentials().fingerprint())
    kafka.check_scram_storage(layout, _credentials())


async def test_every_kafka_client_gets_the_security_options(settings: Settings, tmp_path: Path) -> None:
    assert kafka_io.connection_options(settings) == {
        "bootstrap_servers": "127.0.0.1:29092", "security_protocol": "PLAINTEXT"}
    sasl = _credentials().apply(settings)
    options = kafka_io.connection_options(sasl)
    assert options["security_protocol"] == "SASL_PLAINTEXT" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("streamrec", "k" * 48)
    producer = kafka_io.make_producer(sasl)
    consumer = kafka_io.make_consumer(sasl, "t")
    admin = kafka_io.make_admin(sasl)
    try:
        for client in (producer.client, consumer._client, admin._client):
            assert client._security_protocol == "SASL_PLAINTEXT"
            assert client._sasl_mechanism == "SCRAM-SHA-512"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="TLS")


def test_redis_clients_get_the_password_and_tls(settings: Settings) -> None:
    assert redis_io.connection_options(settings) == {}
    secured = _credentials().apply(settings).model_copy(update={"redis_tls_ca": "/ca.crt"})
    assert redis_io.connection_options(secured) == {"password": "r" * 48}
    tls = redis_io.connection_options(secured, "rediss://127.0.0.1:6380/0")
    assert tls == {"password": "r" * 48, "ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.crt"}
    client = redis_io.redis_client_sync(secured)
    assert client.connection_pool.connection_kwargs["password"] == "r" * 48
    # A password written into the URL wins over the setting.
    inline = redis_io.redis_client_sync(secured, "redis://:inline@127.0.0.1:6379/0")
    assert inline.connection_pool.connection_kwargs["password"] == "inline"


def test_status_never_shows_the_secrets(settings: Settings) -> None:
    made = stack_credentials.ensure(settings, StackLayout.from_settings(settings))
    report = json.dumps(asyncio.run(manager.status(settings)).to_dict())
    assert made.redis_password not in report and made.kafka_password not in report
    assert report.count(str(StackLayout.from_settings(settings).credentials_file)) == 1


def test_auth_off_sets_the_credentials_aside_and_on_again_restores_them(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    made = stack_credentials.ensure(settings, layout)
    stack_credentials.remove(layout)
    assert not layout.credentials_file.exists()
    assert Settings(state_dir=settings.state_dir).kafka_security_protocol == "PLAINTEXT"
    # The broker's storage still holds the SCRAM user: the same password must come back.
    assert stack_credentials.ensure(settings, layout) == made
    assert layout.credentials_file.stat().st_mode & 0o777 == 0o600


def test_a_stack_running_from_before_credentials_stays_plaintext(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    # Its services run (not all to start) and it never had credentials: none are made behind its back.
    assert manager._security(settings, layout, starting_all=False) == (None, None)
    assert not layout.credentials_file.exists()
    credentials, tls = manager._security(settings, layout, starting_all=True)
    assert credentials is not None and tls is None and layout.credentials_file.is_file()
    assert manager._security(settings, layout, starting_all=False) == (credentials, None)


def test_an_operators_config_file_wins_over_the_generated_credentials(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_credentials.ensure(settings, StackLayout.from_settings(settings))
    config = tmp_path / "streamrec.env"
    config.write_text(f"STREAMREC_STATE_DIR={settings.state_dir}\nSTREAMREC_REDIS_PASSWORD=from-the-config\n")
    monkeypatch.delenv("STREAMREC_STATE_DIR", raising=False)
    monkeypatch.setenv("STREAMREC_CONFIG", str(config))
    read = Settings()  # the state dir (and so credentials.env) is found through the config file
    assert read.redis_password.get_secret_value() == "from-the-config"
    assert read.kafka_security_protocol == "SASL_PLAINTEXT"


def test_a_live_process_whose_title_lacks_the_marker_has_not_exited() -> None:
    """redis-server rewrites its process title after start: a read in that window finds no marker. ``owns`` is
    strict (pid files, kills), but the start-up wait must not call such a process "exited" (it once dropped the
    pid file of a live server and left it running on its port)."""
    info = process.proc_info(os.getpid())
    assert info is not None
    mine = process.ProcessRecord(name="x", pid=os.getpid(), start_ticks=info.start_ticks,
                                 marker="no-such-marker-in-this-cmdline", port=1, log_file="/dev/null")
    assert not process.owns(mine) and not process.exited(mine)
    assert process.exited(replace(mine, start_ticks=info.start_ticks + 1))  # the pid reused by another process
    child = subprocess.Popen(["true"])
    child.wait()
    assert process.exited(replace(mine, pid=child.pid))


# --- Cluster stack (issue 12): N KRaft brokers, a Redis Cluster of 3 masters + 3 replicas -------------------


def _cluster_quorum(settings: Settings) -> tuple[kafka.KafkaNode, ...]:
    return kafka.nodes(settings, StackLayout.from_settings(settings), 3)


def test_cluster_server_properties(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    quorum = _cluster_quorum(settings)
    every = [parse_properties(kafka.render_server_properties(settings, layout, _credentials(), quorum=quorum,
                                                             index=i)) for i in range(3)]
    voters = "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"
    for i, props in enumerate(every):
        port, controller = 29092 + 2 * i, 29093 + 2 * i
        assert props["node.id"] == str(i + 1)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters  # one static quorum of all three
        assert props["listeners"] == f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"
        assert props["advertised.listeners"] == f"SASL_PLAINTEXT://127.0.0.1:{port}"
        assert Path(props["log.dirs"]) == layout.root / f"kafka-{i}" / "data"
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"):
            assert props[key] == "3", key
        for key in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
            assert props[key] == "2", key
        assert int(props["broker.heartbeat.interval.ms"]) < int(props["broker.session.timeout.ms"]) <= 5000
    assert len({props["log.dirs"] for props in every}) == 3
    # Two brokers: factor 2, and one replica in sync suffices (two would stop every write while one is down).
    two = parse_properties(kafka.render_server_properties(settings, layout, quorum=kafka.nodes(settings, layout, 2)))
    assert (two["default.replication.factor"], two["min.insync.replicas"]) == ("2", "1")


def test_cluster_nodes_keep_their_files_apart(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    single = kafka.nodes(settings, layout)[0]
    assert single.files == layout.kafka_node() and single.files.pid_file == layout.kafka_pid_file
    assert single.node_id == kafka.NODE_ID
    files = [node.files for node in _cluster_quorum(settings)]
    for field in ("dir", "config", "data", "server_log", "stdout", "pid_file", "scram_marker"):
        paths = [getattr(f, field) for f in files] + [getattr(single.files, field)]
        assert len(set(paths)) == 4, field
        assert all(path.is_relative_to(layout.root) for path in paths)
    command = kafka.broker_command("/usr/bin/java", Path("/libs"), layout, files[1])
    assert command[-1] == str(files[1].config)
    log4j = parse_properties(kafka.render_log4j2_properties(layout, files[2]))
    assert Path(log4j["appender.file.fileName"]) == layout.logs_dir / "kafka-2-server.log"


def test_formatted_cluster_id_is_read_back(settings: Settings) -> None:
    files = StackLayout.from_settings(settings).kafka_node(0)
    assert kafka.formatted_cluster_id(files) is None
    files.data.mkdir(parents=True)
    (files.data / "meta.properties").write_text("#\nnode.id=1\ncluster.id=AbCdEfGhIjKlMnOpQrStUv\nversion=1\n")
    assert kafka.formatted_cluster_id(files) == "AbCdEfGhIjKlMnOpQrStUv"


def test_cluster_redis_conf(settings: Settings) -> None:
    layout = StackLayout.from_settings(settings)
    cluster = redis_service.nodes(settings, layout, [26379 + i for i in range(6)])
    confs = [redis_service.render_redis_conf(settings, layout, _credentials(), node=node) for node in cluster]
    for i, conf in enumerate(confs):
        lines = set(conf.splitlines())
        assert f"port {26379 + i}" in lines
        assert {"cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000",
                "appendonly yes", "maxmemory-policy noeviction", "bind 127.0.0.1"} <= lines
        # Replicas log in to their master with the stack's password, as clients do.
        assert f'requirepass "{"r" * 48}"' in lines and f'masterauth "{"r" * 48}"' in lines
        assert f'dir "{layout.root / f"redis-{i}" / "data"}"' in lines
    single = redis_service.render_redis_conf(settings, layout, _credentials())
    assert "cluster-enabled" not in single and "masterauth" not in single
    tls = TlsFiles.of(layout)
    secure = redis_service.render_redis_conf(settings, layout, _credentials(), tls, node=cluster[0]).splitlines()
    assert {"tls-cluster yes", "tls-replication yes", "port 0", "tls-port 26379"} <= set(secure)


def test_cluster_create_passes_the_password_out_of_argv(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StackLayout.from_settings(settings)
    cluster = redis_service.nodes(settings, layout, [26379 + i for i in range(6)])
    seen: dict[str, object] = {}

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen["command"], seen["env"] = command, kwargs["env"]
        return subprocess.CompletedProcess(command, 0, "[OK] All 16384 slots covered.\n", "")

    monkeypatch.setattr(redis_service.subprocess, "run", fake_run)
    monkeypatch.setattr(redis_service, "find_redis_cli", lambda: "/usr/bin/redis-cli")
    redis_service.create_cluster(cluster, 1, _credentials(), None)
    command = seen["command"]
    assert isinstance(command, list)
    assert command[:3] == ["/usr/bin/redis-cli", "--cluster", "create"]
    assert command[3:9] == [f"127.0.0.1:{26379 + i}" for i in range(6)]
    assert command[9:] == ["--cluster-replicas", "1", "--cluster-yes"]
    assert not any("r" * 48 in part for part in command)  # never in argv: `ps` would show it
    assert seen["env"]["REDISCLI_AUTH"] == "r" * 48

    monkeypatch.setattr(redis_service.subprocess, "run",
                        lambda command, **_: subprocess.CompletedProcess(command, 1, "", f"ERR {'r' * 48} no"))
    with pytest.raises(StackError) as failed:
        redis_service.create_cluster(cluster, 1, _credentials(), None)
    assert "r" * 48 not in str(failed.value)


def test_topology_ports_and_client_env(settings: Settings) -> None:
    from tools.stack.topology import Topology

    single = Topology()
    assert single.kafka_ports(settings) == ((29092, 29093),) and single.redis_ports(settings) == (26379,)
    assert single.client_env(settings) == {}  # the single-node credentials.env stays as it was
    assert single.replication_factor == 1
    cluster = Topology(brokers=3, redis_cluster=True)
    assert cluster.kafka_ports(settings) == ((29092, 29093), (29094, 29095), (29096, 29097))
    assert cluster.redis_ports(settings) == tuple(range(26379, 26385))
    assert cluster.client_env(settings) == {
        "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096",
        "STREAMREC_KAFKA_REPLICATION_FACTOR": "3",
        "STREAMREC_REDIS_CLUSTER": "true",
        "STREAMREC_REDIS_CLUSTER_NODES": ",".join(f"127.0.0.1:{p}" for p in range(26379, 26385)),
    }
    applied = cluster.apply(settings)
    assert applied.kafka_port == 29092 and applied.redis_cluster and applied.kafka_replication_factor == 3
    assert applied.redis_cluster_nodes.split(",")[-1] == "127.0.0.1:26384"
    assert Topology(brokers=5).replication_factor == 3
    cluster.check_ports(settings)
    clash = settings.model_copy(update={"kafka_controller_port": 29094})  # on broker 1's client port
    with pytest.raises(StackError, match="overlap"):
        Topology(brokers=3).check_ports(clash)
    single_clash = settings.model_copy(update={"redis_url": "redis://127.0.0.1:19092/0"})  # bus on 29092
    with pytest.raises(StackError, match="overlap"):
        Topology(redis_cluster=True).check_ports(single_clash)
    with pytest.raises(StackError):
        Topology(brokers=0)


def test_topology_is_remembered(settings: Settings) -> None:
    from tools.stack import topology

    layout = StackLayout.from_settings(settings)
    assert topology.load(layout) is None
    assert topology.resolve(layout, None, None) == topology.Topology()
    topology.save(layout, topology.Topology(brokers=3, redis_cluster=True))
    assert topology.resolve(layout, None, None) == topology.Topology(3, True)  # a plain `up` keeps it
    assert topology.resolve(layout, None, False) == topology.Topology(3, False)
    assert topology.resolve(layout, 1, None) == topology.Topology(1, True)
    layout.topology_file.write_text("{")
    with pytest.raises(StackError, match="unreadable"):
        topology.load(layout)


def test_topic_specs_follow_the_replication_factor(settings: Settings) -> None:
    replicated = {spec.name: spec for spec in topic_specs(settings.model_copy(update={"kafka_replication_factor": 3}))}
    assert all(spec.replication_factor == 3 for spec in replicated.values())
    assert all(spec.configs["min.insync.replicas"] == "2" for spec in replicated.values())
    assert replicated["catalog"].configs["cleanup.policy"] == "compact"
    two = topic_specs(settings.model_copy(update={"kafka_replication_factor": 2}))
    assert all(spec.replication_factor == 2 and "min.insync.replicas" not in spec.configs for spec in two)


def test_redis_client_of_a_cluster(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.asyncio.cluster
    import redis.cluster

    clustered = _credentials().apply(settings).model_copy(update={"redis_cluster": True})
    client = redis_io.redis_client(clustered)
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
    kwargs = client.connection_kwargs
    assert kwargs["password"] == "r" * 48
    assert client.retry.get_retries() == redis_io.CLUSTER_RETRIES  # rides through a failover
    assert not isinstance(redis_io.redis_client(clustered, cluster=False), redis.asyncio.cluster.RedisCluster)
    # The synchronous cluster client connects when made: its options are checked on the way in.
    made: dict[str, object] = {}
    monkeypatch.setattr(redis.cluster.RedisCluster, "from_url", classmethod(lambda cls, url, **kw: made.update(kw)))
    redis_io.redis_client_sync(clustered)
    assert made["password"] == "r" * 48 and made["retry"].get_retries() == redis_io.CLUSTER_RETRIES  # type: ignore[attr-defined]
    tls = redis_io.redis_client(clustered.model_copy(update={"redis_tls_ca": "/ca.crt"}),
                                "rediss://127.0.0.1:26379/0")
    assert tls.connection_kwargs["ssl_ca_certs"] == "/ca.crt"
    assert not isinstance(redis_io.redis_client(settings), redis.asyncio.cluster.RedisCluster)


def test_credentials_env_carries_the_topology(settings: Settings) -> None:
    from tools.stack.topology import Topology

    layout = StackLayout.from_settings(settings)
    single = stack_credentials.ensure(settings, layout)
    single_text = layout.credentials_file.read_text()
    env = Topology(brokers=3, redis_cluster=True).client_env(settings)
    clustered = stack_credentials.ensure(settings, layout, topology_env=env)
    assert (clustered.redis_password, clustered.kafka_password) == (single.redis_password, single.kafka_password)
    read = Settings(state_dir=settings.state_dir)  # what every process of this state dir sees
    assert read.kafka_bootstrap == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert read.redis_cluster and read.kafka_replication_factor == 3
    assert stack_credentials.load(layout) == clustered
    # Back to one node: the file is exactly the single-node one again.
    stack_credentials.ensure(settings, layout)
    assert layout.credentials_file.read_text() == single_text


def test_a_plaintext_cluster_writes_only_its_topology(settings: Settings) -> None:
    from tools.stack.topology import Topology

    layout = StackLayout.from_settings(settings)
    made = stack_credentials.ensure(settings, layout)
    plain = settings.model_copy(update={"stack_auth": False})
    env = Topology(brokers=3, redis_cluster=True).client_env(settings)
    assert manager._security(plain, layout, starting_all=True, topology_env=env) == (None, None)
    read = Settings(state_dir=settings.state_dir)
    assert read.redis_cluster and read.kafka_security_protocol == "PLAINTEXT"
    assert made.redis_password not in layout.credentials_file.read_text()
    assert stack_credentials.load(layout) is None  # no secrets: not "credentials"
    stack_credentials.remove(layout)  # must not replace the set-aside secrets with the topology file
    assert stack_credentials.ensure(settings, layout) == made


def test_status_and_down_of_a_cluster_without_processes(settings: Settings) -> None:
    from tools.stack import topology

    layout = StackLayout.from_settings(settings)
    topology.save(layout, topology.Topology(brokers=3, redis_cluster=True))
    current = asyncio.run(manager.status(settings))
    report = current.to_dict()
    names = [*(f"kafka-{i}" for i in range(3)), *(f"redis-{i}" for i in range(6))]
    assert list(report["services"]) == names
    assert report["topology"] == {"brokers": 3, "redis_cluster": True}
    assert report["services"]["kafka-2"]["address"] == "127.0.0.1:29096"
    assert report["services"]["redis-5"]["address"] == "127.0.0.1:26384"
    assert not current.healthy
    # A pid file of the single-node stack left beside the cluster's is handled too (verified, never blindly).
    process.write_record(layout.redis_pid_file, ProcessRecord(name="redis", pid=2**22 + 1, start_ticks=1,
                                                              marker="x", port=26379, log_file="x"))
    stopped = {item.name: item.outcome for item in asyncio.run(manager.down(settings)).stopped}
    assert stopped == {**dict.fromkeys(names, StopOutcome.NOT_RUNNING), "redis": StopOutcome.STALE}
    assert not layout.redis_pid_file.exists()


def test_another_topology_is_refused_while_the_stack_runs(settings: Settings, sleeper: ProcessRecord) -> None:
    from tools.stack import topology

    layout = StackLayout.from_settings(settings)
    topology.save(layout, topology.Topology())
    # A live process of ours recorded as the single broker (the marker matches its command line).
    process.write_record(layout.kafka_pid_file, replace(sleeper, name="kafka"))
    with pytest.raises(StackError, match="stack down"):
        asyncio.run(manager.up(settings, brokers=3))
    assert topology.load(layout) == topology.Topology()  # nothing changed
    assert process.owns(sleeper)
