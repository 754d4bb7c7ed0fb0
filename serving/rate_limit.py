"""Per-key write rate limits: a token bucket per API key per server process, counting events (not requests).

Per replica, on purpose: nothing is shared between server processes (no Redis round trip on the write path), so a
key's real ceiling is ``rate x replicas``; operators size ``STREAMREC_RATE_LIMIT_EVENTS_PER_S`` for one replica.
Counting events rather than requests makes a batch of 1,000 cost what 1,000 single POSTs cost.

A request of ``n`` events passes when the bucket holds ``min(n, burst)`` tokens and then takes all ``n``: a batch
larger than the burst is not refused forever (it passes from a full bucket), and the bucket's debt (it may go
negative) is repaid at ``rate`` before the next one, so the long-run rate stays bounded. Pure: the clock is a
parameter, so the arithmetic is tested with a fake one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens (events) added per second
    burst: int  # the bucket's size
    tokens: float
    updated: float  # clock reading of the last refill

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, n: int, now: float) -> float:
        """Take ``n`` tokens and return 0.0, or take none and return the seconds until they would be there."""
        self.refill(now)
        need = min(n, self.burst)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


@dataclass
class RateLimiter:
    """One bucket per key name, made full on first use; ``rate`` 0 turns the limit off."""

    rate: float
    burst: int
    clock: Clock = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, n: int) -> float:
        """0.0 when ``key`` may write ``n`` events now (they are counted), else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, float(self.burst), now)
        return bucket.take(n, now)

    def forget(self, keep: set[str]) -> None:
        """Drop the buckets of keys no longer in the table (revoked ones), so the dict stays bounded."""
        for name in [name for name in self._buckets if name not in keep]:
            del self._buckets[name]


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` is whole seconds (RFC 9110); round up so that a client that obeys it gets through."""
    return str(max(1, math.ceil(wait_s)))
