"""The demo's last act: a few users' recommendations before and after a handful of new interactions.

Everything goes through the running system: the answers come from the HTTP API, the new
interactions are POSTed to ``/v1/events`` (the server publishes them to Kafka), the worker applies
them to Redis, and the next answer reflects them. Requests are asked as of the log's clock
(``now`` = just after the newest event), since a generated world or MovieLens lives in its own time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from schemas.decoder import event_decoder
from schemas.events import ItemRemove, ItemUpsert

ENGAGED = frozenset({b'"play"', b'"complete"', b'"rating"', b'"add_to_list"'})


@dataclass(frozen=True)
class Title:
    item_id: str
    title: str
    genres: tuple[str, ...]


@dataclass
class UserStory:
    user_id: str
    genre: str  # the genre the new interactions are about
    played: list[Title]
    before: dict[str, Any]
    after: dict[str, Any] = field(default_factory=dict)
    seconds_to_visible: float | None = None

    def genre_share(self, answer: dict[str, Any], titles: dict[str, Title]) -> int:
        return sum(self.genre in titles[i["item_id"]].genres for i in answer.get("items", ()) if i["item_id"] in titles)


@dataclass
class LogFacts:
    titles: dict[str, Title]
    last_ts: int
    user_genres: dict[str, Counter[str]]
    user_items: dict[str, set[str]]
    user_events: Counter[str]
    user_context: dict[str, dict[str, Any]]


def read_log_facts(data: Path) -> LogFacts:
    """Titles (the last upsert of each; removed ones dropped) and, per user, what they engaged with."""
    titles: dict[str, Title] = {}
    with (data / "catalog.jsonl").open("rb") as fh:
        for line in fh:
            event = event_decoder.decode(line)
            if isinstance(event, ItemUpsert) and event.available:
                titles[event.item_id] = Title(event.item_id, event.title, tuple(event.genres))
            elif isinstance(event, ItemRemove | ItemUpsert):
                titles.pop(event.item_id, None)
    facts = LogFacts(titles, 0, {}, {}, Counter(), {})
    with (data / "events.jsonl").open("rb") as fh:
        for line in fh:
            row = orjson.loads(line)
            facts.last_ts = max(facts.last_ts, int(row.get("ts", 0)))
            user, item = row.get("user_id"), row.get("item_id")
            if user is None or item is None:
                continue
            facts.user_events[user] += 1
            if row.get("context"):
                facts.user_context[user] = row["context"]
            if f'"{row.get("type")}"'.encode() in ENGAGED and item in titles:
                facts.user_items.setdefault(user, set()).add(item)
                facts.user_genres.setdefault(user, Counter()).update(titles[item].genres)
    return facts


def pick_users(facts: LogFacts, n: int) -> list[str]:
    """Active users (the most events), whose answers have the most to lose when they change."""
    return [user for user, _ in facts.user_events.most_common(n)]


def plan_story(facts: LogFacts, user: str, before: dict[str, Any], n_titles: int = 4) -> UserStory:
    """A genre the user rarely watched (but the catalogue has plenty of), and titles of it to play."""
    genres_in_catalog = Counter(g for t in facts.titles.values() for g in t.genres)
    mine = facts.user_genres.get(user, Counter())
    total = sum(mine.values()) or 1
    shown = {i["item_id"] for i in before.get("items", ())}
    seen = facts.user_items.get(user, set())
    candidates = [g for g, count in genres_in_catalog.most_common() if count >= 4 * n_titles]
    genre = min(candidates, key=lambda g: (mine.get(g, 0) / total, -genres_in_catalog[g]))
    pool = [t for t in facts.titles.values() if genre in t.genres and t.item_id not in seen | shown]
    return UserStory(user, genre, pool[:n_titles], before)


def story_events(facts: LogFacts, story: UserStory, start_ts: int) -> list[dict[str, Any]]:
    """A play and a completion of each title, a minute apart, in the user's last known context."""
    context = {k: v for k, v in facts.user_context.get(story.user_id, {}).items()
               if k in {"device", "country", "local_hour"}}
    context["session_id"] = f"demo-{uuid.uuid4().hex[:12]}"
    events = []
    ts = start_ts
    for title in story.played:
        for kind in ("play", "complete"):
            ts += 60_000
            event: dict[str, Any] = {"type": kind, "event_id": uuid.uuid4().hex, "ts": ts, "schema_version": 1,
                                     "user_id": story.user_id, "item_id": title.item_id, "context": context}
            if kind == "complete":
                event["watched_seconds"] = 5400
            events.append(event)
    return events


async def recommendations(session: Any, base_url: str, user: str, k: int, now_ms: int) -> dict[str, Any]:
    async with session.get(f"{base_url}/v1/recommendations/{user}", params={"k": str(k), "now": str(now_ms)}) as r:
        body = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeError(f"GET /v1/recommendations/{user} answered {r.status}: {body}")
        return body  # type: ignore[no-any-return]


async def run_stories(base_url: str, facts: LogFacts, users: list[str], k: int = 10,
                      api_key: str | SecretStr = "", timeout_s: float = 20.0) -> list[UserStory]:
    """For each user: the answer now, then the new interactions, then the answer once they are applied."""
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key  # settings.api_key is secret
    headers = {"X-API-Key": key} if key else {}
    stories = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for user in users:
            now = facts.last_ts + 1
            before = await recommendations(session, base_url, user, k, now)
            story = plan_story(facts, user, before)
            events = story_events(facts, story, facts.last_ts)
            after_now = events[-1]["ts"] + 1
            reference = await recommendations(session, base_url, user, k, after_now)  # same clock, old state
            async with session.post(f"{base_url}/v1/events", data=orjson.dumps(events),
                                    headers={"Content-Type": "application/json"}) as r:
                body = await r.json(content_type=None)
                if r.status != 202 or body.get("refused"):
                    raise RuntimeError(f"POST /v1/events answered {r.status}: {body}")
            posted = time.monotonic()
            # Applied once the answer as of `after_now` changes (it is deterministic between events:
            # the worker has applied the whole log before the stories start); then a settle read.
            while True:
                after = await recommendations(session, base_url, user, k, after_now)
                if after["items"] != reference["items"]:
                    story.seconds_to_visible = time.monotonic() - posted
                    await asyncio.sleep(0.5)
                    after = await recommendations(session, base_url, user, k, after_now)
                    break
                if time.monotonic() - posted > timeout_s:
                    break
                await asyncio.sleep(0.05)
            story.after = after
            stories.append(story)
    return stories
