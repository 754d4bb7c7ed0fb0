"""The cluster stack of the tests in this folder: ``stack up --brokers 3 --redis-cluster``, once per module.

Three KRaft brokers (clients on 27092, 27094, 27096; controllers one above each) and a Redis Cluster of six nodes
(28379..28384, cluster bus 10000 above), all shifted by ``STREAMREC_TEST_PORT_OFFSET``, state in
``.streamrec/test-cluster-<offset>`` (wiped first). Ports apart from the session stack's and ``stack_factory``'s
(tests/integration/conftest.py), so both run in one session. Every test here is marked ``cluster``
(``pytest -m cluster`` runs them alone) and, being under tests/integration, ``integration``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator

import pytest
from cluster_support import BROKERS, HERE, STATE_DIR, ClusterStack, base_settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="module")
def cluster_stack() -> Iterator[ClusterStack]:
    from tools.stack import manager

    missing = [tool for tool in ("java", "redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster stack needs {' and '.join(missing)} on PATH (run scripts/bootstrap.sh)")
        pytest.skip(f"the cluster stack needs {' and '.join(missing)} on PATH")
    base = base_settings()
    asyncio.run(manager.down(base))
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    try:
        result = asyncio.run(manager.up(base, brokers=BROKERS, redis_cluster=True))
        yield ClusterStack(base, result.settings, result.seconds, result.started)
    finally:
        asyncio.run(manager.down(base))
