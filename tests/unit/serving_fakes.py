"""Stand-ins for the server's two collaborators in unit tests of the HTTP app (no Redis, no Kafka): a service that
answers every read with an empty list, and a publisher that keeps what it was given. Shared by the tests of bad
input, keys and scopes, and oversized requests."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import structlog

from foundation.logs import configure_logging
from serving.http_events import ValidEvent


class FakeService:
    model_version = "v-test"

    async def recommend(self, req: Any, assignments: Any = ()) -> dict[str, Any]:
        return {"user_id": req.user_id, "request_id": req.request_id, "model_version": "v-test", "items": [],
                "degraded": False, "timings_ms": {}}

    def fallback(self, req: Any, reason: str, seconds: float) -> dict[str, Any]:
        raise AssertionError("no fallback expected")

    async def similar(self, item_id: str, k: int) -> dict[str, Any] | None:
        return {"item_id": item_id, "model_version": "v-test", "items": [], "degraded": False}

    async def readiness(self) -> dict[str, Any]:
        return {"ready": True}

    async def close(self) -> None:
        pass


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[ValidEvent] = []

    def start_background(self) -> None:
        pass

    @property
    def connected(self) -> bool:
        return True

    async def publish(self, events: list[ValidEvent]) -> None:
        self.published.extend(events)

    async def close(self) -> None:
        pass


def capture_logs(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """The process's log lines as `streamrec serve` renders them, while the generator is suspended; the logging
    set-up before it is restored after (a fixture body: ``yield from capture_logs()``)."""
    root = logging.getLogger()
    saved_handlers, saved_level, saved_config = root.handlers[:], root.level, structlog.get_config()
    stream = io.StringIO()
    configure_logging(level, False, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)


def no_experiments(settings: Any) -> Any:
    """The app's experiments registry without Redis: no experiment (unit tests must not read a developer's stack)."""
    from online_state.keys import DEFAULT_KEYS
    from serving.experiments import ExperimentsRegistry

    return ExperimentsRegistry(settings, None, DEFAULT_KEYS)
