"""Offline equals served: for the same bundle and the same online state (written by a real worker into the
real redis-server), the recommend pipeline run in process and GET /v1/recommendations/{user} return the same
items, in the same order, with the same scores, for a few hundred users of a generated world and of
ml-latest-small.

The offline side reads the state through the online-state layer and calls :mod:`models.recommend.pipeline`
itself; the server does the same behind HTTP. Any step the server adds, drops or computes differently (a
second copy of a stage, another fallback, another request clock) shows up as a differing list. The server
runs without the catalogue tail here: the tail changes the model (titles and vectors after the bundle), not
the online state, and the offline side loads the bundle as published.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from test_worker_dead_letters import per_test_settings, running_worker

from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.config import TwoStageConfig
from models.dataset import load_log
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RankingState, RecommendRequest, rank_and_answer, retrieve
from models.train import train_bundle
from online_state.feature_reads import FeatureReader
from online_state.keys import KeyLayout
from online_state.reads import RequestScopes, SharedReads, read_online_state
from online_state.redis_store import RedisFeatureStore
from serving.app import create_app
from serving.service import RecommendationService
from tools.catch_up import end_offsets, wait_applied
from tools.datasets.movielens import import_movielens
from tools.datasets.world import generate_world
from tools.replay import ReplayOptions, replay_log

pytest.importorskip("torch")

USERS = 200  # asked per world
SMALL = TwoStageConfig(dim=16, rank_users=150, ranker_epochs=1, sequence_epochs=5)


@pytest.fixture(scope="module", params=["generated", "movielens"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(log folder, bundle root) of one world, trained with a small configuration."""
    data = tmp_path_factory.mktemp(f"parity-{request.param}")
    if request.param == "generated":
        generate_world(data, users=300, items=1500, events=20_000, seed=21, days=10)
    else:
        movielens = Settings().movielens_path
        if not (movielens / "ratings.csv").exists():
            pytest.skip(f"ml-latest-small is not at {movielens} (set STREAMREC_MOVIELENS_PATH)")
        import_movielens(movielens, data)
    artifacts = tmp_path_factory.mktemp(f"parity-bundle-{request.param}")
    train_bundle(data, artifacts, SMALL)
    yield data, artifacts
    shutil.rmtree(artifacts, ignore_errors=True)


async def _online_state_of(settings: Settings, data: Path, artifacts: Path, redis: aioredis.Redis) -> None:
    """The log through Kafka and a real worker into Redis; returns once every record is applied."""
    await ensure_topics_retrying(settings)
    await replay_log(data, settings, ReplayOptions())  # as fast as the broker takes it
    ends = await end_offsets(settings)
    async with running_worker(settings, artifacts=artifacts):
        await wait_applied(redis, ends, timeout_s=300)


async def _offline(model: RecommenderModel, redis: aioredis.Redis, request: RecommendRequest) -> list[dict[str, Any]]:
    """The offline system: the same state read through the online-state layer, the pipeline in process."""
    now = int(request.now_ms or 0)
    cfg = model.config.candidates
    keys = KeyLayout()
    online = await read_online_state(redis, keys, request.user_id, RequestScopes(), now, trending_k=cfg.popular,
                                     new_k=2 * cfg.new_releases, space=model.space, dim=model.dim,
                                     shared=SharedReads(0))
    retrieved = retrieve(model, request, online.snapshot(), now)
    reader = FeatureReader(RedisFeatureStore(redis, model.static, keys=keys), 0)
    state = await reader.read(request.user_id, retrieved.item_ids(model), now, user=online.features_user)
    ranked = rank_and_answer(model, request, retrieved, RankingState(state.user, state.items, state.static), now,
                             model.config.post)
    assert ranked.ranker_error is None
    return ranked.answer.items(model)


@contextlib.asynccontextmanager
async def served_client(settings: Settings, artifacts: Path) -> AsyncIterator[TestClient]:
    """The HTTP app with the real service (Redis, ONNX, HNSW) on a loopback port."""

    async def service(s: Settings, a: Path | None) -> RecommendationService:
        return await RecommendationService.start(s, a, tail_index=False, watch_bundle=False)

    client = TestClient(TestServer(create_app(settings, artifacts, service_factory=service)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_offline_and_served_answers_are_the_same(stack: Settings, redis_client: aioredis.Redis,
                                                       world: tuple[Path, Path]) -> None:
    data, artifacts = world
    settings = per_test_settings(stack, "parity").model_copy(update={"artifacts": artifacts})
    await _online_state_of(settings, data, artifacts, redis_client)
    log = load_log(data)
    now = int(log.ts.max()) + 60_000  # one request clock for both sides: decays and windows read alike
    users = np.random.default_rng(0).permutation(log.user_ids)[:USERS].tolist()
    model = RecommenderModel.load(artifacts)
    compared = with_items = 0
    async with served_client(settings, artifacts) as client:
        for user in [*users, "never-seen-user"]:
            response = await client.get(f"/v1/recommendations/{user}", params={"k": "20", "now": str(now)})
            assert response.status == 200
            served = await response.json()
            assert served["degraded"] is False, served.get("degraded_reasons")
            offline = await _offline(model, redis_client, RecommendRequest(user, k=20, now_ms=now))
            assert [i["item_id"] for i in served["items"]] == [i["item_id"] for i in offline], user
            np.testing.assert_allclose([i["score"] for i in served["items"]], [i["score"] for i in offline],
                                       rtol=0, atol=1e-6, err_msg=user)
            assert [i["reason"] for i in served["items"]] == [i["reason"] for i in offline]
            compared += 1
            with_items += bool(offline)
        ready = await (await client.get("/readyz")).json()
        # The served side read every candidate row from its in-process copy of the item state (a snapshot of
        # Redis here: no Kafka tail), the offline side from Redis: the same answers.
        assert ready["item_state"]["loaded"] and ready["item_state"]["reads_held"] == compared, ready
    assert compared == len(users) + 1 and with_items == compared
