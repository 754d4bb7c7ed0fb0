"""The Python client against a real server (the app on a real port, the session's Kafka and redis-server): typed
answers, the API's errors, and events that reach Kafka with the ids the client gave them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from test_serving_http_live import OPERATOR_KEY, T0, _read_topic
from test_worker_dead_letters import per_test_settings

from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import open_bundle
from schemas.decoder import EventError
from serving.app import create_app
from streamrec.client import ApiError, AsyncClient, Client, EventProducer


async def _ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url) as http:
        while True:
            response = await http.get("/readyz")
            if response.status_code == 200 and response.json().get("events_producer"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(response.text)
            await asyncio.sleep(0.2)


async def test_async_and_sync_clients_read_and_write_through_a_real_server(
        stack: Settings, redis_client: Any, small_bundle: Path) -> None:
    settings = per_test_settings(stack, "client").model_copy(update={"api_key": OPERATOR_KEY})
    await ensure_topics_retrying(settings)
    bundle = open_bundle(small_bundle)
    user, item = bundle.json("user_ids")[0], bundle.json("item_ids")[0]
    server = TestServer(create_app(settings, small_bundle))
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        await _ready(url)
        async with AsyncClient(url, api_key=OPERATOR_KEY) as api:
            recs = await api.recommendations(user, k=10, device="tv", country="NL", hour=20)
            assert recs.user_id == user and recs.model_version == bundle.version and len(recs.items) == 10
            assert all(i.item_id in set(bundle.json("item_ids")) and i.sources for i in recs.items)
            similar = await api.similar(item, k=5)
            assert similar.item_id == item and 0 < len(similar.items) <= 5
            page = await api.homepage(user, rows=4, per_row=5, device="tv", country="NL")
            assert page.user_id == user and page.model_version == bundle.version and 0 < len(page.rows) <= 4
            assert all(0 < len(row.items) <= 5 and row.title and row.items[0].title for row in page.rows)
            assert "top_picks" in [row.id for row in page.rows]
            with pytest.raises(ApiError) as caught:
                await api.homepage(user, per_row=0)
            assert caught.value.status == 400 and caught.value.field == "per_row"
            with pytest.raises(ApiError) as caught:
                await api.recommendations(user, k=0)
            assert caught.value.status == 400 and caught.value.field == "k"
            plays = [{"type": "play", "ts": T0 + n, "schema_version": 1, "user_id": "client-u", "item_id": item}
                     for n in range(2)]
            sent = await api.send_events(plays)
            assert sent.accepted == 2 and not sent.refused and len(set(sent.event_ids)) == 2
        arrived = await _read_topic(settings, settings.topic_interactions, 2)
        assert sorted(body["event_id"] for _, body in arrived) == sorted(sent.event_ids)

        def blocking() -> tuple[list[str], list[str]]:  # the sync client, off the loop that serves it
            with Client(url, api_key=OPERATOR_KEY) as sync_api:
                listed = sync_api.recommendations(user, k=10, device="tv", country="NL", hour=20, now_ms=recs_now)
                page = sync_api.homepage(user, rows=4, per_row=5, device="tv", country="NL", now_ms=recs_now)
                return [i.item_id for i in listed.items], [row.id for row in page.rows]

        recs_now = T0 + 10 ** 9
        async with AsyncClient(url) as api:  # reads need no key
            expected = [i.item_id for i in (await api.recommendations(user, k=10, device="tv", country="NL",
                                                                      hour=20, now_ms=recs_now)).items]
            rows = [row.id for row in (await api.homepage(user, rows=4, per_row=5, device="tv", country="NL",
                                                          now_ms=recs_now)).rows]
        assert await asyncio.to_thread(blocking) == (expected, rows)
    finally:
        await server.close()


async def test_event_producer_validates_keys_and_routes_by_the_topic_contract(stack: Settings) -> None:
    settings = per_test_settings(stack, "producer")
    await ensure_topics_retrying(settings)
    play = {"type": "play", "ts": T0, "schema_version": 1, "user_id": "pu1", "item_id": "pi1"}
    upsert = {"type": "item_upsert", "event_id": "c-pi9", "ts": T0, "schema_version": 1, "item_id": "pi9",
              "title": "A New Heist", "genres": ["Crime"], "release_ts": T0}
    async with EventProducer(settings) as producer:
        with pytest.raises(EventError):  # one bad event: nothing of the batch leaves
            await producer.publish([play, {**play, "user_id": ""}])
        ids = await producer.publish([play, {**play, "user_id": "pu2"}, upsert])
    assert ids[2] == "c-pi9" and len(set(ids)) == 3
    interactions = await _read_topic(settings, settings.topic_interactions, 2)
    assert sorted((key, body["event_id"]) for key, body in interactions) == sorted(
        [(b"pu1", ids[0]), (b"pu2", ids[1])]), "keyed by user, the bad batch absent"
    catalog = await _read_topic(settings, settings.topic_catalog, 1)
    assert [(key, body["title"]) for key, body in catalog] == [(b"pi9", "A New Heist")]
