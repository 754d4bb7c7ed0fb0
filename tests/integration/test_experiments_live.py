"""Experiments end to end on the real broker and Redis: the document (file, GET/PUT), assignment in answers,
exposures on Kafka, the worker's exactly-once counts, and ``streamrec experiments report``.

The app runs in-process with the real service and producer (as in test_serving_http_live.py); a real worker
counts; the report runs as the CLI a user runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from test_serving_http_live import REC, _read_topic, running_api
from test_worker_dead_letters import _wait_for, per_test_settings, running_worker, send_records

from foundation.child_env import settings_env
from foundation.settings import Settings
from models.bundle import open_bundle
from models.experiments.assignment import assign
from models.experiments.config import parse_config
from online_state.experiments import read_experiment_data
from online_state.keys import DEFAULT_KEYS

REPO = Path(__file__).resolve().parents[2]
NOW = 1_760_000_000_000
EXPS = "/v1/experiments"

CONFIG: dict[str, Any] = {"version": 1, "experiments": [
    {"name": "ranker", "layer": "ranking", "traffic": 0.5, "salt": "it-ranker", "variants": [
        {"name": "control"}, {"name": "retrieval_order", "changes": {"ranker": False}}]},
    {"name": "draft", "layer": "ranking", "traffic": 0.5, "kind": "interleave", "variants": [
        {"name": "ranked"}, {"name": "retrieval_order", "changes": {"ranker": False}}]},
]}


@pytest.fixture(scope="module")
def artifacts(small_bundle: Path) -> Path:
    return small_bundle


def _play(user: str, item: str, request_id: str | None, n: int) -> bytes:
    event = {"type": "play", "event_id": f"p-{user}-{item}-{n}", "ts": NOW + 1000 + n, "schema_version": 1,
             "user_id": user, "item_id": item}
    if request_id is not None:
        event["request_id"] = request_id
    return orjson.dumps(event)


@pytest.mark.usefixtures("no_experiments_document")
async def test_experiment_runs_from_the_document_to_the_report(
        stack: Settings, redis_client: aioredis.Redis, artifacts: Path, tmp_path: Path) -> None:
    await redis_client.flushall()
    path = tmp_path / "experiments.json"
    path.write_bytes(orjson.dumps(CONFIG))
    settings = per_test_settings(stack, "experiments").model_copy(update={
        "experiments_file": path, "experiments_refresh_s": 0.2, "exposure_flush_ms": 20,
        "artifacts": artifacts})
    config = parse_config(CONFIG)
    users: list[str] = open_bundle(artifacts).json("user_ids")[:40]
    answers: dict[str, list[dict[str, Any]]] = {}
    async with running_api(settings, artifacts) as api:
        doc = await api.call("GET", EXPS, EXPS, expect=200)
        assert doc["version"] == 1 and [e["name"] for e in doc["experiments"]] == ["ranker", "draft"]
        bad = {**CONFIG, "version": 2, "experiments": [{**CONFIG["experiments"][0], "traffic": 2}]}
        refused = await api.call("PUT", EXPS, EXPS, expect=400, data=orjson.dumps(bad))
        assert refused["error"]["field"] == "experiments[0].traffic"
        stale = await api.call("PUT", EXPS, EXPS, expect=409, data=orjson.dumps(CONFIG))
        assert stale["stored_version"] == 1
        unauthorised = await api.call("GET", EXPS, EXPS, expect=401, headers={"X-API-Key": "srk_wrong"})
        assert unauthorised["error"]["field"] == "X-API-Key"

        for user in users:
            for n in range(2):  # sticky: the same variant on every request
                body = await api.call("GET", f"/v1/recommendations/{user}?k=8&now={NOW + n}", REC, expect=200)
                expected = [{"name": a.experiment, "variant": a.variant} for a in assign(config, user, NOW + n)]
                assert body["experiments"] == expected, (user, body.get("experiments"))
                assert "_teams" not in body
                answers.setdefault(user, []).append(body)
        in_draft = [u for u in users if answers[u][0]["experiments"][0]["name"] == "draft"]
        assert 5 < len(in_draft) < 35, "the layer splits its users between the two experiments"

        # A newer document reaches the server without a restart: the ranker experiment stopped, nobody in it.
        newer = {**CONFIG, "version": 2, "experiments": [{**CONFIG["experiments"][0], "stop": NOW}]}
        await api.call("PUT", EXPS, EXPS, expect=200, data=orjson.dumps(newer))
        body = await api.call("GET", f"/v1/recommendations/{users[0]}?k=8&now={NOW + 5}", REC, expect=200)
        assert "experiments" not in body or body["experiments"][0]["name"] != "ranker"
        await api.call("PUT", EXPS, EXPS, expect=200, data=orjson.dumps({**CONFIG, "version": 3}))
        await asyncio.sleep(0.3)  # the exposures' buffer flushes every 20 ms

    # Every answer in an experiment became one exposure on the user's partition of the interactions topic.
    requests = sum(len(a) for a in answers.values()) + 1
    records = await _read_topic(settings, settings.topic_interactions, requests - 1)
    exposures = [(key, value) for key, value in records if value["type"] == "impression"]
    by_request = {value["request_id"]: value for _, value in exposures}
    assert len(exposures) >= requests - 1 and all(key.decode() == v["user_id"] for key, v in exposures)
    for bodies in answers.values():
        for body in bodies:
            exposure = by_request[body["request_id"]]
            assert exposure["item_ids"] == [i["item_id"] for i in body["items"]]
            tag = exposure["experiments"][0]
            assert (tag["name"], tag["variant"]) == (body["experiments"][0]["name"], body["experiments"][0]["variant"])
            if tag["name"] == "draft":
                assert sorted(set(tag["teams"])) == ["ranked", "retrieval_order"]
                assert len(tag["teams"]) == len(exposure["item_ids"])

    # Outcomes: each user plays the first title of its first answer (with the request id) and, without one, the
    # second title; then the same plays again (a client retry: same event ids) must not count twice.
    plays = []
    for user, bodies in answers.items():
        first = bodies[0]
        plays.append((user, _play(user, first["items"][0]["item_id"], first["request_id"], 0)))
        plays.append((user, _play(user, first["items"][1]["item_id"], None, 1)))
    await send_records(settings, settings.topic_interactions, plays + plays)
    ranker_users = {u for u in users if answers[u][0]["experiments"][0]["name"] == "ranker"}

    async with running_worker(settings, artifacts=artifacts):
        async def counted() -> bool:
            data = await read_experiment_data(redis_client, DEFAULT_KEYS, "ranker", "ab",
                                              {"control": 1.0, "retrieval_order": 1.0})
            return sum(int(v.plays.sum()) for v in data.variants) >= 2 * len(ranker_users)
        await _wait_for(counted, seconds=90)
        await asyncio.sleep(1.0)  # anything more would be a double count

    data = await read_experiment_data(redis_client, DEFAULT_KEYS, "ranker", "ab",
                                      {"control": 1.0, "retrieval_order": 1.0})
    assert {u for v in data.variants for u in v.users} == ranker_users
    for variant in data.variants:
        assert set(variant.users) == {u for u in ranker_users if answers[u][0]["experiments"][0]["variant"]
                                      == variant.name}
        assert variant.exposures.tolist() == [2] * variant.n_users  # both answers (the third came after the stop)
        assert variant.plays.tolist() == [2] * variant.n_users, "each play once, retries not counted"
        assert variant.hits.tolist() == [2] * variant.n_users  # both plays were of titles shown
    draft = await read_experiment_data(redis_client, DEFAULT_KEYS, "draft", "interleave",
                                       {"ranked": 1.0, "retrieval_order": 1.0})
    credits = sum(int(v.credit.sum()) for v in draft.variants)
    assert credits == 2 * len(in_draft), "every play of a drafted title credits exactly one team"

    argv = [sys.executable, "-m", "streamrec.cli", "experiments", "report", "ranker", "--json",
            "--plots", str(tmp_path / "plots")]
    result = await asyncio.to_thread(subprocess.run, argv, env=settings_env(settings), cwd=REPO,
                                     capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert {v["name"]: v["users"] for v in report["variants"]} == {v.name: v.n_users for v in data.variants}
    assert report["srm"]["flag"] is False
    assert list((tmp_path / "plots").glob("*.png"))
