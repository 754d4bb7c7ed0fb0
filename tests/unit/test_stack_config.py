"""Pure logic of the local stack: generated configs, jar cache marker, pid files, verified stop."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from foundation.settings import Settings
from foundation.topics import DEAD_LETTER_RETENTION_MS, topic_specs
from tools.stack import StackError, kafka, manager, process
from tools.stack import redis as redis_service
from tools.stack.layout import StackLayout
from tools.stack.process import ProcessRecord, StopOutcome


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
