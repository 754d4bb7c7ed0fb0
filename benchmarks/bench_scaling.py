"""Single node beside the cluster, in one run: the stream worker's throughput and the server's latency under load on
the single-node stack and on the cluster stack, on this host (issue 12 item 6).

    python benchmarks/bench_scaling.py [--events 60000] [--rates 100,200,400] [--seconds 6] [--no-serving]
                                       [--keep-stacks]

Two stacks, each in its own state dir and ports (apart from the default stack's and the tests'), started here:

- ``single``: one KRaft broker, one redis-server (``stack up``);
- ``cluster``: three KRaft brokers (topics RF 3, ``min.insync.replicas`` 2) and a Redis Cluster of three masters
  with a replica each (``stack up --brokers 3 --redis-cluster``).

The same generated world and the same small bundle go to every target. Per target, ``bench_worker.py`` (the worker
in its own process on pre-filled topics, beside the raw aiokafka consume rate of the same topic, the floor) and
``bench_serving.py`` (``streamrec serve`` under an open-loop load, beside its component floor, with a worker beside
it), both as child processes given only the state dir and first ports: credentials and topology come from the
stack's credentials.env, as for any process on the host. Worker targets: ``single/slots`` (the default per-slot
protocol), ``single/transaction`` (one ``MULTI`` per batch, one redis-server only) and ``cluster/slots``.

Everything runs on the same cores: the cluster's six redis-servers and three brokers share them with the worker, so
these figures show the protocol's and the topology's cost per event, not the throughput a cluster of machines
gives (that scales with partitions and worker processes: ``docs/capacity.md``). Ratios are against the floors
measured in the same child run. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from foundation.settings import Settings
from tools.datasets.world import generate_world
from tools.stack import manager

REPO = Path(__file__).resolve().parents[1]
STACKS = {  # name -> (brokers, redis cluster, first Kafka port, first Redis port)
    "single": (1, False, 37092, 38379),
    "cluster": (3, True, 37192, 38479),
}
WORKER_TARGETS = (("single", "slots"), ("single", "transaction"), ("cluster", "slots"))


def _base(name: str) -> Settings:
    _, _, kafka, redis = STACKS[name]
    return Settings(_env_file=None, kafka_bootstrap=f"127.0.0.1:{kafka}", kafka_controller_port=kafka + 1,
                    redis_url=f"redis://127.0.0.1:{redis}/0", state_dir=REPO / ".streamrec" / f"bench-scale-{name}")


def _env(name: str, protocol: str = "slots") -> dict[str, str]:
    base = _base(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return env | {"STREAMREC_STATE_DIR": str(base.state_dir), "STREAMREC_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
                  "STREAMREC_KAFKA_CONTROLLER_PORT": str(base.kafka_controller_port),
                  "STREAMREC_REDIS_URL": base.redis_url, "STREAMREC_WORKER_PROTOCOL": protocol,
                  "STREAMREC_LOG_LEVEL": "WARNING"}


def _last_json(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise SystemExit(f"no JSON result in:\n{out[-3000:]}")


def _run(script: str, args: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return _last_json(proc.stdout)


def _train(world: Path, out: Path) -> Path:
    """The small bundle of bench_worker.py (one definition of it)."""
    spec = importlib.util.spec_from_file_location("bench_worker", REPO / "benchmarks" / "bench_worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    artifacts: Path = module._train_small_bundle(world, out)
    return artifacts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rates", default="100,200,400")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--no-serving", action="store_true")
    parser.add_argument("--keep-stacks", action="store_true", help="leave both stacks running afterwards")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench-scaling-")
    world = Path(tmp.name) / "world"
    generate_world(world, users=3000, items=3000, events=args.events, seed=1)
    artifacts = _train(world, Path(tmp.name) / "artifacts")
    results: dict[str, Any] = {"events": args.events, "cores": os.cpu_count(), "worker": {}, "serving": {}}
    try:
        for name, (brokers, cluster, _, _) in STACKS.items():
            asyncio.run(manager.up(_base(name), brokers=brokers, redis_cluster=cluster))
        for name, protocol in WORKER_TARGETS:
            got = _run("bench_worker.py", ["--log", str(world), "--artifacts", str(artifacts), "--no-freshness"],
                       _env(name, protocol), 1800)
            results["worker"][f"{name}/{protocol}"] = got
        if not args.no_serving:
            for name in STACKS:
                got = _run("bench_serving.py", ["--artifacts", str(artifacts), "--data", str(world), "--worker",
                                                "--replay-events", "20000", "--rates", args.rates,
                                                "--seconds", str(args.seconds), "--overload-seconds", "0"],
                           _env(name), 1800)
                results["serving"][name] = got
    finally:
        if not args.keep_stacks:
            for name in STACKS:
                asyncio.run(manager.down(_base(name)))
        tmp.cleanup()

    table = Table(title=f"single node vs cluster, one host ({os.cpu_count()} cores), {args.events:,} events")
    for column in ("target", "worker events/s", "worker CPU us/event", "worker / raw consume", "raw events/s"):
        table.add_column(column, justify="right")
    for target, got in results["worker"].items():
        table.add_row(target, f"{got['worker_events_per_s']:,}", str(got["worker_cpu_us_per_event"]),
                      str(got["worker_vs_raw"]), f"{got['raw_events_per_s']:,}")
    console = Console(stderr=True)
    console.print(table)
    if results["serving"]:
        serving = Table(title="serving: GET /v1/recommendations under open-loop load (p50 / p99 ms)")
        serving.add_column("target")
        for rate in args.rates.split(","):
            serving.add_column(f"{rate}/s", justify="right")
        serving.add_column("p50 / floor", justify="right")
        for name, got in results["serving"].items():
            cells = [f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" for r in got["rates"]]
            serving.add_row(name, *cells, str(got.get("p50_over_floor")))
        console.print(serving)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
