"""The simulator's HTTP calls: the project's :class:`~streamrec.client.AsyncClient` (its retries honour 429/503 and
``Retry-After``, its events are validated before they leave), plus what a load driver needs to see: every try's
status and each answered recommendation's latency (a transport wrapper). The answers' ``experiments`` come with the
client's :class:`~streamrec.client.Recommendations`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from streamrec.client import AsyncClient

RECOMMENDATIONS_PATH = "/v1/recommendations/"


@dataclass(slots=True)
class Tries:
    """Per try (retries included): statuses by path kind, and latencies of answered recommendation requests."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    rec_latency_ms: list[float] = field(default_factory=list)


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts every try's status and times each 200 recommendation answer (the retries' sleeps excluded)."""

    def __init__(self, tries: Tries, max_connections: int, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.tries = tries
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._inner = inner or httpx.AsyncHTTPTransport(limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        kind = "recommendations" if request.url.path.startswith(RECOMMENDATIONS_PATH) else request.url.path
        started = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        self.tries.statuses[(kind, response.status_code)] += 1
        if kind == "recommendations" and response.status_code == 200:
            self.tries.rec_latency_ms.append((time.perf_counter() - started) * 1000.0)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def make_client(url: str, api_key: str | None, tries: Tries, concurrency: int, timeout_s: float,
                inner: httpx.AsyncBaseTransport | None = None) -> AsyncClient:
    """The client; ``inner``: the transport under the counting one (default: real connections, ``concurrency``
    of them at most)."""
    return AsyncClient(url, api_key=api_key, timeout=timeout_s, retries=3, backoff_s=0.5,
                           transport=CountingTransport(tries, concurrency, inner))
