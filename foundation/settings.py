"""One typed settings object for every streamrec process.

Every field is read from an environment variable with the prefix ``STREAMREC_`` (for example
``STREAMREC_KAFKA_BOOTSTRAP``) or from a ``.env``-style file named by ``STREAMREC_CONFIG``.
``config.example.env`` at the repository root documents every field with its default; a test
keeps the two in agreement.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse, urlunparse

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_serializer, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import topics

ENV_PREFIX = "STREAMREC_"
DEFAULT_STATE_DIR = Path(".streamrec")
# `streamrec stack up` keeps the credentials it generated here (mode 0600); every Settings() reads it.
CREDENTIALS_FILE = "credentials.env"
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")

MASK = "**********"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)@")


def mask_url(url: str) -> str:
    """``url`` with the password of its user-info masked: ``redis://u:pw@h/0`` -> ``redis://u:**********@h/0``.

    Also masks every such URL inside a longer text (an error message that quotes one)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)


def credentials_file(state_dir: Path | str | None = None, config_file: str | None = None) -> Path:
    """``STATE_DIR/credentials.env``: where ``stack up`` keeps the credentials it generated.

    ``state_dir`` is resolved as the setting is: given, else ``STREAMREC_STATE_DIR``, else the
    ``STREAMREC_CONFIG`` file's value, else the default."""
    if state_dir is None:
        state_dir = os.environ.get(f"{ENV_PREFIX}STATE_DIR")
    if state_dir is None and config_file and Path(config_file).is_file():
        state_dir = dotenv_values(config_file).get(f"{ENV_PREFIX}STATE_DIR")
    return Path(state_dir or DEFAULT_STATE_DIR).expanduser() / CREDENTIALS_FILE


class ApiKey(SecretStr):
    """A secret string (``repr``, ``str`` and JSON dumps print ``**********``) that still offers the two things
    existing callers do with a key: truth (is one set?) and ``encode()`` (for ``hmac.compare_digest``)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.get_secret_value().encode(encoding, errors)


class Settings(BaseSettings):
    """Settings shared by the stack manager, the workers, the server and the tools."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_file=os.environ.get(f"{ENV_PREFIX}CONFIG"),
        populate_by_name=True,  # `java_home` is also read from JAVA_HOME, yet still set by its name
    )

    def __init__(self, **values: Any) -> None:
        # The env files are chosen per instance: the stack's credentials.env (its state dir may be given here)
        # first, STREAMREC_CONFIG's file after it (an operator's explicit choice wins over generated values);
        # real environment variables and arguments win over both. `_env_file=...` still replaces them all.
        if "_env_file" not in values:
            config = os.environ.get(f"{ENV_PREFIX}CONFIG")
            state_dir = values.get("state_dir")
            values["_env_file"] = (credentials_file(state_dir, config), *((config,) if config else ()))
        super().__init__(**values)

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers (host:port[,host:port]). `stack up` binds its broker to this port.",
    )
    kafka_controller_port: int = Field(
        9093, ge=1, le=65535, description="KRaft controller port of the local broker started by `stack up`."
    )
    topic_interactions: str = Field(topics.INTERACTIONS, description="Interaction events, keyed by user id.")
    topic_catalog: str = Field(topics.CATALOG, description="Catalog events, keyed by item id (compacted).")
    topic_item_vectors: str = Field(topics.ITEM_VECTORS, description="Item vectors from workers (compacted).")
    topic_item_state: str = Field(
        topics.ITEM_STATE, description="Item feature state after each worker commit, tailed by servers (compacted)."
    )
    topic_dead_letters: str = Field(topics.DEAD_LETTERS, description="Invalid records with error and source.")
    interactions_partitions: int = Field(8, ge=1, description="Partitions of the interactions topic.")
    kafka_version: str = Field(
        "4.1.1", description="Apache Kafka release (org.apache.kafka:kafka_2.13) that `stack up` runs."
    )
    catalog_partitions: int = Field(4, ge=1, description="Partitions of the catalog and item-vectors topics.")
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="How clients talk to the brokers: PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL. "
        "`stack up` writes SASL_PLAINTEXT into its credentials.env."
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512", description="SASL mechanism with SASL_*: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN."
    )
    kafka_sasl_username: str = Field("", description="SASL user of every Kafka client (with SASL_*).")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password of every Kafka client. A secret: printed and logged as **********."
    )
    kafka_ssl_cafile: str = Field(
        "", description="CA certificate (PEM) that verifies the brokers with SSL/SASL_SSL; empty: the system's CAs."
    )
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of the topics streamrec creates (3 or more adds "
        "min.insync.replicas=2). `stack up --brokers N` writes min(3, N) into its credentials.env."
    )

    # --- Redis -----------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (redis:// or rediss://). `stack up` binds its redis-server to this port.",
    )
    redis_username: str = Field(
        "", description="Redis ACL user; empty: the default user (what `requirepass` protects)."
    )
    redis_password: SecretStr = Field(
        SecretStr(""), description="Redis password (AUTH); a password in redis_url wins over it. A secret: "
        "printed and logged as **********."
    )
    redis_tls_ca: str = Field(
        "", description="CA certificate (PEM) that verifies the server of a rediss:// URL; empty: the system's CAs."
    )
    redis_cluster: bool = Field(
        False, description="redis_url names one node of a Redis Cluster: clients discover the others and follow "
        "failovers and moved slots (redis-py's cluster client). `stack up --redis-cluster` writes true."
    )
    redis_cluster_nodes: str = Field(
        "", description="Further seed nodes of a Redis Cluster (host:port, comma-separated) beside redis_url's, so a "
        "process starting while that node is down still finds the cluster; `stack up --redis-cluster` writes them all."
    )
    redis_maxmemory: str = Field(
        "1gb", pattern=r"^\d+(?:[kKmMgG][bB]?)?$", description="`maxmemory` of the stack's redis-server (with "
        "maxmemory-policy noeviction: writes fail rather than lose offset keys); 0: no limit."
    )
    stack_auth: bool = Field(
        True, description="`stack up` protects its services: a generated Redis password and a SASL/SCRAM Kafka "
        "listener, kept in STATE_DIR/credentials.env (mode 0600), which every process reads; false: plaintext."
    )
    stack_tls: bool = Field(
        False, description="`stack up` also serves TLS (rediss:// and SASL_SSL) with a CA it generates into "
        "STATE_DIR/tls (needs openssl); clients then use it through credentials.env."
    )

    # --- Local state and artifacts ---------------------------------------------------------
    state_dir: Path = Field(
        Path(".streamrec"), description="Git-ignored folder for the local stack's data, logs, pids and jars."
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "streamrec",
        description="Cache shared by all checkouts: Kafka jars resolved from Maven Central (reused offline).",
    )
    artifacts: Path = Field(Path("artifacts"), description="Model bundle root (holds versions and `latest`).")
    java_home: str = Field(
        "", validation_alias=AliasChoices(f"{ENV_PREFIX}JAVA_HOME", "JAVA_HOME"),
        description="JDK whose bin/java runs the broker of `stack up` (also read from JAVA_HOME); empty: java on PATH.",
    )
    movielens_path: Path = Field(
        Path("../shared/data/ml-latest-small"),
        description="MovieLens folder the tests and benchmarks read (never shipped: they skip without it); "
        "relative to the working directory, the repository root.",
    )

    # --- Logging ---------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = Field(False, description="Structured logs as JSON lines (true in containers).")

    # --- Stream worker ---------------------------------------------------------------------
    worker_metrics_port: int = Field(
        9108, ge=0, le=65535, description="Port of a stream worker's Prometheus metrics; 0: none."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address a stream worker's metrics server binds (0.0.0.0: every interface, "
        "e.g. in a container scraped from outside)."
    )
    worker_concurrency: int = Field(
        4, ge=1, description="Partition batches a stream worker handles at once (their Redis round trips overlap)."
    )
    worker_dedupe_window: int = Field(
        64, ge=0, le=4096, description="Event ids remembered per user (8-byte digests, next to the user's state, "
        "same TTL): an interaction whose event_id is among its user's last N applied ones is skipped, so a "
        "client may retry any of a user's last N events; 0: no de-duplication (streams/dedupe.py)."
    )

    worker_protocol: Literal["slots", "transaction"] = Field(
        "slots", description="How a stream worker applies a partition batch exactly once: `slots`, per-hash-slot "
        "idempotent units (streams/slot_protocol.py; one redis-server or Redis Cluster); `transaction`, one "
        "MULTI per batch (streams/batch_protocol.py; one redis-server only). A cluster always uses `slots`."
    )

    # --- Serving (HTTP) --------------------------------------------------------------------
    server_host: str = Field("127.0.0.1", description="Address `streamrec serve` binds (0.0.0.0 in containers).")
    server_port: int = Field(8000, ge=1, le=65535, description="Port `streamrec serve` listens on.")
    api_key: ApiKey = Field(
        ApiKey(""), description="The operator's static key: accepted in the X-API-Key header with every scope "
        "(admin), beside the keys of `streamrec keys create`; empty: none. "
        "A secret: printed and logged as **********; `api_key_value()` gives the key itself."
    )
    auth: bool = Field(
        True, description="Writes (POST /v1/events) need an API key with the right scope; false/off: anyone may "
        "write (logged as a WARNING at start-up)."
    )
    auth_reads: bool = Field(
        False, description="Reads (/v1/recommendations, /v1/items/{id}/similar) need a key with the "
        "recommendations:read scope too (when auth is on)."
    )
    auth_keys_refresh_s: float = Field(
        2.0, gt=0, description="Seconds between a server's re-reads of the key table from Redis: a revoked key "
        "stops working within this (the last table is kept while Redis cannot be reached)."
    )
    rate_limit_events_per_s: float = Field(
        5000.0, ge=0, description="Events per second one API key may POST to one server process (a token bucket "
        "per key per replica; past it 429 with Retry-After); 0: no limit."
    )
    rate_limit_burst: int = Field(
        10_000, ge=1, description="Events one key may POST at once above its rate (the bucket's size)."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; bigger ones get 413."
    )
    max_events_per_request: int = Field(
        1000, ge=1, description="Most events one POST /v1/events may carry (a JSON array)."
    )
    events_publish_timeout_s: float = Field(
        1.0, gt=0, description="How long POST /v1/events waits for Kafka's acknowledgement before answering 503."
    )
    request_timeout_s: float = Field(
        1.0, gt=0, description="Budget of one recommendation/similar call; past it the answer is degraded."
    )
    blas_threads: int = Field(
        1, ge=1, description="BLAS (numpy/OpenBLAS) threads per server or worker process; more processes scale "
        "better than more threads here (foundation/blas_threads.py)."
    )
    serving_candidates_timeout_ms: float = Field(
        50.0, gt=0, description="Budget of the candidate stage's Redis read; past it, candidates from local state."
    )
    serving_features_timeout_ms: float = Field(
        50.0, gt=0, description="Budget of the feature stage's Redis read; past it, default features (degraded)."
    )
    serving_item_state_ttl_s: float = Field(
        1.0, ge=0, description="Without the in-process item state: seconds a candidate's item feature row read from "
        "Redis is reused by a server process; 0: never."
    )
    serving_reason_titles: bool = Field(
        True, description="Reasons name the title a pick is like (\"Because you watched Heat\"): the user's own "
        "history. False: \"Because of what you watched recently\", for answers others may see."
    )
    serving_item_state_in_process: bool = Field(
        True, description="Hold every title's feature state in each server process, fed by the item-state topic "
        "and snapshots of Redis (online_state/item_state.py); false: read the candidates' rows from Redis."
    )
    serving_item_state_resync_s: float = Field(
        300.0, gt=0, description="Seconds between a server's full re-reads of the item state from Redis (repairs "
        "rows whose item-state record was never sent)."
    )
    serving_shared_reads_ttl_s: float = Field(
        1.0, ge=0, description="Seconds a server process reuses the trending lists and new releases (the same for "
        "every request); 0: read them per request."
    )
    serving_admission_initial_limit: int = Field(
        20, ge=1, description="Read requests a server process works on at once before it has measured any latency; "
        "the limit then adapts (serving/admission.py). Past it, 503 with Retry-After at once."
    )
    serving_admission_min_limit: int = Field(
        2, ge=1, description="The adaptive admission limit never goes below this many requests in flight."
    )
    serving_admission_max_limit: int = Field(
        200, ge=1, description="The adaptive admission limit never goes above this many requests in flight."
    )

    # --- The browser page (GET /) ------------------------------------------------------------
    page_api_key: SecretStr | None = Field(
        None, description="The key the browser page at / POSTs its play/complete events with. It is handed to "
        "every browser that opens the page, so it must be a key of its own with the events:write scope only "
        "(`streamrec keys create --name page --scopes events:write`), never the operator's key; empty: the page "
        "asks the visitor for a key. A secret: printed and logged as **********."
    )
    page_clock_offset_ms: int = Field(
        0, description="Milliseconds the page adds to the server's clock for its requests' `now` and its events' "
        "`ts`, so a world recorded in the past (the generated one starts 2026-01-01) is browsed as of its log; "
        "`streamrec demo` sets it to just after the log's last event."
    )

    # --- Experiments (issue 15; models/experiments, serving/experiments.py) ---------------------------------------
    experiments_file: Path | None = Field(
        None, description="An experiments file (TOML or JSON, models/experiments/config.py). At start a server "
        "stores it in Redis when its `version` is newer than the stored one; every replica then follows the stored "
        "document (PUT /v1/experiments changes it without a restart)."
    )
    experiments_refresh_s: float = Field(
        2.0, gt=0, description="Seconds between a server's re-reads of the experiments document from Redis."
    )
    exposure_buffer: int = Field(
        20_000, ge=1, description="Exposures a server holds for Kafka at most; past it new ones are dropped and "
        "counted (streamrec_exposures_dropped_total), never queued without bound."
    )
    exposure_flush_ms: int = Field(
        50, ge=1, le=10_000, description="How often a server sends its buffered exposures to Kafka (one batch)."
    )

    @field_validator("experiments_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        # `STREAMREC_EXPERIMENTS_FILE=` (config.example.env): no file, not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("page_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        # `STREAMREC_PAGE_API_KEY=` (config.example.env) means no page key, like leaving it out.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlparse(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {value!r}")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism")
    @classmethod
    def _check_kafka_security(cls, value: str, info: ValidationInfo) -> str:
        choices = KAFKA_SECURITY_PROTOCOLS if info.field_name == "kafka_security_protocol" else KAFKA_SASL_MECHANISMS
        if value.upper() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value.upper()

    @field_validator("state_dir", "cache_dir", "artifacts", "movielens_path")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    # --- Secrets: never printed ------------------------------------------------------------------
    def api_key_value(self) -> str:
        """The API key itself ("" when none); ``api_key`` prints masked."""
        key: Any = self.api_key
        return key.get_secret_value() if isinstance(key, SecretStr) else str(key or "")

    @property
    def redis_url_masked(self) -> str:
        """``redis_url`` with its password (if any) masked: for messages and logs."""
        return mask_url(self.redis_url)

    @field_serializer("redis_url", when_used="json")
    def _mask_redis_url(self, value: str) -> str:
        # JSON dumps (logs, reports) mask the password; model_dump() in Python keeps it (child_env needs it).
        return mask_url(value)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr(), str() and rich's pretty printing (tracebacks with locals) all go through here.
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) else value

    # --- Derived values (not settings of their own, so they cannot disagree) -------------------
    @property
    def kafka_port(self) -> int:
        """Port of the first bootstrap server: the port the local broker listens on."""
        return int(self.kafka_bootstrap.split(",")[0].rpartition(":")[2])

    @property
    def redis_port(self) -> int:
        return urlparse(self.redis_url).port or 6379

    @property
    def redis_host(self) -> str:
        return urlparse(self.redis_url).hostname or "127.0.0.1"

    def with_topic_prefix(self, prefix: str) -> Settings:
        """The same settings on topics of their own (``{prefix}-interactions``, ...), for a run that must
        neither read nor pollute the deployment's topics."""
        return self.model_copy(update={
            "topic_interactions": f"{prefix}-{topics.INTERACTIONS}", "topic_catalog": f"{prefix}-{topics.CATALOG}",
            "topic_item_vectors": f"{prefix}-{topics.ITEM_VECTORS}",
            "topic_item_state": f"{prefix}-{topics.ITEM_STATE}",
            "topic_dead_letters": f"{prefix}-{topics.DEAD_LETTERS}",
        })

    def with_redis_db(self, db: int) -> Settings:
        """The same settings on Redis database ``db`` (tools and benchmarks that keep their state apart)."""
        return self.model_copy(update={"redis_url": urlunparse(urlparse(self.redis_url)._replace(path=f"/{db}"))})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
