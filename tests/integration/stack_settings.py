"""Settings of a local test stack on given ports: one definition for the session stack (conftest.py), the stacks
tests start on other ports, and the cluster stack (cluster/cluster_support.py)."""

from __future__ import annotations

from pathlib import Path

from foundation.settings import Settings


def stack_settings(
    state_dir: Path, kafka_port: int, controller_port: int, redis_port: int, **overrides: object
) -> Settings:
    """Settings for a local stack on the given ports (the rest comes from the environment; not from files: the
    credentials.env of an older stack in ``state_dir`` must not leak into the new one)."""
    return Settings(
        _env_file=None,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_controller_port=controller_port,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        state_dir=state_dir,
        **overrides,
    )
