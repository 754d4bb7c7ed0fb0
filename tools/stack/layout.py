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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from foundation.settings import CREDENTIALS_FILE, Settings


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

    def make_dirs(self) -> None:
        for path in (self.run_dir, self.logs_dir, self.kafka_data, self.redis_data):
            path.mkdir(parents=True, exist_ok=True)
