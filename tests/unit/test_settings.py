"""Defaults, the commented example config, the environment and docker-compose agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from foundation.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.env"
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _example_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    comment_seen = False
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            comment_seen = True
            continue
        if not line.strip():
            continue
        name, _, value = line.partition("=")
        assert comment_seen, f"{name} has no comment above it"
        comment_seen = False
        entries[name] = value
    return entries


def test_example_names_every_setting_once() -> None:
    expected = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(_example_entries()) == expected


def test_example_values_are_the_defaults() -> None:
    assert Settings(_env_file=EXAMPLE) == Settings(_env_file=None)


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "10.0.0.5:29092,10.0.0.6:29092")
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://cache.internal:7000/2")
    monkeypatch.setenv("STREAMREC_INTERACTIONS_PARTITIONS", "32")
    settings = Settings(_env_file=None)
    assert settings.kafka_port == 29092
    assert (settings.redis_host, settings.redis_port) == ("cache.internal", 7000)
    assert settings.interactions_partitions == 32


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("STREAMREC_KAFKA_BOOTSTRAP", "localhost", "kafka_bootstrap"),
        ("STREAMREC_REDIS_URL", "http://localhost:6379", "redis_url"),
        ("STREAMREC_INTERACTIONS_PARTITIONS", "0", "interactions_partitions"),
        ("STREAMREC_LOG_LEVEL", "LOUD", "log_level"),
    ],
)
def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_unknown_settings_in_a_config_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "streamrec.env"
    config.write_text("STREAMREC_KAFKA_BOOTSTRAPS=127.0.0.1:9092\n")
    with pytest.raises(ValidationError, match="kafka_bootstraps"):
        Settings(_env_file=config)


def test_java_home_is_read_from_its_setting_or_from_java_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert Settings(_env_file=None).java_home == ""
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk")
    assert Settings(_env_file=None).java_home == "/opt/jdk"
    monkeypatch.setenv("STREAMREC_JAVA_HOME", "/opt/other")
    assert Settings(_env_file=None).java_home == "/opt/other"  # the setting wins over the convention


def test_a_run_of_its_own_gets_its_own_topics_and_database() -> None:
    base = Settings(_env_file=None, redis_url="redis://:secret@cache:7000/0")
    run = base.with_topic_prefix("eval-abc").with_redis_db(3)
    assert run.redis_url == "redis://:secret@cache:7000/3"
    assert (run.topic_interactions, run.topic_catalog, run.topic_item_vectors, run.topic_dead_letters) == (
        "eval-abc-interactions", "eval-abc-catalog", "eval-abc-item-vectors", "eval-abc-dead-letters")
    assert run.model_copy(update={"redis_url": base.redis_url}) == base.with_topic_prefix("eval-abc")
    assert base.topic_interactions == "interactions"  # the base settings are left as they were


# --- docker-compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_stack_and_the_recommender(compose: dict) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "init-topics", "worker", "server"} <= set(services)
    assert "process.roles=broker,controller" in services["kafka"]["command"][0]  # KRaft, no ZooKeeper
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")


def test_compose_publishes_only_the_api_and_matches_the_default_settings(compose: dict) -> None:
    defaults = Settings(_env_file=None)
    published = {name: [str(p) for p in svc.get("ports", [])] for name, svc in compose["services"].items()}
    assert {name: ports for name, ports in published.items() if ports} == {"server": ["8000:8000"]}
    assert compose["services"]["kafka"]["image"].endswith(":" + defaults.kafka_version)


def test_compose_keeps_kafka_and_redis_internal_with_credentials(compose: dict) -> None:
    """Issue 11: Redis and Kafka only on an internal network, each needing credentials from .env; restart policies."""
    services = compose["services"]
    assert compose["networks"]["backend"]["internal"] is True
    assert services["kafka"]["networks"] == ["backend"] and services["redis"]["networks"] == ["backend"]
    assert "frontend" in services["server"]["networks"]
    env = compose["x-streamrec-env"]
    assert env["STREAMREC_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["STREAMREC_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    for secret in ("STREAMREC_REDIS_PASSWORD", "STREAMREC_KAFKA_SASL_PASSWORD"):
        assert env[secret].startswith("${" + secret + ":?"), secret  # compose refuses to start without it
    kafka = services["kafka"]["command"][0]
    assert "PLAINTEXT://" not in kafka.replace("SASL_PLAINTEXT://", "").replace("CONTROLLER://localhost", "")
    assert "--add-scram" in kafka and "sasl.enabled.mechanisms=SCRAM-SHA-512" in kafka
    assert "requirepass" in services["redis"]["command"][0]
    assert "REDISCLI_AUTH" in services["redis"]["healthcheck"]["test"][1]
    for name in ("kafka", "redis", "worker", "server"):
        assert services[name]["restart"] == "unless-stopped", name


def test_compose_environment_names_are_real_settings(compose: dict) -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    used: set[str] = set()
    for service in compose["services"].values():
        used |= {name for name in service.get("environment", {}) if name.startswith(ENV_PREFIX)}
    assert used, "no STREAMREC_ settings passed to the services"
    assert used <= known, f"unknown settings in docker-compose.yml: {sorted(used - known)}"
    # Values must parse with the same validation as on the host.
    env = compose["services"]["worker"]["environment"]
    Settings(_env_file=None, **{k[len(ENV_PREFIX):].lower(): v for k, v in env.items()})


def test_compose_services_of_ours_share_one_environment(compose: dict) -> None:
    envs = [compose["services"][name]["environment"] for name in ("init-topics", "worker", "server")]
    assert envs[0] == envs[1] == envs[2]
    assert all(re.fullmatch(r"STREAMREC_[A-Z_]+", name) for name in envs[0])
