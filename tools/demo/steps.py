"""The steps of the one-command demo (``streamrec demo``) that are more than a call: making the log,
training once per log, replaying once per stack, and waiting for the worker.

Re-running the demo is cheap and safe: a log with the same parameters is reused, a bundle trained on
the same files is reused (the manifest's data fingerprint), and a log already replayed into this
stack is not published twice (that would count every event twice in the online state).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from foundation.redis_io import redis_client
from foundation.settings import Settings
from models.train import train_bundle
from online_state import api_keys
from tools.bundle_reuse import bundle_trained_on, log_fingerprint
from tools.catch_up import end_offsets, wait_applied
from tools.datasets.movielens import import_movielens
from tools.datasets.world import generate_world
from tools.replay import replay_log


def prepare_data(out: Path, movielens: Path | None, users: int, items: int, events: int, seed: int,
                 progress: Any) -> dict[str, Any]:
    """Generate a world (or import MovieLens) into ``out`` unless an identical one is already there."""
    marker = out / ".demo-source.json"
    source = {"movielens": str(movielens) if movielens else None, "users": users, "items": items,
              "events": events, "seed": seed}
    if marker.exists() and orjson.loads(marker.read_bytes()) == source and (out / "events.jsonl").exists():
        return {"reused": str(out)}
    if movielens is not None:
        summary: Any = import_movielens(movielens, out, progress=progress)
    else:
        summary = generate_world(out, users=users, items=items, events=events, seed=seed, progress=progress)
    marker.write_bytes(orjson.dumps(source))
    return dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else {"summary": str(summary)}


def train_once(data: Path, artifacts: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """The bundle of ``latest`` when it was trained on these very files, else a new one."""
    started = time.perf_counter()
    bundle = bundle_trained_on(data, artifacts)
    if bundle is not None:
        return {"version": bundle.version, "reused": True, "seconds": time.perf_counter() - started}
    path, _ = train_bundle(data, artifacts, progress=progress)
    return {"version": path.name, "reused": False, "seconds": time.perf_counter() - started}


async def replay_once(data: Path, settings: Settings, progress: Callable[[int], None]) -> Any:
    """Replay ``data`` unless this stack's topic already holds it (then ``None``).

    The marker in the state dir records the log's fingerprint and the topic's end offset after the
    replay; a topic that is now shorter was recreated (a wiped stack), so the log is replayed again.
    """
    marker = settings.state_dir / "demo-replayed.json"
    topic = settings.topic_interactions
    fingerprint = log_fingerprint(data)
    end_now = sum((await end_offsets(settings, [topic])).values())
    if marker.exists():
        seen = orjson.loads(marker.read_bytes())
        if seen.get("fingerprint") == fingerprint and seen.get("topic") == topic and end_now >= seen.get("end", 0):
            return None
    report = await replay_log(data, settings, progress=progress)
    end_after = sum((await end_offsets(settings, [topic])).values())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps({"fingerprint": fingerprint, "topic": topic, "end": end_after}))
    return report


DEMO_KEY_NAME = "demo"
DEMO_KEY_SCOPES = (api_keys.EVENTS_WRITE, api_keys.CATALOG_WRITE, api_keys.RECOMMENDATIONS_READ)
# The browser page's key goes to every browser that opens the page: events:write and nothing else (the server
# withholds a broader one, serving/page.py).
PAGE_KEY_NAME = "page"
PAGE_KEY_SCOPES = (api_keys.EVENTS_WRITE,)


def _keep_secret(path: Path, key: str) -> None:
    """``key`` into ``path`` with mode 0600, like the stack's other credentials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")


async def make_demo_key(settings: Settings) -> tuple[str, Path]:
    """A fresh key named ``demo`` (a previous run's is revoked: its plaintext is gone), kept for the user in the
    state dir with mode 0600 like the stack's other credentials; returns (key, where it was written)."""
    redis = redis_client(settings)
    try:
        await api_keys.revoke(redis, DEMO_KEY_NAME)
        key = await api_keys.create(redis, DEMO_KEY_NAME, DEMO_KEY_SCOPES)
    finally:
        await redis.aclose()
    path = settings.state_dir / "demo-api-key"
    _keep_secret(path, key)
    return key, path


async def make_page_key(settings: Settings) -> tuple[str, Path, bool]:
    """The browser page's key (name ``page``, scope ``events:write`` only); returns (key, its file, made now).

    Unlike the demo's own key it is reused while the key table still holds it as this name with these scopes: a
    server left running by a previous demo was started with it in its environment, and keeps handing it out. A new
    one (after a wiped stack or a revoke) means the server must be restarted to pick it up."""
    path = settings.state_dir / "demo-page-key"
    redis = redis_client(settings)
    try:
        if path.exists():
            key = path.read_text().strip()
            record = (await api_keys.load_all(redis)).get(api_keys.key_digest(key))
            if record is not None and record.name == PAGE_KEY_NAME and record.scopes == frozenset(PAGE_KEY_SCOPES):
                return key, path, False
        await api_keys.revoke(redis, PAGE_KEY_NAME)
        key = await api_keys.create(redis, PAGE_KEY_NAME, PAGE_KEY_SCOPES)
    finally:
        await redis.aclose()
    _keep_secret(path, key)
    return key, path, True


def page_clock_offset_ms(last_event_ts: int, now_ms: int | None = None) -> int:
    """What the page adds to the server's clock so that it starts just after the log's newest event: a generated
    world (from 2026-01-01) or MovieLens lives in its own time, and the page browses it as of its log."""
    return last_event_ts + 1 - (int(time.time() * 1000) if now_ms is None else now_ms)


async def wait_worker(settings: Settings, advance: Callable[[int], None], timeout_s: float = 900.0) -> float:
    """Until the worker's offsets in Redis cover everything on the input topics; ``advance`` in percent."""
    shown = 0

    def progress(applied: int, total: int) -> None:
        nonlocal shown
        pct = int(100 * applied / total) if total else 100
        if pct > shown:
            advance(pct - shown)
            shown = pct

    redis = redis_client(settings)
    try:
        return await wait_applied(redis, await end_offsets(settings), timeout_s, progress=progress)
    finally:
        progress(1, 1)
        await redis.aclose()
