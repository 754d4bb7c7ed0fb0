"""Cluster clients built from the settings: every seed node of ``redis_cluster_nodes`` is a startup node, so a process
that starts while ``redis_url``'s node is down still finds the cluster (no connection is made here)."""

from __future__ import annotations

import redis.asyncio.cluster as aiocluster

from foundation.redis_io import redis_client
from foundation.settings import Settings


def _settings(nodes: str) -> Settings:
    return Settings(_env_file=None, redis_url="redis://127.0.0.1:7000/0", redis_cluster=True,
                    redis_cluster_nodes=nodes)


def test_every_seed_node_is_a_startup_node() -> None:
    seeds = "127.0.0.1:7000,127.0.0.1:7001, 127.0.0.1:7002"
    client = redis_client(_settings(seeds), retry_on_timeout=False)  # the servers' option: dropped for a cluster
    assert isinstance(client, aiocluster.RedisCluster)
    assert set(client.nodes_manager.startup_nodes) >= {"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}


def test_without_seed_nodes_the_url_is_the_only_one() -> None:
    client = redis_client(_settings(""))
    assert set(client.nodes_manager.startup_nodes) == {"127.0.0.1:7000"}
