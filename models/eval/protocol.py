"""Run systems through one split and collect their metrics: the registry-facing entry point.

A *system factory* takes the split's training log and an :class:`EvalContext` and returns a fitted
:class:`Recommender`. A recommender either scores the whole catalogue (``scores``; the protocol
masks the user's training items and keeps the top ``MAX_K``) or produces the lists itself
(``recommend``; two-stage systems that never build a full score matrix). Optionally it can expose
``candidates(users)`` (per-source candidate lists, for candidate recall) and an ``extra`` dict
(hyper-parameters chosen, sizes) that is copied into the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from models.dataset import EventLog
from models.eval.metrics import (
    MAX_K,
    candidate_recall,
    compute_metrics,
    hit_matrix,
    most_common_item,
    pad_lists,
    popularity_ranks,
    top_k,
)
from models.eval.report import EvalReport
from models.split import Split, make_split


@runtime_checkable
class ScoringRecommender(Protocol):
    def scores(self, users: NDArray[np.int32]) -> NDArray[np.float32]:
        """(len(users), n_items) scores; higher is better."""
        ...


@runtime_checkable
class ListRecommender(Protocol):
    def recommend(self, users: NDArray[np.int32], k: int, exclude: sp.csr_matrix) -> NDArray[np.int32]:
        """(len(users), k) item indices, best first, -1 padding; never an item of ``exclude``'s row
        (``exclude`` rows align with ``users``: their training items)."""
        ...


Recommender = ScoringRecommender | ListRecommender
SystemFactory = Callable[[EventLog, "EvalContext"], Recommender]
ProgressFn = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


@dataclass
class EvalContext:
    """What a system factory may use besides the training log."""

    split: Split
    seed: int = 0
    progress: ProgressFn = _quiet
    _validation: Split | None = field(default=None, repr=False)

    @property
    def train(self) -> EventLog:
        return self.split.train

    def validation(self) -> Split:
        """The same protocol applied to the training part (for hyper-parameter choice); cached."""
        if self._validation is None:
            self._validation = make_split(self.split.train, self.split.name)
            summary = self._validation.summary()
            self.progress(f"validation split: {summary['test_users']} users, {summary['positives']} positives")
        return self._validation


def default_chunk(n_items: int) -> int:
    """Users per scoring call: keeps one dense score block near 64 MB (16M float32) whatever the catalogue."""
    return int(max(16, min(4096, 16_000_000 // max(n_items, 1))))


def recommend_lists(
    recommender: Recommender, split: Split, k: int = MAX_K, chunk: int | None = None
) -> NDArray[np.int32]:
    """(test users, k) top-k lists of ``recommender`` for ``split.test_users``, training items excluded."""
    users = split.test_users
    chunk = chunk or default_chunk(split.n_items)
    out = np.full((len(users), k), -1, np.int32)
    for start in range(0, len(users), chunk):
        batch = users[start:start + chunk]
        exclude = split.exclude(batch)
        if hasattr(recommender, "recommend"):
            lists = pad_lists(np.asarray(recommender.recommend(batch, k, exclude)), k)
            # A list system is trusted to exclude training items; one that slips through could
            # never be a hit, but drop it to -1 anyway so coverage and diversity stay honest.
            lists[hit_matrix(lists, exclude)] = -1
        else:
            lists = top_k(recommender.scores(batch), exclude, k)  # type: ignore[union-attr]
        out[start:start + len(batch)] = lists
    return out


def evaluate_system(
    recommender: Recommender, split: Split, ks: tuple[int, ...] = (10, 20), chunk: int | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metrics, curves) of a fitted recommender on ``split``."""
    return _score(recommender, split, ks, chunk)[1:]


def _score(
    recommender: Recommender, split: Split, ks: tuple[int, ...], chunk: int | None
) -> tuple[NDArray[np.int32], dict[str, float], dict[str, list[float]]]:
    """(lists, metrics, curves); popularity is counted on the split's training part only."""
    lists = recommend_lists(recommender, split, max(MAX_K, *ks), chunk)
    metrics, curves = compute_metrics(lists, split.positives, split.log.catalog.genre_matrix, ks,
                                      item_popularity=train_popularity(split))
    return lists, metrics, curves


def train_popularity(split: Split) -> NDArray[np.float64]:
    """Distinct training users per item: what ``mean_pop_rank`` and the top title's ``pop_rank`` rank by."""
    return np.asarray(split.train_items.sum(axis=0), np.float64).ravel()


def top_title(lists: NDArray[np.int32], split: Split) -> dict[str, Any]:
    """The title found in the most top-10 lists, for the report (``item`` is -1 when no list has one).

    Beside who it is and in how many lists (``users``): its training popularity rank (``pop_rank``, 1 = the
    most distinct training users) and the test users for whom it is a held-out positive (``positives``). The
    two tell a system that pushes an old head title to everybody from one that pushes the title most users
    really go on to watch (the generated world's late blockbusters: a low training audience, many positives).
    """
    item, users = most_common_item(lists)
    catalog = split.log.catalog
    found = item >= 0
    return {"item": item, "id": catalog.item_ids[item] if found else None,
            "title": catalog.titles[item] if found else None, "users": users,
            "pop_rank": int(popularity_ranks(train_popularity(split))[item]) if found else None,
            "positives": int(split.positives[:, item].sum()) if found else 0}


def collect_candidates(
    recommender: Any, split: Split, chunk: int | None = None
) -> dict[str, list[NDArray[np.int64]]] | None:
    """Per-source candidate lists for the test users when the system offers ``candidates(users)``."""
    if not hasattr(recommender, "candidates"):
        return None
    users = split.test_users
    chunk = chunk or default_chunk(split.n_items)
    merged: dict[str, list[NDArray[np.int64]]] = {}
    for start in range(0, len(users), chunk):
        batch = users[start:start + chunk]
        for source, cands in recommender.candidates(batch).items():
            rows = list(cands) if not isinstance(cands, np.ndarray) else [row for row in cands]
            merged.setdefault(source, []).extend(np.asarray(r, np.int64) for r in rows)
    return merged


def run_evaluation(
    log: EventLog,
    systems: dict[str, SystemFactory],
    split: str | Split = "user-last",
    ks: tuple[int, ...] = (10, 20),
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    chunk: int | None = None,
) -> EvalReport:
    """Cut ``log`` (or take a ready ``Split``), fit and score every system, return the report.

    ``seconds`` per system covers fitting (hyper-parameter search included) and producing the
    lists for every test user.
    """
    say = progress or _quiet
    the_split = split if isinstance(split, Split) else make_split(log, split)
    summary = the_split.summary()
    say(f"{the_split.name}: {summary['train_events']} training events, {summary['test_users']} test users, "
        f"{summary['positives']} positives")
    context = EvalContext(split=the_split, seed=seed, progress=say)
    report = EvalReport(split=the_split.name, test_users=the_split.n_test_users,
                        positives=the_split.n_positives, train_events=int(summary["train_events"]),
                        n_items=the_split.n_items, ks=list(ks))
    for name, factory in systems.items():
        say(f"{name}: fitting")
        started = time.perf_counter()
        recommender = factory(the_split.train, context)
        fitted = time.perf_counter()
        say(f"{name}: ranking for {the_split.n_test_users} users")
        lists, metrics, curves = _score(recommender, the_split, ks, chunk)
        finished = time.perf_counter()
        extra = dict(getattr(recommender, "extra", {}) or {})
        row: dict[str, Any] = {**metrics, "top_title": top_title(lists, the_split), "seconds": finished - started,
                               "fit_seconds": fitted - started, **extra}
        report.systems[name] = row
        report.curves[name] = curves
        candidates = collect_candidates(recommender, the_split, chunk)
        if candidates:
            report.candidate_recall[name] = candidate_recall(the_split.positives, candidates)
        say(f"{name}: ndcg@{ks[0]}={metrics[f'ndcg@{ks[0]}']:.4f} in {finished - started:.1f}s")
    return report
