"""Admission control: an adaptive limit on the requests a server process works on at once.

Past what the process can do, a request that waits only makes every other request later; so the read
endpoints admit at most ``limit`` requests at a time and answer the rest at once with ``503`` and
``Retry-After``. The limit follows Netflix's Gradient2 (concurrency-limits): it compares a short-term
latency average with a long-term one (the no-load latency, adapting when the machine is shared), shrinks
when requests queue (short > long) and grows by a small queue allowance when they do not. One change for an
event loop: the no-load average learns only from requests that ran alone (see ``_update``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitConfig:
    initial: int = 20  # requests in flight before any latency has been seen
    min_limit: int = 2
    max_limit: int = 200
    tolerance: float = 1.5  # short-term latency this many times the long-term one still counts as no queueing
    smoothing: float = 0.2  # how far one sample moves the limit toward its new estimate
    long_window: int = 200  # light samples (a request that ran alone) in the no-load latency average
    short_window: int = 10  # samples in the short-term latency average


class AdaptiveLimiter:
    """Gradient2-style concurrency limit: :meth:`try_acquire` before the work, :meth:`release` after it."""

    def __init__(self, config: LimitConfig | None = None) -> None:
        self.config = config or LimitConfig()
        self.limit = float(self.config.initial)
        self.in_flight = 0
        self.shed = 0
        self._long: float | None = None  # seconds, exponential averages
        self._short: float | None = None
        self._samples = 0
        self._light = 0  # samples of requests that ran alone (the no-load latency's)

    @property
    def current_limit(self) -> int:
        return max(self.config.min_limit, int(self.limit))

    def try_acquire(self) -> bool:
        """Admit one request (``True``), or refuse it (``False``: the caller answers 503 at once)."""
        if self.in_flight >= self.current_limit:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def release(self, seconds: float) -> None:
        """One admitted request finished after ``seconds``; the limit adapts to it."""
        busy = self.in_flight  # the concurrency this request ran at
        self.in_flight = max(0, self.in_flight - 1)
        self._update(max(seconds, 1e-6), busy)

    def _update(self, rtt: float, busy: int) -> None:
        cfg = self.config
        self._samples += 1
        # Warm-up: a plain mean over the first samples, then exponential averages.
        short_w = 1.0 / min(self._samples, cfg.short_window)
        self._short = rtt if self._short is None else self._short + short_w * (rtt - self._short)
        # The no-load latency learns only from requests that ran alone (busy <= 1). In one event loop a
        # request's latency grows with the requests it shares the CPU with, so under a lasting overload every
        # sample is a queued one: Gradient2's all-sample long-term average then drifts up with them and the
        # limit with it (admitted p99 226 ms at 4x capacity, measured). Light samples still track a machine
        # that got slower for good (shared cores): the next quiet moment brings them.
        if self._long is None or busy <= 1:
            self._light += 1
            long_w = 1.0 / min(self._light, cfg.long_window)
            self._long = rtt if self._long is None else self._long + long_w * (rtt - self._long)
        if self._long / self._short > 2.0:
            # Latency came back down after a long overload: let the no-load estimate follow it down.
            self._long *= 0.95
        if busy < self.limit / 2:
            return  # far below the limit: the latency says nothing about the limit (app-limited)
        gradient = max(0.5, min(1.0, cfg.tolerance * self._long / self._short))
        estimate = self.limit * gradient + math.sqrt(self.limit)  # queue allowance: grows when not queueing
        self.limit = (1 - cfg.smoothing) * self.limit + cfg.smoothing * estimate
        self.limit = max(float(cfg.min_limit), min(float(cfg.max_limit), self.limit))
