"""Integration fixtures: one real Kafka broker and redis-server for the whole test session.

The test stack listens on its own ports (Kafka 19092, controller 19093, Redis 16379, all shifted by
``STREAMREC_TEST_PORT_OFFSET``) with its own state dir (``.streamrec/test-stack``, wiped at the
start), so it never clashes with a developer's
``streamrec stack up`` on the default ports. It is stopped at the end of the session, also when
tests fail; a stack left behind by an interrupted session is stopped (by its pid files) first.

Fixtures:

- ``stack``: the :class:`~foundation.settings.Settings` of the running test stack (session). The stack is
  authenticated as ``streamrec stack up`` makes it by default (Redis password, Kafka SASL/SCRAM-SHA-512): these
  settings carry its generated credentials, and so do ``stack_env`` and every client built from them.
- ``kafka_bootstrap``: its bootstrap string, ``"127.0.0.1:19092"``.
- ``redis_client``: a ``redis.asyncio`` client on it, database flushed before each test.
- ``stack_env``: environment variables that point a subprocess (the CLI, a worker) at it.
- ``env_for``: the function behind ``stack_env``, for any ``Settings``.
- ``stack_factory``: starts extra, separate stacks on other ports (stopped after the test).
- ``small_bundle``: a copy, per test module, of one small trained bundle (trained once per session:
  training is most of the worker and serving tests' set-up; a copy because some tests publish new
  versions into it).
- ``eval_world``: the small generated world of the end-to-end ``streamrec eval`` tests (``--served``,
  ``eval-stream``), made once per session by ``streamrec generate``; read only.

Every test under ``tests/integration`` is marked ``integration``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from stack_settings import stack_settings

from foundation.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# STREAMREC_TEST_PORT_OFFSET shifts every port (and the state dir) so that two test sessions on
# one machine (two developers' checkouts, parallel CI jobs) do not share one stack.
_OFFSET = int(os.environ.get("STREAMREC_TEST_PORT_OFFSET", "0"))
TEST_STATE_DIR = REPO_ROOT / ".streamrec" / ("test-stack" if _OFFSET == 0 else f"test-stack-{_OFFSET}")
KAFKA_PORT = 19092 + _OFFSET
KAFKA_CONTROLLER_PORT = 19093 + _OFFSET
REDIS_PORT = 16379 + _OFFSET


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


def settings_env(settings: Settings) -> dict[str, str]:
    """``os.environ`` plus the variables that make a subprocess use ``settings``' stack, credentials included."""
    return {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "STREAMREC_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "STREAMREC_REDIS_URL": settings.redis_url,
        "STREAMREC_STATE_DIR": str(settings.state_dir),
        "STREAMREC_CACHE_DIR": str(settings.cache_dir),
        "STREAMREC_KAFKA_VERSION": settings.kafka_version,
        "STREAMREC_STACK_AUTH": "true" if settings.stack_auth else "false",
        "STREAMREC_STACK_TLS": "true" if settings.stack_tls else "false",
        "STREAMREC_REDIS_USERNAME": settings.redis_username,
        "STREAMREC_REDIS_PASSWORD": settings.redis_password.get_secret_value(),
        "STREAMREC_REDIS_TLS_CA": settings.redis_tls_ca,
        "STREAMREC_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "STREAMREC_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "STREAMREC_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "STREAMREC_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password.get_secret_value(),
        "STREAMREC_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
    }


def start_fresh_stack(settings: Settings) -> Settings:
    """Stop a leftover stack in ``settings.state_dir``, wipe the folder, start a new stack; returns ``settings``
    with the new stack's generated credentials (what every client of it needs)."""
    from tools.stack import manager

    missing = [tool for tool in ("java", "redis-server") if shutil.which(tool) is None]
    if missing:
        # In CI a missing server is a broken set-up, not a reason to pass without integration tests.
        if os.environ.get("CI"):
            pytest.fail(f"integration stack needs {' and '.join(missing)} on PATH (run scripts/bootstrap.sh)")
        pytest.skip(f"integration stack needs {' and '.join(missing)} on PATH (see scripts/bootstrap)")
    asyncio.run(manager.down(settings))
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    try:
        return asyncio.run(manager.up(settings)).settings
    except BaseException:
        asyncio.run(manager.down(settings))
        raise


def stop_stack(settings: Settings) -> None:
    from tools.stack import manager

    asyncio.run(manager.down(settings))


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    settings = stack_settings(TEST_STATE_DIR, KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT)
    settings = start_fresh_stack(settings)
    try:
        yield settings
    finally:
        stop_stack(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Settings) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def stack_env(stack: Settings) -> dict[str, str]:
    return settings_env(stack)


@pytest.fixture(scope="session")
def env_for() -> Callable[[Settings], dict[str, str]]:
    return settings_env


@pytest.fixture
def stack_factory() -> Iterator[Callable[..., Settings]]:
    """``start(name, kafka_port, controller_port, redis_port, **settings)``: a fresh extra stack in
    ``.streamrec/test-stack-NAME`` (``settings`` such as ``stack_tls=True`` override the defaults); every stack
    started this way is stopped after the test."""
    started: list[Settings] = []

    def start(name: str, kafka_port: int, controller_port: int, redis_port: int, **overrides: object) -> Settings:
        settings = stack_settings(
            REPO_ROOT / ".streamrec" / f"test-stack-{name}-{_OFFSET}",
            kafka_port + _OFFSET, controller_port + _OFFSET, redis_port + _OFFSET, **overrides,
        )
        started.append(settings)
        return start_fresh_stack(settings)

    try:
        yield start
    finally:
        for settings in started:
            stop_stack(settings)


@pytest.fixture
async def redis_client(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    from foundation.redis_io import redis_client as make_redis_client

    client = make_redis_client(stack)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def _small_bundle_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from models.config import TwoStageConfig
    from models.train import train_bundle
    from tools.datasets.world import generate_world

    data = tmp_path_factory.mktemp("small-world")
    generate_world(data, users=120, items=600, events=8000, seed=9, days=7)
    root = tmp_path_factory.mktemp("small-bundle")
    train_bundle(data, root, TwoStageConfig(dim=16, rank_users=80, ranker_epochs=1, sequence_epochs=3))
    return root


@pytest.fixture(scope="module")
def small_bundle(_small_bundle_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's small bundle root (with ``latest``), copied for this module."""
    root = tmp_path_factory.mktemp("bundle") / "artifacts"
    shutil.copytree(_small_bundle_source, root)
    return root


@pytest.fixture(scope="session")
def eval_world(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world of 80 users, 300 titles and 6,000 events over 6 days (seed 3), made by the CLI as a user makes
    one: small enough for a whole evaluation run in a test. The runs write beside their ``--out``, never into it."""
    world = tmp_path_factory.mktemp("eval-world") / "world"
    generated = subprocess.run([sys.executable, "-m", "streamrec.cli", "generate", "--out", str(world),
                                "--users", "80", "--items", "300", "--events", "6000", "--days", "6", "--seed", "3"],
                               env=stack_env, capture_output=True, text=True, timeout=120, check=False)
    assert generated.returncode == 0, generated.stderr
    return world


def _forget_experiments(settings: Settings) -> None:
    from foundation.redis_io import redis_client_sync
    from online_state.experiment_config import config_key
    from online_state.keys import DEFAULT_KEYS

    client = redis_client_sync(settings)
    try:
        client.delete(config_key(DEFAULT_KEYS))
    finally:
        client.close()


@pytest.fixture
def no_experiments_document(stack: Settings) -> Iterator[None]:
    """No experiments document stored in the session's Redis before or after the test: every server of the session
    follows the stored one, so a test that stores one (PUT /v1/experiments, a file) must not leave it to the next."""
    _forget_experiments(stack)
    yield
    _forget_experiments(stack)
