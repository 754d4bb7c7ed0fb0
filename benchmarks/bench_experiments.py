"""The experiments' proofs on the simulator (issue 15): A/A x20, two A/Bs, interleaving, a broken assignment.

    streamrec stack up
    python benchmarks/bench_experiments.py [--users 600] [--minutes 4] [--world DIR] [--artifacts DIR]
                                           [--out .artifacts/experiments] [--redis-db 14]

Set-up (as bench_freshness.py): a generated world (or ``--world``), a bundle trained on it with the default
configuration (or ``--artifacts``, or ``--small-bundle``), fresh topics, the world replayed into them, a stream
worker caught up on it, and ``streamrec serve`` with the proof's experiments document (:func:`proof_config`), each a
subprocess on its own Redis database. Then
``streamrec simulate`` drives ``--users`` simulated users of the world through the server for ``--minutes``; once the
worker has applied every event and exposure, each experiment is reported (``models.experiments.report``) from the
worker's exactly-once counts, as ``streamrec experiments report`` does.

Every experiment runs on the same users at once, each in a layer of its own (layers are independent hashes), except
the two ranker experiments, which split the ``ranking`` layer (a user is in one of them):

- ``aa01`` .. ``aa20``: A/A tests (two identical variants): about 5% should flag a difference at alpha = 0.05, and
  none should flag a sample-ratio mismatch;
- ``ranker_ab``: the ranker against retrieval order (A/B, half of the users);
- ``ranker_interleave``: the same two rankings team-drafted into one list (the other half);
- ``learning``: the online state (vector and recent titles learned from the stream) against a frozen model;
- ``srm_broken``: an A/A whose second variant loses the exposures of 10% of its users: the SRM check must flag it.

Prints a summary and writes ``summary.json`` and each report (JSON) into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

# Run as a script: this folder is on sys.path, and the freshness benchmark's process helpers are reused.
from bench_freshness import _spawn, _tail, _wait_ready

from foundation.child_env import settings_env
from foundation.logs import configure_logging
from foundation.redis_io import redis_client
from foundation.settings import Settings, get_settings
from foundation.topics import delete_topics, ensure_topics_retrying
from models.config import TwoStageConfig
from models.experiments.report import build_report
from models.train import train_bundle
from online_state.keys import KeyLayout
from streams.rebuild import delete_state
from tools.catch_up import end_offsets, wait_applied
from tools.datasets.world import generate_world
from tools.experiment_data import load_experiment
from tools.replay import replay_log
from tools.stack.probes import free_port
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[1]
KEYS = KeyLayout()
PARTITIONS = 4
AA = 20
OPERATOR_KEY = "bench-experiments-operator-key"


def proof_config() -> dict[str, Any]:
    def two(name: str, layer: str, b_changes: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        b = {"name": "b", **({"changes": b_changes} if b_changes else {})}
        return {"name": name, "layer": layer, "salt": f"{name}-proof", "variants": [{"name": "a"}, b], **extra}

    experiments = [two(f"aa{i:02d}", f"aa{i:02d}") for i in range(1, AA + 1)]
    experiments += [
        {"name": "ranker_ab", "layer": "ranking", "traffic": 0.5, "salt": "ranker-proof", "variants": [
            {"name": "ranker"}, {"name": "retrieval_order", "changes": {"ranker": False}}]},
        {"name": "ranker_interleave", "layer": "ranking", "traffic": 0.5, "kind": "interleave", "variants": [
            {"name": "ranker"}, {"name": "retrieval_order", "changes": {"ranker": False}}]},
        {"name": "learning", "layer": "learning", "salt": "learning-proof", "variants": [
            {"name": "online"}, {"name": "frozen", "changes": {"online_state": False}}]},
        two("srm_broken", "srm", {"drop_exposures": 0.1}),
    ]
    return {"version": int(time.time()), "experiments": experiments}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=600, help="simulated users")
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock minutes of simulation")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--world", type=Path, help="a generated world (default: generate one)")
    parser.add_argument("--world-users", type=int, default=2000)
    parser.add_argument("--world-items", type=int, default=2000)
    parser.add_argument("--world-events", type=int, default=60_000)
    parser.add_argument("--artifacts", type=Path, help="a bundle root (default: train one on the world)")
    parser.add_argument("--small-bundle", action="store_true",
                        help="train a small, quick bundle (dim 32, 4 ranker epochs) instead of the default config")
    parser.add_argument("--out", type=Path, default=REPO / ".artifacts" / "experiments")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout-s", type=float, default=600.0)
    return parser.parse_args(argv)


def _summarise(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The proofs' figures from the reports (see the module docstring)."""
    def plays(report: dict[str, Any]) -> dict[str, Any]:
        comparison = next(iter(report["comparisons"].values()))
        metric = comparison["metrics"]["plays_per_user"]
        return {"users": comparison["users"], "control": metric["control"], "treatment": metric["treatment"],
                "abs_diff": metric["abs_diff"], "abs_ci": metric["abs_ci"], "rel_diff": metric["rel_diff"],
                "rel_ci": metric["rel_ci"], "p_value": metric["p_value"],
                "always_valid_p": metric["always_valid_p"], "users_needed_per_arm": metric["users_needed_per_arm"],
                "cuped": comparison["cuped"], "srm_p": report["srm"]["p_value"],
                "srm_flagged": report["srm"]["flag"]}

    aa = {name: plays(r) for name, r in reports.items() if name.startswith("aa")}
    out: dict[str, Any] = {
        "aa": {"runs": len(aa), "flagged_at_005": sum(r["p_value"] < 0.05 for r in aa.values()),
               "srm_flagged": sum(bool(r["srm_flagged"]) for r in aa.values()),
               "p_values": sorted(round(r["p_value"], 4) for r in aa.values())},
        "ranker_ab": plays(reports["ranker_ab"]),
        "learning": plays(reports["learning"]),
        "srm_broken": reports["srm_broken"]["srm"],
        "ranker_interleave": reports["ranker_interleave"]["interleaving"],
    }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("WARNING")
    settings = get_settings()
    tmp = tempfile.TemporaryDirectory(prefix="bench-experiments-")
    work = Path(tmp.name)
    world = args.world
    if world is None:
        world = work / "world"
        generate_world(world, users=args.world_users, items=args.world_items, events=args.world_events,
                       seed=args.seed)
    artifacts = args.artifacts
    if artifacts is None:
        artifacts = work / "artifacts"
        config = TwoStageConfig(dim=32, rank_users=600, ranker_epochs=4) if args.small_bundle else TwoStageConfig()
        train_bundle(world, artifacts, config)
    config_path = work / "experiments.json"
    config_path.write_bytes(orjson.dumps(proof_config()))

    tag = uuid.uuid4().hex[:8]
    scoped: Settings = settings.with_topic_prefix(f"exp-{tag}").with_redis_db(args.redis_db).model_copy(update={
        "interactions_partitions": PARTITIONS, "api_key": OPERATOR_KEY, "experiments_file": config_path,
        "artifacts": artifacts})
    env = settings_env(scoped.model_copy(update={"log_level": "WARNING"}))
    client = redis_client(scoped)
    await delete_state(client, KEYS)
    await client.delete(f"{KEYS.prefix}-config:experiments")
    await ensure_topics_retrying(scoped)
    await replay_log(world, scoped)
    topic = scoped.topic_interactions
    ends = await end_offsets(scoped, [topic])

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = _spawn([sys.executable, "-m", "streamrec.commands.worker", "--metrics-port", "0",
                     "--artifacts", str(artifacts)], env, work / "worker.log")
    server: subprocess.Popen[bytes] | None = None
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    result: dict[str, Any] = {"benchmark": "experiments", "users": args.users, "minutes": args.minutes,
                              "cores": os.cpu_count()}
    try:
        await wait_applied(client, ends, args.startup_timeout_s, worker, keys=KEYS)
        server = _spawn([sys.executable, "-m", "streamrec.cli", "serve", "--artifacts", str(artifacts),
                         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env, work / "server.log")
        await _wait_ready(http, base, server, args.startup_timeout_s)
        started = time.perf_counter()
        sim = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "streamrec.cli", "simulate", "--world", str(world),
                             "--users", str(args.users), "--minutes", str(args.minutes), "--url", base,
                             "--api-key", OPERATOR_KEY, "--seed", str(args.seed),
                             "--concurrency", str(args.concurrency), "--json"],
            env=env, cwd=REPO, capture_output=True, text=True)
        if sim.returncode != 0:
            raise RuntimeError(f"simulate failed: {sim.stderr[-3000:]}")
        result["simulation"] = orjson.loads(sim.stdout)
        result["simulation_s"] = round(time.perf_counter() - started, 1)
        await asyncio.sleep(1.0)  # the server's last exposures leave its buffer
        ends = await end_offsets(scoped, [topic])
        await wait_applied(client, ends, args.startup_timeout_s, worker, keys=KEYS)
        reports: dict[str, dict[str, Any]] = {}
        for exp in proof_config()["experiments"]:
            data = await load_experiment(scoped, exp["name"])
            reports[exp["name"]] = build_report(data)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, report in reports.items():
            (args.out / f"{name}.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        result["proofs"] = _summarise(reports)
    except BaseException as exc:
        for name, path in (("worker", work / "worker.log"), ("server", work / "server.log")):
            if path.exists():
                print(f"--- {name} log tail ---\n{_tail(path)}", file=sys.stderr)
        if isinstance(exc, Exception):
            raise RuntimeError(f"experiments benchmark failed: {exc}") from exc
        raise
    finally:
        await http.close()
        if server is not None:
            terminate(server, timeout_s=30)
        terminate(worker, timeout_s=30)
        await delete_state(client, KEYS)
        await client.delete(f"{KEYS.prefix}-config:experiments")
        await client.aclose()
        with contextlib.suppress(Exception):
            await delete_topics(scoped)
        tmp.cleanup()
    (args.out / "summary.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(orjson.dumps(result.get("proofs", result), option=orjson.OPT_INDENT_2).decode())
    return result


if __name__ == "__main__":
    main()
