"""The run's tallies and its summary (what ``streamrec simulate`` prints, ``--json`` as one object)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tools.simulate.api import Tries


@dataclass(slots=True)
class Tally:
    requests: int = 0  # recommendation lists answered (after retries)
    requests_in_experiments: int = 0  # of those, answers naming at least one experiment
    degraded: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "recommendations 503", "events transport", ...
    events_posted: int = 0  # accepted by the server
    events_refused: int = 0
    event_batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # click, play, complete, skip, progress, impression
    steps_without_list: int = 0
    shown_affinity_sum: float = 0.0
    shown_known: int = 0
    shown_unknown: int = 0  # titles the world does not know (no truth)
    played_affinity_sum: float = 0.0
    played: int = 0
    # experiment -> variant -> users seen / requests
    exp_users: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    exp_requests: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    users_active: set[str] = field(default_factory=set)
    users_played: set[str] = field(default_factory=set)

    def shown(self, q: np.ndarray, play: np.ndarray) -> None:
        known = ~np.isnan(q)
        self.shown_known += int(known.sum())
        self.shown_unknown += int((~known).sum())
        self.shown_affinity_sum += float(q[known].sum())
        self.played += int(play.sum())
        self.played_affinity_sum += float(np.nan_to_num(q[play]).sum())

    def experiments(self, user: str, tags: list[tuple[str, str]]) -> None:
        self.requests_in_experiments += bool(tags)
        for name, variant in tags:
            self.exp_users[name][variant].add(user)
            self.exp_requests[name][variant] += 1


def _percentile(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 2) if values else None


def summarise(tally: Tally, tries: Tries, *, users: int, wall_s: float, sim_span_ms: int) -> dict[str, Any]:
    wall = max(wall_s, 1e-9)
    statuses: dict[str, int] = {}
    for (kind, status), n in sorted(tries.statuses.items()):
        statuses[f"{kind} {status}"] = n
    throttled = sum(n for (_, status), n in tries.statuses.items() if status in (429, 503))
    o = tally.outcomes
    return {
        "users": users,
        "users_active": len(tally.users_active),
        "wall_s": round(wall_s, 2),
        "simulated_minutes": round(sim_span_ms / 60_000, 1),
        "requests": tally.requests,
        "requests_per_s": round(tally.requests / wall, 2),
        "requests_in_experiments": tally.requests_in_experiments,
        "degraded": tally.degraded,
        "failures": sum(tally.failures.values()),
        "failures_by_kind": dict(sorted(tally.failures.items())),
        "throttled_tries": throttled,  # 429/503 answers seen, retried after Retry-After or given up
        "http_tries": statuses,
        "events_posted": tally.events_posted,
        "events_per_s": round(tally.events_posted / wall, 2),
        "events_refused": tally.events_refused,
        "event_batches": tally.event_batches,
        "impressions": o["impression"],
        "clicks": o["click"],
        "plays": o["play"],
        "completes": o["complete"],
        "skips": o["skip"],
        "abandoned": o["progress"],
        "plays_per_user": round(o["play"] / users, 3) if users else 0.0,
        "mean_true_affinity_shown": round(tally.shown_affinity_sum / tally.shown_known, 4)
        if tally.shown_known else None,
        "mean_true_affinity_played": round(tally.played_affinity_sum / tally.played, 4) if tally.played else None,
        "shown_unknown_titles": tally.shown_unknown,
        "latency_ms": {"p50": _percentile(tries.rec_latency_ms, 50), "p99": _percentile(tries.rec_latency_ms, 99),
                       "n": len(tries.rec_latency_ms)},
        "experiments": {
            name: {variant: {"users": len(tally.exp_users[name][variant]), "requests": n}
                   for variant, n in sorted(variants.items())}
            for name, variants in sorted(tally.exp_requests.items())
        },
    }
