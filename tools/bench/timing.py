"""Per-call timings of a benchmark's request path: one call per user, after a warm-up, in microseconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def per_call_us(fn: Callable[[int], Any], users: Sequence[int] | NDArray[np.integer], warmup: int = 20
                ) -> NDArray[np.float64]:
    """``fn(user)`` timed once per user (the first ``warmup`` users called once before, untimed: caches, lazy
    imports), as microseconds in call order."""
    order = [int(u) for u in users]
    for u in order[:warmup]:
        fn(u)
    times = np.empty(len(order), np.float64)
    for k, u in enumerate(order):
        started = time.perf_counter_ns()
        fn(u)
        times[k] = time.perf_counter_ns() - started
    return times / 1000.0


def median_us(fn: Callable[[int], Any], users: Sequence[int] | NDArray[np.integer], warmup: int = 20) -> float:
    return float(np.median(per_call_us(fn, users, warmup)))
