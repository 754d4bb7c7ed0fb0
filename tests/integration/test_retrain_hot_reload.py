"""Gated retraining from the live stream, with hot reload (issue 13 item 5), on a small generated world.

A worker and a server run on a first bundle (trained on the older half of the world) while the whole world is in
Kafka and a client keeps asking ``GET /v1/recommendations/{user}``. ``streamrec retrain`` (one-shot, from the
topics) trains a candidate without the newest window, scores both on it, publishes (exit 0), and records the
comparison in the candidate's manifest; the server and the worker then switch to it by themselves, and the worker
keeps applying new events with it. Then a deliberately worse bundle (trained on a log whose titles are scrambled) is
offered with ``--candidate``: refused (exit 3), ``latest`` unchanged, the server still on the good bundle. Through
it all, not one request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from test_worker_dead_letters import per_test_settings, running_worker, send_records

from foundation.child_env import settings_env
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import latest_version, open_bundle
from models.config import TwoStageConfig
from models.dataset import load_log
from models.train import train_log_bundle
from serving.app import create_app
from serving.options import options_from_settings
from serving.service import RecommendationService
from tools.catch_up import end_offsets, wait_applied
from tools.datasets.world import generate_world
from tools.replay import ReplayOptions, replay_log

pytest.importorskip("torch")

SMALL = TwoStageConfig(dim=16, rank_users=150, ranker_epochs=1, sequence_epochs=3)
POLL_S = 0.2  # the worker's and the server's `latest` polls


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """(log folder, artifacts root, first version): the first bundle is trained on the older half of the world,
    as if trained a few days ago; the newer half is what a retrain learns from."""
    data = tmp_path_factory.mktemp("retrain-world")
    generate_world(data, users=300, items=1500, events=20_000, seed=21, days=10)
    artifacts = tmp_path_factory.mktemp("retrain-bundles")
    log = load_log(data)
    older = log.select(log.ts < np.quantile(log.ts, 0.5))
    path, _ = train_log_bundle(older, artifacts, "older-half", SMALL)
    yield data, artifacts, path.name
    shutil.rmtree(artifacts, ignore_errors=True)


def _env(settings: Settings) -> dict[str, str]:
    # Every setting (this test's topics included) as a variable, so the subprocess can't read another stack's.
    return {**settings_env(settings), "STREAMREC_LOG_JSON": "true"}


async def _retrain(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``streamrec retrain ARGS`` in a subprocess (the CLI, its exit code), off the loop: the client keeps asking."""
    command = [sys.executable, "-m", "streamrec.cli", "retrain", "--out", str(settings.artifacts), *args]
    return await asyncio.to_thread(subprocess.run, command, env=_env(settings), capture_output=True, text=True,
                                   timeout=600, cwd=os.getcwd())


@dataclasses.dataclass
class ClientLoop:
    """Asks for recommendations without pause and keeps every outcome."""

    client: TestClient
    users: list[str]
    answers: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    versions: list[str] = dataclasses.field(default_factory=list)  # each answer's model_version, in order
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def run(self) -> None:
        rng = np.random.default_rng(5)
        while not self.stop.is_set():
            user = self.users[int(rng.integers(len(self.users)))]
            try:
                response = await self.client.get(f"/v1/recommendations/{user}", params={"k": "10"})
                body = await response.json()
                if response.status != 200:
                    self.failures.append(f"{user}: HTTP {response.status} {body}")
                elif not body.get("items") or "internal" in (body.get("degraded_reasons") or []):
                    self.failures.append(f"{user}: fallback answer {body.get('degraded_reasons')}")
                else:
                    self.versions.append(body["model_version"])
                    self.answers += 1
            except Exception as exc:
                self.failures.append(f"{user}: {exc!r}")
            await asyncio.sleep(0.005)

    def served_since(self, start: int) -> set[str]:
        return set(self.versions[start:])


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[TestClient]:
    """The HTTP app with the real service (Redis, ONNX, HNSW, the Kafka tails, the bundle watcher)."""
    options = dataclasses.replace(options_from_settings(settings), bundle_poll_s=POLL_S)

    async def service(s: Settings, a: Path | None) -> RecommendationService:
        return await RecommendationService.start(s, a, tail_index=True, watch_bundle=True, options=options)

    client = TestClient(TestServer(create_app(settings, settings.artifacts, service_factory=service)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _scrambled_log(data: Path) -> Any:
    """The world with every title swapped for another (a bijection): the same amount of data, nothing true in it."""
    log = load_log(data)
    perm = np.random.default_rng(1).permutation(log.catalog.n_items).astype(np.int32)
    item = log.item.copy()
    known = item >= 0
    item[known] = perm[item[known]]
    return dataclasses.replace(log, item=item)


def _play(user: str, item: str, ts: int, n: int) -> bytes:
    return orjson.dumps({"type": "play", "event_id": f"after-reload-{n}", "ts": ts, "schema_version": 1,
                         "user_id": user, "item_id": item})


async def test_retrain_publishes_hot_reloads_and_refuses_a_worse_bundle(
        stack: Settings, redis_client: aioredis.Redis, world: tuple[Path, Path, str]) -> None:
    data, artifacts, first = world
    settings = per_test_settings(stack, "retrain").model_copy(update={"artifacts": artifacts})
    await ensure_topics_retrying(settings)
    await replay_log(data, settings, ReplayOptions())
    ends = await end_offsets(settings)
    log = load_log(data)
    users = log.user_ids[:150]
    async with running_worker(settings, artifacts=artifacts, bundle_poll_s=POLL_S) as worker:
        await wait_applied(redis_client, ends, timeout_s=300)
        assert worker.bundle is not None and worker.bundle.version == first
        async with served(settings) as client:
            loop = ClientLoop(client, users)
            task = asyncio.create_task(loop.run())
            try:
                await _until(lambda: loop.answers >= 20, 60, "the first answers")
                assert loop.served_since(0) == {first}

                # 1. A retrain from the topics: better than the bundle of the older half -> published.
                began = time.monotonic()
                done = await _retrain(settings, "--window-share", "0.2", "--max-users", "200")
                retrained = time.monotonic()
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
                result = orjson.loads(done.stdout[done.stdout.index("{"):])
                assert result["outcome"] == "published"
                candidate = result["candidate"]
                assert candidate != first and latest_version(artifacts) == candidate
                retrain = open_bundle(artifacts, candidate).manifest["retrain"]
                assert retrain["outcome"] == "published" and retrain["publish"] is True
                assert retrain["current_version"] == first
                assert set(retrain["candidate"]) == set(retrain["current"]) == {"ndcg@10", "recall@20"}
                assert retrain["window"]["test_users"] > 50 and retrain["tolerance"] == pytest.approx(0.02)

                # 2. The running server and worker switch by themselves.
                mark = len(loop.versions)
                await _until(lambda: candidate in loop.served_since(mark), 60, "answers from the new bundle")
                await _until(lambda: worker.bundle is not None and worker.bundle.version == candidate, 60,
                             "the worker's reload")
                assert worker.bundle_reloads == 1
                print(f"retrain (subprocess, from Kafka) {retrained - began:.1f} s; server and worker on the new "
                      f"bundle {time.monotonic() - retrained:.2f} s later; gate {retrain['candidate']} vs "
                      f"{retrain['current']}")
                switched = loop.versions.index(candidate)
                assert set(loop.versions[switched:]) == {candidate}  # one swap, never back

                # ... and the worker applies new events with it (nothing lost across the swap).
                now = int(log.ts.max()) + 60_000
                items = log.catalog.item_ids
                await send_records(settings, settings.topic_interactions,
                                   [(users[n], _play(users[n], items[n], now + n, n)) for n in range(40)])
                await wait_applied(redis_client, await end_offsets(settings), timeout_s=60)

                # 3. A deliberately worse bundle is refused; `latest` and the server stay on the good one.
                bad, _ = await asyncio.to_thread(train_log_bundle, _scrambled_log(data), artifacts, "scrambled",
                                                 SMALL, make_latest=False)
                done = await _retrain(settings, "--candidate", bad.name, "--data", str(data),
                                      "--window-share", "0.2", "--max-users", "200")
                assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
                result = orjson.loads(done.stdout[done.stdout.index("{"):])
                assert result["outcome"] == "refused" and result["candidate"] == bad.name
                assert latest_version(artifacts) == candidate
                refused = open_bundle(artifacts, bad.name).manifest["retrain"]
                assert refused["outcome"] == "refused" and refused["current_version"] == candidate
                assert refused["candidate"]["ndcg@10"] < refused["current"]["ndcg@10"]
                print(f"refused: {refused['reason']}")
                mark = len(loop.versions)
                await asyncio.sleep(POLL_S * 10)
                await _until(lambda: len(loop.versions) > mark + 20, 30, "more answers")
                assert loop.served_since(mark) == {candidate}
                assert worker.bundle is not None and worker.bundle.version == candidate
            finally:
                loop.stop.set()
                await task
    print(f"answers {loop.answers}, failed {len(loop.failures)}")
    assert loop.failures == [], loop.failures[:10]
    assert loop.answers > 100


async def test_train_from_kafka_reads_the_topics_into_an_event_log(
        stack: Settings, world: tuple[Path, Path, str], tmp_path: Path) -> None:
    """``streamrec train --from-kafka``: the topics (invalid records skipped and counted) back into the log folder
    that ``load_log`` reads, archived a file per day, and a bundle trained from it."""
    data, _artifacts, _first = world
    settings = per_test_settings(stack, "from-kafka").model_copy(update={"artifacts": tmp_path / "bundles"})
    await ensure_topics_retrying(settings)
    report = await replay_log(data, settings, ReplayOptions())
    await send_records(settings, settings.topic_interactions, [("u-bad", b'{"type": "play"}'), ("u-bad", b"not json")])
    log_dir = tmp_path / "log"
    command = [sys.executable, "-m", "streamrec.cli", "train", "--from-kafka", "--log-dir", str(log_dir), "--per-day",
               "--out", str(settings.artifacts), "--dim", "8", "--rank-users", "50", "--epochs", "1",
               "--sequence-epochs", "3"]
    done = await asyncio.to_thread(subprocess.run, command, env=_env(settings), capture_output=True, text=True,
                                   timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = orjson.loads(done.stdout[done.stdout.index("{"):])
    original = load_log(data)
    assert summary["kafka"]["invalid"] == 2
    assert summary["kafka"]["events"] + summary["kafka"]["catalog"] == report.published
    read = load_log(log_dir)
    assert read.n_events == original.n_events and sorted(read.catalog.item_ids) == sorted(original.catalog.item_ids)
    np.testing.assert_array_equal(read.ts, original.ts)  # time-ordered again across the partitions

    def rows(log: Any) -> list[tuple[int, str, str]]:
        items = [log.catalog.item_ids[i] if i >= 0 else "" for i in log.item.tolist()]
        return sorted(zip(log.ts.tolist(), [log.user_ids[u] for u in log.user.tolist()], items, strict=True))

    assert rows(read) == rows(original)  # the same events, whatever order equal times came in
    days = sorted((log_dir / "days").glob("*.jsonl"))
    assert len(days) >= 10 and sum(len(p.read_bytes().splitlines()) for p in days) == summary["kafka"]["events"]
    bundle = open_bundle(settings.artifacts)
    assert bundle.manifest["metrics"]["data"]["events"] == original.n_events
