"""Stage 3: from ranked candidates to the list a person sees (diversity, business rules, freshness).

Shared by offline evaluation (``two_stage``) and the server, so the list evaluated is the list
served. Everything is numpy over the candidate arrays; MMR loops over the K picks (20), never over
the ~1,000 candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class PostConfig:
    # MMR trade-off: 0 = pure relevance, 1 = pure novelty against the picks. 0 by default: on the validation split
    # genre MMR cost recall (0.1: recall@20 -1.9%) and did nothing for popularity bias; operators can turn it on.
    diversity: float = 0.0
    mmr_pool: int = 200  # MMR looks at the best N by score only (bounded cost per request)
    original_boost: float = 0.0  # added to the normalised score of house originals
    new_release_boost: float = 0.0  # added to titles released within ``new_window_days``
    new_window_days: float = 30.0
    freshness_half_life_days: float | None = None  # multiplicative decay by title age (None: off)
    # Subtracted, times log(1 + the title's training audience), from the ranker's score before the rules: the
    # ranker's scores are softmax logits, so this divides each title's odds by audience ** correction, the
    # log-propensity remedy for popularity bias (issue 13; tuned on the validation split).
    popularity_correction: float = 0.2
    exposure_prices: bool = True  # subtract the bundle's exposure prices (models.exposure) when it has them
    # "Because you watched Heat" names a title the user watched: right for the user, a leak wherever answers are
    # seen by others (shared screens, logs, a proxy). False: "Because of what you watched recently".
    reason_titles: bool = True


def apply_rules(
    scores: NDArray[np.floating], *, is_original: NDArray[np.bool_], release_ts: NDArray[np.int64], now: int,
    config: PostConfig, penalty: NDArray[np.floating] | None = None,
) -> NDArray[np.float64]:
    """``penalty`` (the popularity correction and exposure prices, in the ranker's logit units: see
    ``RecommenderModel.penalty_of``) off the ranker's scores, then business boosts and freshness on min-max
    normalised scores (so boosts mean the same per request)."""
    s = np.asarray(scores, np.float64)
    if len(s) == 0:
        return s
    if penalty is not None:
        s = s - np.asarray(penalty, np.float64)
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    age_days = np.maximum(0.0, (now - release_ts) / DAY_MS)
    s = s + config.original_boost * is_original + config.new_release_boost * (age_days <= config.new_window_days)
    if config.freshness_half_life_days:
        s = s * np.power(0.5, age_days / config.freshness_half_life_days)
    return s


def mmr(
    scores: NDArray[np.floating], features: NDArray[np.floating], k: int, diversity: float, pool: int = 200
) -> NDArray[np.int64]:
    """Maximal marginal relevance: positions of the ``k`` picks in order.

    Each pick maximises ``(1 - diversity) * score - diversity * max_sim(to picks so far)`` with
    cosine similarity of ``features`` rows (genre vectors), scores min-max normalised first.
    """
    n = len(scores)
    k = min(k, n)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if diversity <= 0 or k <= 1:
        return order[:k]
    cand = order[: max(k, min(pool, n))]
    s = np.asarray(scores, np.float64)[cand]
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    f = np.asarray(features)[cand].astype(np.float64)  # the pool's rows only (a float64 copy is exact)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    max_sim = np.zeros(len(cand))
    taken = np.zeros(len(cand), bool)
    picks: list[int] = []
    relevance = (1 - diversity) * s  # the same each step
    value = np.empty(len(cand))
    for _ in range(k):
        # value = (1 - diversity) * s - diversity * max_sim, in preallocated arrays
        np.multiply(diversity, max_sim, out=value)
        np.subtract(relevance, value, out=value)
        value[taken] = -np.inf
        best = int(np.argmax(value))
        picks.append(best)
        taken[best] = True
        np.maximum(max_sim, f @ f[best], out=max_sim)
    return cand[np.array(picks, np.int64)]
