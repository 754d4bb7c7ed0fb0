"""A scratch Redis Cluster for tests and benchmarks: N cluster-enabled ``redis-server`` masters on loopback, no
persistence, joined by ``redis-cli --cluster create``, killed on exit (``with scratch_cluster(dir, ports)``).

Not the deployment stack (that one has replicas, credentials, pid files and ``status``/``down``): this exists so
that a test can start a real cluster in a temporary folder and be sure nothing outlives it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class ScratchClusterError(RuntimeError):
    """The servers or the cluster did not come up."""


def _cli(*args: str) -> bytes:
    return subprocess.run(["redis-cli", *args], capture_output=True, timeout=10, check=False).stdout


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll ``condition()`` (a server's answer: there is no event to await) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise ScratchClusterError(f"timed out waiting for {what}")
        time.sleep(0.05)


def available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


@contextmanager
def scratch_cluster(root: Path, ports: Sequence[int], *, timeout_s: float = 30.0) -> Iterator[list[int]]:
    """Start one master per port (the cluster bus on port + 10000) with its files under ``root``; yields the
    ports once every node reports ``cluster_state:ok``; kills every server on exit, also on failure."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            folder = root / f"redis-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--appendonly", "no",
                 "--save", "", "--dir", str(folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: all(_cli("-p", str(p), "PING").strip() == b"PONG" for p in ports),
                  "the servers to answer PING", timeout_s)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        _wait_for(lambda: all(b"cluster_state:ok" in _cli("-p", str(p), "CLUSTER", "INFO") for p in ports),
                  "cluster_state:ok on every node", timeout_s)
        yield list(ports)
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)


@contextmanager
def scratch_server(root: Path, port: int, *, timeout_s: float = 30.0) -> Iterator[int]:
    """One plain (non-cluster) ``redis-server`` the same way: for comparisons in one run."""
    folder = root / f"redis-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "no",
                             "--save", "", "--dir", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _cli("-p", str(port), "PING").strip() == b"PONG", "the server to answer PING", timeout_s)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)
