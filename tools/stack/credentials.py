"""The local stack's credentials: a Redis password and a Kafka SCRAM user, generated once per state dir.

``stack up`` keeps them in ``STATE_DIR/credentials.env`` (mode 0600, ``STREAMREC_*`` lines). Every
``Settings()`` reads that file as an env file (foundation/settings.py), so the worker, the server and the
tools of this checkout authenticate without anyone exporting a secret. Values already in the settings
(an operator's ``STREAMREC_REDIS_PASSWORD``...) are used instead of random ones when the file is first made.

A cluster stack adds the lines that describe its shape (``Topology.client_env``: the full bootstrap list, the
topics' replication factor, ``STREAMREC_REDIS_CLUSTER``); they are no secret, and with ``stack_auth`` off the file
holds only them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from dotenv import dotenv_values
from pydantic import SecretStr

from foundation.logs import get_logger
from foundation.settings import ENV_PREFIX, Settings
from tools.stack.layout import StackLayout

log = get_logger(__name__)

KAFKA_USER = "streamrec"
SCRAM_MECHANISM = "SCRAM-SHA-512"
# The topology lines a cluster stack adds (tools.stack.topology.Topology.client_env).
TOPOLOGY_VARIABLES = ("KAFKA_BOOTSTRAP", "KAFKA_REPLICATION_FACTOR", "REDIS_CLUSTER", "REDIS_CLUSTER_NODES")


@dataclass(frozen=True)
class StackCredentials:
    redis_password: str = field(repr=False)
    kafka_username: str
    kafka_password: str = field(repr=False)
    tls_ca: str = ""  # the stack's CA (PEM) when it serves TLS (settings.stack_tls)
    redis_url: str = ""  # with TLS: the stack's rediss:// URL (its port speaks TLS only)
    # STREAMREC_* lines that describe a cluster stack (none for the single-node stack).
    topology_env: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        """The ``STREAMREC_*`` variables a client needs for this stack."""
        tls = bool(self.tls_ca)
        env = {
            "REDIS_PASSWORD": self.redis_password,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if tls else "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "KAFKA_SASL_USERNAME": self.kafka_username,
            "KAFKA_SASL_PASSWORD": self.kafka_password,
        }
        if tls:
            env |= {"KAFKA_SSL_CAFILE": self.tls_ca, "REDIS_TLS_CA": self.tls_ca, "REDIS_URL": self.redis_url}
        return {**{f"{ENV_PREFIX}{name}": value for name, value in env.items()}, **dict(self.topology_env)}

    def apply(self, settings: Settings) -> Settings:
        """``settings`` that authenticate to this stack (what the stack's own probes and topic set-up use)."""
        update: dict[str, object] = {
            "redis_password": SecretStr(self.redis_password),
            "kafka_security_protocol": "SASL_SSL" if self.tls_ca else "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": SCRAM_MECHANISM,
            "kafka_sasl_username": self.kafka_username,
            "kafka_sasl_password": SecretStr(self.kafka_password),
        }
        if self.tls_ca:
            update |= {"kafka_ssl_cafile": self.tls_ca, "redis_tls_ca": self.tls_ca,
                       "redis_url": _with_scheme(settings.redis_url, "rediss")}  # the caller's database kept
        return settings.model_copy(update=update)

    def fingerprint(self) -> str:
        """A digest of the Kafka user and password (kept beside the broker's storage, which holds the SCRAM
        user: a new password against an old storage is caught before the broker fails to start)."""
        return hashlib.sha256(f"{self.kafka_username}\0{self.kafka_password}".encode()).hexdigest()


def _with_scheme(url: str, scheme: str) -> str:
    return urlunparse(urlparse(url)._replace(scheme=scheme))


def plaintext(settings: Settings) -> Settings:
    """``settings`` for a stack without credentials (``stack_auth`` off), whatever an older credentials.env said."""
    return settings.model_copy(update={
        "redis_password": SecretStr(""), "kafka_security_protocol": "PLAINTEXT",
        "kafka_sasl_username": "", "kafka_sasl_password": SecretStr(""), "kafka_ssl_cafile": "", "redis_tls_ca": "",
        "redis_url": _with_scheme(settings.redis_url, "redis"),
    })


def _set_aside(layout: StackLayout) -> Path:
    """Where ``stack_auth=false`` keeps the credentials: out of every Settings' sight, yet kept, since the broker's
    storage holds the SCRAM user and turning auth back on must find the same password."""
    return layout.credentials_file.with_name(f"{layout.credentials_file.name}.off")


def load(layout: StackLayout, path: Path | None = None) -> StackCredentials | None:
    """The credentials in ``path`` (default credentials.env); None when there is no file, or when it holds no
    secret (a plaintext cluster stack's file of topology lines only)."""
    path = path or layout.credentials_file
    if not path.is_file():
        return None
    values = dotenv_values(path)

    def get(name: str) -> str:
        return values.get(f"{ENV_PREFIX}{name}") or ""

    if not get("REDIS_PASSWORD") and not get("KAFKA_SASL_PASSWORD"):
        return None
    return StackCredentials(
        redis_password=get("REDIS_PASSWORD"),
        kafka_username=get("KAFKA_SASL_USERNAME"),
        kafka_password=get("KAFKA_SASL_PASSWORD"),
        tls_ca=get("KAFKA_SSL_CAFILE"),
        redis_url=get("REDIS_URL"),
        topology_env=_topology_lines(values),
    )


def _topology_lines(values: Mapping[str, str | None]) -> tuple[tuple[str, str], ...]:
    names = [f"{ENV_PREFIX}{name}" for name in TOPOLOGY_VARIABLES]
    return tuple((name, str(values[name])) for name in names if values.get(name))


def _new_secret() -> str:
    # Hex only: safe unquoted in redis.conf, in a JAAS string and in `kafka-storage format --add-scram`.
    return secrets.token_hex(24)


def ensure(
    settings: Settings, layout: StackLayout, tls_ca: str = "", topology_env: Mapping[str, str] | None = None
) -> StackCredentials:
    """The stack's credentials: those of ``credentials.env`` when it exists, else new ones, written there (with
    ``topology_env``, the lines a cluster stack's clients need)."""
    found = load(layout) or load(layout, _set_aside(layout))
    redis_url = _with_scheme(settings.redis_url, "rediss") if tls_ca else ""
    topology = tuple((topology_env or {}).items())
    if found is not None and found.redis_password and found.kafka_password:
        # TLS or the topology switched: same secrets, other transports or nodes.
        found = replace(found, tls_ca=tls_ca, redis_url=redis_url, topology_env=topology)
        if not layout.credentials_file.is_file() or found != load(layout):
            write(layout, found)
        _set_aside(layout).unlink(missing_ok=True)
        return found
    made = StackCredentials(
        redis_password=settings.redis_password.get_secret_value() or _new_secret(),
        kafka_username=settings.kafka_sasl_username or KAFKA_USER,
        kafka_password=settings.kafka_sasl_password.get_secret_value() or _new_secret(),
        tls_ca=tls_ca,
        redis_url=redis_url,
        topology_env=topology,
    )
    write(layout, made)
    log.info("stack.credentials.created", file=str(layout.credentials_file), kafka_user=made.kafka_username)
    return made


def write(layout: StackLayout, credentials: StackCredentials) -> None:
    """Write ``credentials.env`` with mode 0600 from its first byte (a temporary file renamed into place)."""
    _write_env(layout, credentials.env())


def _write_env(layout: StackLayout, env: Mapping[str, str]) -> None:
    path = layout.credentials_file
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Generated by `streamrec stack up`: this stack's credentials, read by every streamrec process\n")
        out.write("# whose state dir is this folder. Keep it private (mode 0600).\n")
        for name, value in env.items():
            out.write(f"{name}={value}\n")
    os.replace(temporary, path)


def write_topology_only(layout: StackLayout, topology_env: Mapping[str, str]) -> None:
    """A plaintext stack's credentials.env: no secret, only the lines a cluster's clients need (none: no file)."""
    if topology_env:
        _write_env(layout, topology_env)
    elif layout.credentials_file.is_file() and load(layout) is None:
        layout.credentials_file.unlink()


def remove(layout: StackLayout) -> None:
    """Set the credentials aside (``stack_auth`` off): clients must not try to log in to a plaintext stack. A file
    without secrets (topology lines only) is simply removed: it must not replace the set-aside secrets."""
    if load(layout) is not None:
        os.replace(layout.credentials_file, _set_aside(layout))
    else:
        layout.credentials_file.unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """Write a config that holds a secret (redis.conf, server.properties) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file kept its mode through O_TRUNC
    with os.fdopen(fd, "w") as out:
        out.write(text)
