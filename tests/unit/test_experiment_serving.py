"""The server applies an experiment's variant to the answer it changes, and nothing else (serving/service.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator
from typing import Any

import fakeredis.aioredis
import numpy as np
import pytest
from test_recommend_pipeline import NOW, tiny_model

from foundation.settings import Settings
from models.experiments.assignment import Assignment
from models.experiments.config import Changes, parse_config
from models.features.batch import FeatureBatch
from models.recommend.pipeline import RecommendRequest
from schemas.events import Impression
from serving.exposures import exposure_of
from serving.options import ServingOptions
from serving.service import RecommendationService

# fakeredis' pipelines (the service's one read per request) are garbage-collected unclosed: a ResourceWarning of the
# fake, not of the service (the live tests run the same reads on redis-server).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _ReverseRanker:
    """Scores the candidates in the reverse of their merged order: a ranking unlike retrieval order."""

    def score(self, batch: FeatureBatch) -> np.ndarray:
        return np.arange(len(batch), dtype=np.float32)


@pytest.fixture
async def service() -> AsyncIterator[RecommendationService]:
    model = tiny_model()
    model.ranker = _ReverseRanker()  # type: ignore[assignment]
    redis = fakeredis.aioredis.FakeRedis()
    options = ServingOptions(shared_reads_ttl_s=0)
    served = RecommendationService._serve(model, redis, options)
    service = RecommendationService(Settings(), None, served, redis, options)  # type: ignore[arg-type]
    yield service
    await service.close()
    gc.collect()  # the fake's unclosed pipelines go now, under this module's warning filter, not at exit


def _ids(body: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in body["items"]]


async def test_a_variant_changes_its_users_answers_and_the_body_names_it(service: RecommendationService) -> None:
    req = RecommendRequest("u0", request_id="r1", k=8, now_ms=NOW)
    control = await service.recommend(req, [Assignment("ranker", "control")])
    plain = await service.recommend(req)
    off = await service.recommend(req, [Assignment("ranker", "retrieval_order", "ab", Changes(ranker=False))])
    assert _ids(control) == _ids(plain), "the control variant is the default system"
    assert "experiments" not in plain
    assert control["experiments"] == [{"name": "ranker", "variant": "control"}]
    assert off["experiments"] == [{"name": "ranker", "variant": "retrieval_order"}]
    assert _ids(off) != _ids(control), "the ranker off serves retrieval order"
    assert not off["degraded"] and not control["degraded"]
    # Candidate budgets per source: with every source but popularity at 0, only trending titles are retrieved.
    budgets = {s: 0 for s in ("ann_cf", "content", "new_releases", "byw", "item_item", "sequence")}
    narrow = await service.recommend(req, [Assignment("c", "narrow", "ab", Changes(candidates=budgets))])
    assert all(i["sources"] in (["trending"], []) for i in narrow["items"]), narrow["items"]


async def test_interleaving_drafts_from_both_rankings_and_names_the_teams(service: RecommendationService) -> None:
    req = RecommendRequest("u0", request_id="r2", k=8, now_ms=NOW)
    ranked = _ids(await service.recommend(req))
    retrieval = _ids(await service.recommend(req, [Assignment("x", "b", "ab", Changes(ranker=False))]))
    teams = (("ranked", Changes()), ("retrieval", Changes(ranker=False)))
    body = await service.recommend(req, [Assignment("draft", "interleaved", "interleave", teams=teams)])
    got, names = _ids(body), body["_teams"]["draft"]
    assert len(got) == 8 == len(set(got)) and len(names) == 8
    for pos, (item, team) in enumerate(zip(got, names, strict=True)):
        ranking = ranked if team == "ranked" else retrieval
        assert item == next(i for i in ranking if i not in got[:pos]), "each pick is its team's best remaining"
    assert {"ranked", "retrieval"} == set(names)

    # The exposure names the teams per position; the client's body keeps only {name, variant}.
    exposure = exposure_of(req, body, 0.004, None)
    assert exposure is not None and "_teams" not in body
    event = exposure.event
    assert isinstance(event, Impression) and event.item_ids == got and event.request_id == "r2"
    assert event.experiments is not None and event.experiments[0].teams == names
    assert event.server_ms == 4.0


def test_a_variant_dropping_exposures_drops_a_stable_share_of_its_users() -> None:
    config = parse_config({"version": 1, "experiments": [{"name": "e", "variants": [
        {"name": "a"}, {"name": "b", "changes": {"drop_exposures": 0.1}}]}]})
    kept = {"a": 0, "b": 0}
    for n in range(4000):
        for variant in ("a", "b"):
            body = {"items": [{"item_id": "i1"}], "experiments": [{"name": "e", "variant": variant}]}
            if exposure_of(RecommendRequest(f"u{n}", "r", now_ms=NOW), body, 0.001, config) is not None:
                kept[variant] += 1
    assert kept["a"] == 4000
    assert 0.87 < kept["b"] / 4000 < 0.93, kept


async def test_frozen_state_ignores_the_online_vector_and_recent_titles(service: RecommendationService) -> None:
    req = RecommendRequest("u0", request_id="r3", k=8, now_ms=NOW)
    online = await service._retrieve(service._served, req, 0.0)
    frozen = await service._retrieve(service._served, req, 0.0, Changes(online_state=False))
    assert frozen.retrieved.user.vector is not None  # the bundle's vector of the user
    np.testing.assert_array_equal(frozen.retrieved.user.history_items, online.retrieved.user.history_items)
    assert dataclasses.replace(frozen.snapshot).recent == ()


async def test_a_variant_on_another_bundle_serves_it_once_loaded(service: RecommendationService,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    other = tiny_model()
    other.version = "v2"
    loads: list[str | None] = []

    def load(_root: object, version: str | None = None) -> Any:
        loads.append(version)
        return other

    monkeypatch.setattr("serving.service.RecommenderModel.load", load)
    req = RecommendRequest("u0", request_id="r4", k=5, now_ms=NOW)
    variant = [Assignment("bundles", "v2", "ab", Changes(bundle="v2")), Assignment("ranker", "control")]
    first = await service.recommend(req, variant)
    # Not loaded yet: the default system answers, and only the experiments that ran are named (and exposed).
    assert first["model_version"] == "v1" and first["experiments"] == [{"name": "ranker", "variant": "control"}]
    await asyncio.gather(*service._loading.values())
    second = await service.recommend(req, variant)
    assert second["model_version"] == "v2" and [e["name"] for e in second["experiments"]] == ["bundles", "ranker"]
    assert (await service.recommend(req))["model_version"] == "v1", "users outside the variant keep the default"
    assert loads == ["v2"], "loaded once"
