"""How hard stage 3 pushes against popularity, chosen per training run on the ranker's validation requests.

Two remedies (issue 13), both in the ranker's logit units: the popularity correction (``PostConfig.
popularity_correction``: ``β · log(1 + audience)`` off each score) and the exposure prices of
:mod:`models.exposure` (a cap on any one title's share of the top 10s). What they cost depends on the data.
On ml-latest-small the titles in everyone's list are ones most users already saw: a 15% cap cost 2% of
the held-out requests' NDCG@10 and took the top title's share from 32% to 22%. On the generated world the
title in everyone's list is the hit its users really go on to watch: a 30% cap cut NDCG@10 by 31%, a 15%
cap by 53%. So no one setting is right, and training picks one: every (β, cap) of a small grid is applied
to the held-out requests' ranker scores (prices learned on the training requests), and the strongest
correction whose NDCG@10 stays within ``tolerance`` of the best is kept: the tightest cap, then the largest
β (then the better NDCG). With ``tolerance`` 0 the most accurate setting wins. Strength by the settings, not by the
validation top-title share: that share is one title's count over ~150 requests, and picking its minimum (the rule
until issue 14) chose β 0.1 on the generated world where β 0.35 costs 1% of test NDCG@10 and lifts coverage of the
top 10s from 56 to 85 titles. The grid and the choice go into the
bundle's manifest (``metrics.ranker.debias``, :meth:`DebiasChoice.report`), where the bundle's loader reads the
choice back (:func:`chosen_in`); the training config keeps the values it was given.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.exposure import exposure, fit_exposure_prices, top_k_rows

BETAS: Final[tuple[float, ...]] = (0.0, 0.1, 0.2, 0.35)
CAPS: Final[tuple[float, ...]] = (0.0, 0.3, 0.2, 0.15)  # 0: no cap


@dataclass(frozen=True, slots=True)
class DebiasChoice:
    beta: float
    cap: float
    prices: NDArray[np.float32] | None  # learned on every request (training and validation) at the chosen cap
    table: list[dict[str, float]]  # every setting tried: beta, cap, ndcg@10, top_share (validation requests)

    def report(self, *, tuned: bool, tolerance: float | None) -> dict[str, Any]:
        """The manifest's record of the choice (``metrics.ranker.debias``): what :func:`chosen_in` reads."""
        return {"tuned": tuned, "tolerance": tolerance, "beta": self.beta, "cap": self.cap, "grid": self.table}


def chosen_in(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """(β, cap) that training chose, from a bundle manifest's ``metrics``; ``None`` for bundles trained before
    the choice was made per run (issue 13), which run stage 3 with their ``params`` as they are."""
    debias = metrics.get("ranker", {}).get("debias")
    if not isinstance(debias, Mapping) or "beta" not in debias or "cap" not in debias:
        return None
    return float(debias["beta"]), float(debias["cap"])


def _ndcg_at_10(score: NDArray[np.float64], labels: NDArray[np.floating], group: NDArray[np.int64]) -> float:
    from models.ranker.train import grouped_ndcg  # numpy only, but the module imports torch

    value = grouped_ndcg(score, labels, group, 10)
    return 0.0 if math.isnan(value) else float(value)


def choose_debiasing(score: NDArray[np.floating], items: NDArray[np.integer], group: NDArray[np.integer],
                     labels: NDArray[np.floating], valid: NDArray[np.bool_], log_audience: NDArray[np.floating],
                     n_items: int, *, tolerance: float, betas: tuple[float, ...] = BETAS,
                     caps: tuple[float, ...] = CAPS) -> DebiasChoice:
    """Pick (β, cap) on the ``valid`` rows (whole requests) as the module docstring says.

    ``score``: the ranker's score of every candidate row; ``log_audience``: each row's ``log(1 + audience)``.
    """
    score = np.asarray(score, np.float64)
    items = np.asarray(items, np.int64)
    group = np.asarray(group, np.int64)
    audience = np.asarray(log_audience, np.float64)
    train = ~valid
    n_valid = len(np.unique(group[valid]))
    table: list[dict[str, float]] = []
    for beta, cap in itertools.product(betas, caps):
        corrected = score - beta * audience
        prices = np.zeros(n_items, np.float64)
        if cap > 0:
            prices = fit_exposure_prices(corrected[train], items[train], group[train], n_items, cap=cap).prices
        final = corrected[valid] - prices[items[valid]]
        top = top_k_rows(final, group[valid], 10)
        share = float(exposure(items[valid], top, n_items, n_valid).max(initial=0.0))
        table.append({"beta": beta, "cap": cap, "ndcg@10": _ndcg_at_10(final, labels[valid], group[valid]),
                      "top_share": share})
    best = max(row["ndcg@10"] for row in table)
    allowed = [row for row in table if row["ndcg@10"] >= (1.0 - tolerance) * best]
    # The strongest: the tightest cap (0 is none, the loosest), then the largest correction.
    pick = min(allowed, key=lambda row: (row["cap"] if row["cap"] > 0 else float("inf"), -row["beta"],
                                         -row["ndcg@10"]))
    prices_all = None
    if pick["cap"] > 0:
        prices_all = fit_exposure_prices(score - pick["beta"] * audience, items, group, n_items,
                                         cap=pick["cap"]).prices
    return DebiasChoice(pick["beta"], pick["cap"], prices_all, table)
