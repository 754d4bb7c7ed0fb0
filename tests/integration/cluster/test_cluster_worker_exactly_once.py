"""Exactly once on the cluster stack (issue 12 item 5): real worker processes on three KRaft brokers and a Redis
Cluster of three masters with a replica each, through the per-slot protocol (:mod:`streams.slot_protocol`).

The scenario and the ground truth are those of ``tests/integration/test_worker_exactly_once.py`` (loaded by path:
test folders are not packages): the generated world replayed into per-test topics, every effect of the worker's
list compared, after the run, with the effects' pure functions applied once to the whole log (features, trending,
sessions, online user vectors, item learning, event-id windows, offsets, slot markers, dead letters).

1. workers SIGKILLed at random shares of the log and restarted, until every partition reached its end;
2. a Redis master SIGKILLed mid-stream under a running worker: its replica is promoted, the worker rides through
   on its own (no restart), and the state is exact; the killed node then rejoins as a replica.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_support import REDIS_PORT, ClusterStack
from suite_loader import load_test_module

from foundation.redis_io import redis_client
from online_state.keys import DEFAULT_KEYS
from online_state.slot_markers import load_slot_functions
from tools.stack import manager, process
from tools.stack.layout import StackLayout

EO = load_test_module(Path(__file__).resolve().parents[1] / "test_worker_exactly_once.py", "worker_exactly_once_suite")
world = EO.world  # the same generated world and bundle (a module-scoped fixture)


def _env(cluster: ClusterStack, settings: Any) -> dict[str, str]:
    """A worker's environment: the state dir and first ports only (credentials and topology come from
    credentials.env, as for any process on the host), and the test's topics."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_") or k == "STREAMREC_TEST_PORT_OFFSET"}
    stack_env = base | {"STREAMREC_STATE_DIR": str(cluster.base.state_dir),
                        "STREAMREC_REDIS_URL": cluster.base.redis_url,
                        "STREAMREC_KAFKA_CONTROLLER_PORT": str(cluster.base.kafka_controller_port),
                        "STREAMREC_CACHE_DIR": str(cluster.base.cache_dir)}
    return EO._env(stack_env, settings)


async def test_sigkilled_workers_on_the_cluster_end_in_exactly_once_state(
    cluster_stack: ClusterStack, world: Any, tmp_path: Path
) -> None:
    settings = EO._settings(cluster_stack.settings, "ckill")
    assert settings.redis_cluster and settings.kafka_replication_factor == 3
    client = redis_client(settings)
    try:
        ends = await EO._fill(world, settings)
        total = sum(ends.values())
        env = _env(cluster_stack, settings)
        rng = random.Random(7)
        for share in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
            proc = EO._spawn(env, tmp_path / "worker.log", world)
            try:
                await EO._wait_applied(client, settings, int(share * total), 120, [proc])
                await asyncio.sleep(rng.uniform(0.0, 0.05))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        assert await EO._applied(client, settings) < total  # the last kill left work to do
        proc = EO._spawn(env, tmp_path / "worker.log", world)
        try:
            await EO._wait_applied(client, settings, total, 120, [proc])
            await EO._wait_catalog_applied(client, settings, 60, [proc], [tmp_path / "worker.log"])
        finally:
            EO._stop(proc)
        assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
        await EO._assert_all_effects(client, settings, world)
    finally:
        await client.aclose()


async def test_a_redis_master_killed_under_a_worker_fails_over_and_the_state_is_exact(
    cluster_stack: ClusterStack, world: Any, tmp_path: Path
) -> None:
    settings = EO._settings(cluster_stack.settings, "cfail")
    client = redis_client(settings)
    log = tmp_path / "worker.log"
    layout = StackLayout.from_settings(cluster_stack.base)
    victim_name = ""
    try:
        await EO._fill(world, settings, events=False)
        proc = EO._spawn({**_env(cluster_stack, settings), "STREAMREC_LOG_LEVEL": "INFO"}, log, world)
        try:
            ends = await EO._fill(world, settings, catalog=False)
            total = sum(ends.values())
            await EO._wait_applied(client, settings, int(0.3 * total), 120, [proc])
            # The master of partition 0's checkpoint: a node the worker writes to in every batch (not the seed).
            await client.initialize()
            victim_port = int(client.get_node_from_key(DEFAULT_KEYS.offset(settings.topic_interactions, 0)).port)
            if victim_port == REDIS_PORT:
                victim_port = next(int(n.port) for n in client.get_primaries() if int(n.port) != REDIS_PORT)
            victim = layout.redis_node(victim_port - REDIS_PORT)
            victim_name = victim.name
            record = process.read_record(victim.pid_file)
            assert record is not None and process.owns(record)
            applied_before = await EO._applied(client, settings)
            os.kill(record.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            # The worker carries on by itself: the promoted replica takes the writes.
            await EO._wait_applied(client, settings, total, 120, [proc])
            recovered_s = time.monotonic() - killed_at
            await EO._wait_catalog_applied(client, settings, 60, [proc], [log])
        finally:
            EO._stop(proc)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert applied_before < total, "the master was killed after the worker was done: nothing was tested"
        text = log.read_text()
        assert "worker.slot_retry" in text or "worker.batch_failed" in text, "the worker never saw the failover"
        print(f"redis master :{victim_port} killed at {applied_before}/{total} records applied; "
              f"the worker applied the rest {recovered_s:.1f}s later")
        await EO._assert_all_effects(client, settings, world)
    finally:
        await client.aclose()
        if victim_name:
            again = await manager.up(cluster_stack.base)  # the killed node rejoins (as a replica)
            assert again.started == (victim_name,)
            assert again.status.healthy


@pytest.fixture(autouse=True)
async def _fresh_state(cluster_stack: ClusterStack) -> Any:
    """Every test from an empty cluster (the ground truth is one log applied once, under the default prefix), and
    no worker left running after it."""
    client = redis_client(cluster_stack.settings)
    try:
        await client.flushall()  # every primary (redis-py sends FLUSHALL to all of them)
        await load_slot_functions(client)  # FLUSHALL keeps functions; loading again is harmless
    finally:
        await client.aclose()
    yield
    EO.test_no_worker_left_running()
