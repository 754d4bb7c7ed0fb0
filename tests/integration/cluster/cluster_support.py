"""Constants and types shared by the cluster tests and their conftest (a module of its own: test folders have no
__init__.py, so neither can import the other's conftest)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stack_settings import stack_settings

from foundation.settings import Settings

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
_OFFSET = int(os.environ.get("STREAMREC_TEST_PORT_OFFSET", "0"))
STATE_DIR = REPO_ROOT / ".streamrec" / f"test-cluster-{_OFFSET}"
KAFKA_PORT = 27092 + _OFFSET
KAFKA_CONTROLLER_PORT = 27093 + _OFFSET
REDIS_PORT = 28379 + _OFFSET
BROKERS = 3


@dataclass(frozen=True)
class ClusterStack:
    base: Settings  # what a caller of `stack up` gives: state dir and first ports, no credentials, no topology
    settings: Settings  # what `up` returned: credentials, the full bootstrap list, the cluster client
    seconds: float  # how long the one `up` call took
    started: tuple[str, ...]


def base_settings() -> Settings:
    """Settings for the cluster stack's ports and state dir (not from files: an older credentials.env must not
    leak in)."""
    return stack_settings(STATE_DIR, KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT)
