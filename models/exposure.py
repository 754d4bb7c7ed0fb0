"""Exposure prices: a per-title offset on the ranker's score that keeps any one title out of more than a
``cap`` share of the top-k lists (issue 13: "one title is in 92% of top 10s").

The problem is a constrained one: maximise the sum of each request's top-k scores subject to every title
appearing in at most ``cap`` of the lists. Its Lagrangian dual gives each title a price ``p_i >= 0``; a
request then simply ranks by ``score - p_i``, and a title's price rises while it is over its cap and falls
back to 0 when it is not (projected subgradient ascent on the dual, steps shrinking as 1/sqrt(t)). Only the
titles that would crowd everyone's list pay, and they still reach the users whose score for them beats
the price: the ones most likely to want them. This is the exposure-constrained ranking of amortised
fairness of exposure (Singh & Joachims 2018, Biega et al. 2018) with the dual prices learned offline.

The prices are learned on the ranker's own training requests (the same candidates and scores the served
pipeline produces at the training cut), stored in the bundle, and subtracted at stage 3 in the served
and offline pipelines alike, so the two still agree. Each request's pool is cut to its best ``pool`` rows
first: a price only moves titles within a list's head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

EXPOSURE_FILE = "exposure_prices"  # bundle array (``.npy``): one price per bundle title


@dataclass(frozen=True, slots=True)
class ExposureFit:
    prices: NDArray[np.float32]  # (n_items,) >= 0, in the ranker's score units
    top_share_before: float  # the most exposed title's share of the requests' top-k lists, prices 0
    top_share_after: float
    priced: int  # titles with a positive price
    iterations: int


def top_k_rows(score: NDArray[np.float64], group: NDArray[np.int64], k: int) -> NDArray[np.bool_]:
    """Rows in their group's best ``k`` by ``score`` (ties: the earlier row)."""
    order = np.lexsort((np.arange(len(score)), -score, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    top = np.zeros(len(score), bool)
    top[order[position < k]] = True
    return top


def exposure(items: NDArray[np.integer], top: NDArray[np.bool_], n_items: int, n_groups: int) -> NDArray[np.float64]:
    """Share of the groups whose top rows hold each title."""
    return np.bincount(np.asarray(items, np.int64)[top], minlength=n_items)[:n_items] / max(n_groups, 1)


def fit_exposure_prices(score: NDArray[np.floating], items: NDArray[np.integer], group: NDArray[np.integer],
                        n_items: int, *, cap: float, k: int = 10, pool: int = 100,
                        iterations: int = 60) -> ExposureFit:
    """Prices that keep each title's share of the groups' top ``k`` at most ``cap`` (see the module doc).

    ``score``: each candidate row's score as stage 3 sees it (the ranker's, after the popularity
    correction); ``group``: its request. The step starts at the spread of the pooled scores, so the
    prices are in the ranker's units whatever their scale.
    """
    score = np.asarray(score, np.float64)
    group = np.asarray(group, np.int64)
    items = np.asarray(items, np.int64)
    n_groups = len(np.unique(group))
    keep = top_k_rows(score, group, pool)
    score, group, items = score[keep], group[keep], items[keep]
    prices = np.zeros(n_items, np.float64)
    before = exposure(items, top_k_rows(score, group, k), n_items, n_groups)
    step0 = float(np.std(score)) or 1.0
    share = before
    done = 0
    for t in range(1, iterations + 1):
        share = exposure(items, top_k_rows(score - prices[items], group, k), n_items, n_groups)
        done = t
        if share.max(initial=0.0) <= cap and not (prices > 0).any():
            break  # nothing over the cap and nothing priced: the constraint is slack
        prices = np.maximum(0.0, prices + step0 / np.sqrt(t) * (share - cap))
    final = exposure(items, top_k_rows(score - prices[items], group, k), n_items, n_groups)
    return ExposureFit(prices.astype(np.float32), float(before.max(initial=0.0)), float(final.max(initial=0.0)),
                       int((prices > 0).sum()), done)
