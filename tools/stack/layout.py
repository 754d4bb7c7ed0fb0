"""Where the local stack keeps its files: everything under one git-ignored ``settings.state_dir``.

::

    STATE_DIR/
      kafka/server.properties  kafka/log4j2.properties  kafka/data/   (log.dirs, KRaft metadata)
      redis/redis.conf         redis/data/                            (AOF and RDB files)
      logs/kafka-server.log    logs/kafka.out   logs/redis.log
      run/kafka.json           run/redis.json                         (pid files)
      run/stack.lock                                                  (serialises up/down)
      credentials.env                                                 (generated secrets, mode 0600)
      tls/                                                            (CA and server certs, stack_tls)
      topology.json                                                   (brokers, redis_cluster: see topology)

A cluster stack (``stack up --brokers N --redis-cluster``) keeps one folder per node beside these, with the same
files inside: ``kafka-<i>/`` (i = 0..N-1; logs/kafka-<i>-server.log, logs/kafka-<i>.out, run/kafka-<i>.json) and
``redis-<i>/`` (i = 0..5; its ``data/`` also holds the node's ``nodes.conf``; logs/redis-<i>.log,
run/redis-<i>.json). The single-node paths above stay those of the default stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from foundation.settings import CREDENTIALS_FILE, Settings


@dataclass(frozen=True)
class KafkaNodeFiles:
    """The files of one Kafka node (the single broker, or one node of a cluster)."""

    name: str  # the service name: "kafka", or "kafka-<i>"
    dir: Path
    config: Path
    log4j_config: Path
    data: Path
    server_log: Path  # the broker's own log (log4j2)
    stdout: Path  # the JVM's stdout/stderr
    pid_file: Path
    scram_marker: Path  # see StackLayout.kafka_scram_marker


@dataclass(frozen=True)
class RedisNodeFiles:
    """The files of one redis-server (the single one, or one node of a Redis Cluster)."""

    name: str  # "redis", or "redis-<i>"
    dir: Path
    config: Path
    data: Path
    log: Path
    pid_file: Path


@dataclass(frozen=True)
class StackLayout:
    root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> StackLayout:
        # Absolute, so that pid-file markers and generated configs do not depend on the cwd.
        return cls(settings.state_dir.expanduser().resolve())

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    # --- Kafka ---------------------------------------------------------------------------------
    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def kafka_config(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def kafka_log4j_config(self) -> Path:
        return self.kafka_dir / "log4j2.properties"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_server_log(self) -> Path:
        """The broker's own log (log4j2)."""
        return self.logs_dir / "kafka-server.log"

    @property
    def kafka_stdout(self) -> Path:
        """stdout/stderr of the JVM: crashes before logging starts end up here."""
        return self.logs_dir / "kafka.out"

    @property
    def kafka_pid_file(self) -> Path:
        return self.run_dir / "kafka.json"

    # --- Redis ---------------------------------------------------------------------------------
    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_config(self) -> Path:
        return self.redis_dir / "redis.conf"

    @property
    def redis_data(self) -> Path:
        return self.redis_dir / "data"

    @property
    def redis_log(self) -> Path:
        return self.logs_dir / "redis.log"

    @property
    def redis_pid_file(self) -> Path:
        return self.run_dir / "redis.json"

    @property
    def credentials_file(self) -> Path:
        """The stack's generated credentials, read by every ``Settings()`` of this state dir."""
        return self.root / CREDENTIALS_FILE

    @property
    def kafka_scram_marker(self) -> Path:
        """A digest of the SCRAM user the broker's storage was formatted with (see credentials.fingerprint)."""
        return self.kafka_dir / "scram.sha256"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "stack.lock"

    @property
    def topology_file(self) -> Path:
        return self.root / "topology.json"

    # --- Nodes: the single-node paths above (index None), or one folder per cluster node ---------------
    def kafka_node(self, index: int | None = None) -> KafkaNodeFiles:
        if index is None:
            return KafkaNodeFiles("kafka", self.kafka_dir, self.kafka_config, self.kafka_log4j_config,
                                  self.kafka_data, self.kafka_server_log, self.kafka_stdout, self.kafka_pid_file,
                                  self.kafka_scram_marker)
        name = f"kafka-{index}"
        folder = self.root / name
        return KafkaNodeFiles(name, folder, folder / "server.properties", folder / "log4j2.properties",
                              folder / "data", self.logs_dir / f"{name}-server.log", self.logs_dir / f"{name}.out",
                              self.run_dir / f"{name}.json", folder / "scram.sha256")

    def redis_node(self, index: int | None = None) -> RedisNodeFiles:
        if index is None:
            return RedisNodeFiles("redis", self.redis_dir, self.redis_config, self.redis_data, self.redis_log,
                                  self.redis_pid_file)
        name = f"redis-{index}"
        folder = self.root / name
        return RedisNodeFiles(name, folder, folder / "redis.conf", folder / "data", self.logs_dir / f"{name}.log",
                              self.run_dir / f"{name}.json")

    def make_dirs(self) -> None:
        for path in (self.run_dir, self.logs_dir, self.kafka_data, self.redis_data):
            path.mkdir(parents=True, exist_ok=True)

    def make_node_dirs(self, kafka: KafkaNodeFiles | None = None, redis: RedisNodeFiles | None = None) -> None:
        self.make_dirs()
        for path in (kafka.data if kafka else None, redis.data if redis else None):
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
