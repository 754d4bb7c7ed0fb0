"""The homepage against the real broker and Redis, its online state written by a real worker: continue watching from
playback events, "because you watched" from a completed title, the page's rules, and one Redis round trip."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from test_serving_pipeline_live import _caught_up, _known_user, _now, serving
from test_worker_dead_letters import _wait_for, per_test_settings, running_worker, send_records

from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.bundle import open_bundle
from models.recommend.homepage import HomepageRequest
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RecommendRequest
from online_state.keys import KeyLayout
from online_state.sessions import decode_session
from serving.options import ServingOptions


@pytest.fixture(scope="module")
def artifacts(small_bundle: Path) -> Path:
    return small_bundle


def _event(kind: str, user: str, item: str, ts: int, **extra: object) -> bytes:
    return orjson.dumps({"type": kind, "event_id": f"{kind}-{user}-{item}-{ts}", "ts": ts, "schema_version": 1,
                         "user_id": user, "item_id": item, "context": {"device": "tv", "country": "NL"}, **extra})


def _page(user: str, **kw: object) -> HomepageRequest:
    base = RecommendRequest(user_id=user, request_id=f"h-{time.monotonic_ns()}", k=6, country="NL", device="tv")
    return HomepageRequest(base, rows=10, per_row=6, **kw)  # type: ignore[arg-type]


async def test_homepage_rows_follow_playback_through_the_worker(
        stack: Settings, redis_client: aioredis.Redis, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = per_test_settings(stack, "homepage")
    await ensure_topics_retrying(settings)
    user, history = _known_user(artifacts)
    bundle = open_bundle(artifacts)
    item_ids: list[str] = bundle.json("item_ids")
    titles = dict(zip(item_ids, bundle.json("catalog")["titles"], strict=True))
    model = RecommenderModel.load(artifacts)
    limit = model.user_maturity_limit(model.user_row(user))
    # Titles the page may show this user (available, within the profile's maturity limit), not watched yet.
    allowed = [i for i in item_ids if i not in set(history) and model.items.available[model.items.index[i]]
               and (limit is None or model.items.maturity[model.items.index[i]] <= limit)]
    started, finished, unfinished = allowed[:3]
    now = _now()
    await send_records(settings, settings.topic_interactions, [
        (user, _event("play", user, started, now - 5000)),
        (user, _event("progress", user, started, now - 4000, watched_seconds=1800, duration_seconds=6000)),
        (user, _event("play", user, unfinished, now - 3500)),
        (user, _event("play", user, finished, now - 3000)),
        (user, _event("complete", user, finished, now - 2000, watched_seconds=6000, duration_seconds=6000)),
    ])
    keys = KeyLayout()
    async with running_worker(settings, artifacts=artifacts):
        async def applied() -> bool:
            session = decode_session(await redis_client.get(keys.session(user)))
            return session is not None and session.n.get("complete", 0) >= 1
        await _wait_for(applied, seconds=60)
    session = decode_session(await redis_client.get(keys.session(user)))
    assert session is not None and [i for i, _, _ in session.cw] == [unfinished, started]
    assert await redis_client.ttl(keys.session(user)) > 4 * 3600, "a key with titles to continue outlives a session"

    options = ServingOptions(candidates_timeout_ms=2000, features_timeout_ms=2000, shared_reads_ttl_s=600)
    async with serving(settings, artifacts, watch_bundle=False, options=options) as service:
        await _wait_for(lambda: _caught_up(service), seconds=30)
        page = await service.homepage(_page(user))
        assert page["degraded"] is False, page.get("degraded_reasons")
        assert page["model_version"] == bundle.version and "rows" in page["timings_ms"]
        rows = page["rows"]
        ids = [row["id"] for row in rows]
        assert ids[0] == "continue_watching", ids
        cw = rows[0]["items"]
        assert [it["item_id"] for it in cw] == [unfinished, started], "most recent first; the completed one left"
        assert cw[1]["progress"] == pytest.approx(0.3) and cw[1]["title"] == titles[started]
        assert f"because_you_watched:{finished}" in ids, ids
        byw = rows[ids.index(f"because_you_watched:{finished}")]
        assert byw["title"] == f"Because you watched {titles[finished]}"
        assert "top_picks" in ids and "trending" in ids
        shown = [it["item_id"] for row in rows for it in row["items"]]
        assert len(shown) == len(set(shown)), "a title at most once on the page"
        watched = set(history) | {finished}
        assert not watched & {it["item_id"] for row in rows[1:] for it in row["items"]}, "watched titles only in CW"
        for row in rows:
            for it in row["items"]:
                assert it["title"] and isinstance(it["genres"], list) and it["sources"]

        # The whole page is one Redis command once the shared lists are held (as for /v1/recommendations).
        sends: list[int] = []
        original = AbstractConnection.send_packed_command

        async def counting(self: AbstractConnection, command: object, check_health: bool = True) -> None:
            sends.append(1)
            await original(self, command, check_health)
        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
        again = await service.homepage(_page(user))
        monkeypatch.undo()
        assert len(sends) == 1, f"{len(sends)} Redis round trips for one homepage"
        assert [row["id"] for row in again["rows"]] == ids

        # The answer of a failed or late page: one row of popular titles, degraded.
        late = service.homepage_fallback(_page(user), "timeout", 0.2)
        assert late["degraded"] is True and late["degraded_reasons"] == ["timeout"]
        assert [row["id"] for row in late["rows"]] == ["popular"] and len(late["rows"][0]["items"]) == 6
        assert all(it["title"] and it["sources"] for it in late["rows"][0]["items"])

        cold = await service.homepage(_page(f"brand-new-{now}"))
        cold_ids = [row["id"] for row in cold["rows"]]
        assert cold["degraded"] is False and "top_picks" in cold_ids and len(cold_ids) >= 3
        assert not any(i.startswith(("continue", "because")) for i in cold_ids), cold_ids
