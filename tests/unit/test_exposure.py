"""Exposure prices: a title in every list is priced down to its cap, and stays with the users who want it most."""

from __future__ import annotations

import numpy as np
import pytest

from models.exposure import exposure, fit_exposure_prices, top_k_rows

N_GROUPS, PER_GROUP, N_ITEMS, K = 200, 30, 60, 10


def requests(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each request: 30 distinct titles; title 0 (a blockbuster) in every request with a high score."""
    rng = np.random.default_rng(seed)
    items = np.concatenate([np.r_[0, 1 + rng.choice(N_ITEMS - 1, PER_GROUP - 1, replace=False)]
                            for _ in range(N_GROUPS)])
    group = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    score = rng.normal(size=len(items))
    score[items == 0] = 3.0 + rng.normal(size=N_GROUPS)  # its appeal varies by user
    return score, items, group


def testtop_k_rows_picks_each_groups_best() -> None:
    score = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2])
    group = np.array([0, 0, 0, 1, 1, 1])
    assert top_k_rows(score, group, 2).tolist() == [False, True, True, True, True, False]


def test_a_title_in_every_list_is_priced_down_to_its_cap() -> None:
    score, items, group = requests()
    fit = fit_exposure_prices(score, items, group, N_ITEMS, cap=0.3, k=K)
    assert fit.top_share_before >= 0.95
    assert fit.top_share_after <= 0.33, fit
    assert fit.prices[0] > 0 and fit.priced <= 3, "only the crowding title pays (and maybe a neighbour)"
    # It stays in the lists of the users whose score for it is high (what beats the price there).
    top = top_k_rows(score - fit.prices[items], group, K)
    blockbuster = items == 0
    kept = score[blockbuster & top]
    dropped = score[blockbuster & ~top]
    assert len(kept) and len(dropped) and kept.mean() > dropped.mean() + 1.0


def test_no_price_when_no_title_is_over_the_cap() -> None:
    score, items, group = requests()
    score[items == 0] = -5.0  # the blockbuster is nobody's pick now
    before = exposure(items, top_k_rows(score, group, K), N_ITEMS, N_GROUPS).max()
    fit = fit_exposure_prices(score, items, group, N_ITEMS, cap=before + 0.01, k=K)
    assert not fit.prices.any() and fit.iterations == 1


def debias_requests(blockbuster_is_wanted: bool) -> tuple[np.ndarray, ...]:
    """Requests whose positive is one random title; title 0 scores high everywhere and is the positive in
    every request when ``blockbuster_is_wanted`` (a real hit), in none otherwise (a title everyone saw)."""
    score, items, group = requests(seed=2)
    rng = np.random.default_rng(3)
    labels = np.zeros(len(items), np.float32)
    for g in range(N_GROUPS):
        rows = np.flatnonzero(group == g)
        labels[rows[0] if blockbuster_is_wanted else rng.choice(rows[1:])] = 1.0
        score[rows[1:]] += 2.5 * labels[rows[1:]]  # the ranker sees some of the real preference
    audience = np.where(items == 0, np.log1p(5000.0), np.log1p(50.0))
    valid = group >= N_GROUPS * 3 // 4
    return score, items, group, labels, valid, audience


def test_debiasing_is_chosen_where_it_costs_no_accuracy() -> None:
    from models.debias import choose_debiasing

    pytest.importorskip("torch")  # grouped_ndcg's module
    choice = choose_debiasing(*debias_requests(blockbuster_is_wanted=False), N_ITEMS, tolerance=0.05)
    assert choice.beta > 0 or choice.cap > 0, choice.table
    picked = next(r for r in choice.table if (r["beta"], r["cap"]) == (choice.beta, choice.cap))
    plain = next(r for r in choice.table if (r["beta"], r["cap"]) == (0.0, 0.0))
    assert picked["top_share"] < plain["top_share"] and picked["ndcg@10"] >= 0.95 * plain["ndcg@10"]
    assert choice.cap == 0 or (choice.prices is not None and choice.prices[0] > 0)


def test_a_hit_everyone_wants_is_left_alone() -> None:
    from models.debias import choose_debiasing

    pytest.importorskip("torch")
    choice = choose_debiasing(*debias_requests(blockbuster_is_wanted=True), N_ITEMS, tolerance=0.05)
    plain = next(r for r in choice.table if (r["beta"], r["cap"]) == (0.0, 0.0))
    assert plain["ndcg@10"] > 0.85
    picked = next(r for r in choice.table if (r["beta"], r["cap"]) == (choice.beta, choice.cap))
    # Capping the hit would cost most of the accuracy: it stays in (nearly) every list.
    assert picked["ndcg@10"] >= 0.95 * plain["ndcg@10"] and picked["top_share"] > 0.8, choice.table
    assert choice.cap == 0.0
