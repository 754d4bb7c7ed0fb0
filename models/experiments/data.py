"""What the report is computed from: per variant, one row per exposed user and the variant's counters.

Filled by :func:`online_state.experiments.read_experiment_data` from the worker's exactly-once counts
(streams/experiments.py), or built directly in tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

# Upper edges (ms) of the latency histogram kept per variant (the guardrail's p99 is read from it).
LATENCY_EDGES_MS: tuple[float, ...] = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000,
                                       5000, float("inf"))
POSITIONS = 20  # click-through is kept for positions 0..POSITIONS-1


def _ints(n: int = 0) -> NDArray[np.int64]:
    return np.zeros(n, np.int64)


@dataclass
class VariantData:
    """One variant. The per-user arrays are aligned (one entry per user exposed to the experiment in it)."""

    name: str
    users: list[str] = field(default_factory=list)
    exposures: NDArray[np.int64] = field(default_factory=_ints)  # answers shown
    clicks: NDArray[np.int64] = field(default_factory=_ints)  # attributed to an exposure of the experiment
    plays: NDArray[np.int64] = field(default_factory=_ints)
    completes: NDArray[np.int64] = field(default_factory=_ints)
    ratings: NDArray[np.int64] = field(default_factory=_ints)
    hits: NDArray[np.int64] = field(default_factory=_ints)  # later engagements on a title the variant showed
    engagements: NDArray[np.int64] = field(default_factory=_ints)  # every later positive engagement
    pre_engagements: NDArray[np.int64] = field(default_factory=_ints)  # before the first exposure (CUPED)
    # Interleaving: engaged titles this variant's ranking contributed (team draft). An interleaving experiment's
    # data has one VariantData per team, over the same users in the same order.
    credit: NDArray[np.int64] = field(default_factory=_ints)
    # Counters (not per user):
    shown_by_position: NDArray[np.int64] = field(default_factory=lambda: _ints(POSITIONS))
    clicks_by_position: NDArray[np.int64] = field(default_factory=lambda: _ints(POSITIONS))
    titles_shown: int = 0  # distinct titles shown (HyperLogLog estimate)
    latency_counts: NDArray[np.int64] = field(default_factory=lambda: _ints(len(LATENCY_EDGES_MS)))
    degraded: int = 0  # degraded answers

    @property
    def n_users(self) -> int:
        return len(self.users)


@dataclass
class ExperimentData:
    name: str
    kind: str  # "ab" or "interleave"
    variants: list[VariantData]
    weights: dict[str, float]  # the configured weight of each variant (what the SRM check expects)
    catalogue_size: int = 0
    control: str = ""  # the variant differences are taken against (default: the first)

    def variant(self, name: str) -> VariantData:
        return next(v for v in self.variants if v.name == name)
