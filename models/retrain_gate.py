"""The retraining gate: score a candidate bundle and the current one on one recent validation window, and decide.

Pure logic (no Kafka, no files written): ``streamrec retrain`` (:mod:`streamrec.commands.retrain`) does the I/O.

The window is the newest ``window_share`` of the log's time (the ``global-time`` split of :mod:`models.split`): item
events after the cut are held out, for users with training events before it. The candidate is trained on everything
before the cut (it never sees the window); both models are then asked, through THE recommend pipeline
(:mod:`models.recommend.pipeline`, as the server and ``streamrec eval``'s ``two_stage`` do), for every sampled test
user just after their last event before the cut, and the lists are scored by ``models.eval``'s metrics code
(NDCG@10, recall@20 by default).

Both models are asked with the same knowledge of the user: their history is the split's training part (re-keyed into
each model's rows by id), not what the bundle recorded. A current bundle trained on data that includes the window
would otherwise exclude the held-out titles as "already watched" and look far worse than it is. Its vectors and
ranker may still have seen the window (``current_saw_window`` in the record), which can only favour it: the gate
then errs on the side of keeping what runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.candidates import Histories, user_histories
from models.dataset import EventLog
from models.eval.protocol import evaluate_system
from models.features.offline import Replay
from models.recommend.model import RecommenderModel
from models.recommend.pipeline import RankingState, Snapshot, rank_and_answer, retrieve
from models.split import Split, make_split
from models.two_stage import request_at

GATE_METRICS: Final[tuple[str, ...]] = ("ndcg@10", "recall@20")
DEFAULT_TOLERANCE: Final = 0.02  # relative: a candidate may score 2% below the current bundle and still publish


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why (goes into the candidate's manifest as ``retrain``)."""

    publish: bool
    reason: str
    tolerance: float
    candidate: dict[str, float]
    current: dict[str, float] | None  # None: no bundle was published yet
    current_version: str | None = None
    window: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(candidate: dict[str, float], current: dict[str, float] | None, tolerance: float = DEFAULT_TOLERANCE,
           metrics: tuple[str, ...] = GATE_METRICS, *, current_version: str | None = None,
           window: dict[str, Any] | None = None) -> GateDecision:
    """Publish when, on every metric of ``metrics``, the candidate is at least ``(1 - tolerance)`` times the
    current bundle's score (relative, so one tolerance fits metrics of different scales). No current bundle:
    publish. A current score of 0 is met by any candidate (nothing to lose); a missing or NaN candidate score
    fails."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    extra = {"current_version": current_version, "window": window or {}}
    if current is None:
        return GateDecision(True, "no current bundle", tolerance, dict(candidate), None, **extra)
    worse = []
    for name in metrics:
        cand, cur = candidate.get(name), current.get(name)
        if cand is None or not np.isfinite(cand):
            worse.append(f"{name}: candidate has no score")
            continue
        if cur is None or not np.isfinite(cur):
            continue  # the current bundle has no score to defend on this metric
        floor = cur * (1.0 - tolerance)
        if cand < floor:
            worse.append(f"{name} {cand:.4f} < {floor:.4f} (current {cur:.4f} - {tolerance:.0%})")
    if worse:
        return GateDecision(False, "worse: " + "; ".join(worse), tolerance, dict(candidate), dict(current), **extra)
    return GateDecision(True, "not worse", tolerance, dict(candidate), dict(current), **extra)


def validation_split(log: EventLog, *, window_share: float = 0.2, max_users: int = 500, seed: int = 0) -> Split:
    """The validation window of ``log``: its newest ``window_share`` of item-event time held out (``global-time``),
    the test users sampled down to ``max_users`` (scoring runs the full pipeline per user: this keeps the gate to
    seconds)."""
    if not 0.0 < window_share < 1.0:
        raise ValueError(f"window_share must be in (0, 1), got {window_share}")
    split = make_split(log, "global-time", cut_quantile=1.0 - window_share)
    if len(split.test_users) <= max_users:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.test_users), max_users, replace=False))
    return dataclasses.replace(split, test_users=split.test_users[keep], positives=split.positives[keep])


def window_summary(split: Split) -> dict[str, Any]:
    """What the manifest records of the window: its size and time span."""
    held = split.log.ts[split.test_mask]
    return {"protocol": split.name, "test_users": len(split.test_users), "positives": int(split.positives.nnz),
            "held_out_events": int(split.test_mask.sum()), "train_events": int(split.train.n_events),
            "from_ts": int(held.min()) if len(held) else None, "to_ts": int(held.max()) if len(held) else None}


def saw_window(model: RecommenderModel, split: Split) -> bool:
    """Whether ``model`` was trained on events of the window (its recorded histories reach into it)."""
    held = split.log.ts[split.test_mask]
    if model.histories is None or not len(model.histories.ts) or not len(held):
        return False
    return bool(model.histories.ts.max() >= held.min())


def _histories_in(model: RecommenderModel, log: EventLog) -> Histories:
    """``log``'s item events per log user, with items as ``model`` rows (titles the model lacks are dropped)."""
    h = user_histories(log)
    index = model.items.index
    to_model = np.array([index.get(item_id, -1) for item_id in log.catalog.item_ids], np.int64)
    rows = to_model[h.items] if len(h.items) else np.zeros(0, np.int64)
    keep = rows >= 0
    users = np.repeat(np.arange(log.n_users), np.diff(h.ptr))
    counts = np.bincount(users[keep], minlength=log.n_users)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Histories(ptr, rows[keep].astype(np.int32), h.weights[keep], h.ts[keep])


def as_of(model: RecommenderModel, log: EventLog) -> RecommenderModel:
    """``model`` re-keyed to ``log``'s users: their histories from ``log``, their trained vectors (where the
    model has one) from the model. Everything else (items, indexes, ranker) is the model's own."""
    rows = np.array([model.user_index.get(user_id, -1) for user_id in log.user_ids], np.int64)
    known = rows >= 0
    vectors = np.zeros((log.n_users, model.user_vectors.shape[1]), np.float32)
    trained = np.zeros(log.n_users, bool)
    vectors[known] = model.user_vectors[rows[known]]
    trained[known] = model.trained_users[rows[known]]
    limits = log.user_maturity_limit if len(log.user_maturity_limit) == log.n_users else None
    return dataclasses.replace(model, user_index=dict(log.user_index), user_vectors=vectors, trained_users=trained,
                               histories=_histories_in(model, log), maturity_limit=limits)


class PipelineRecommender:
    """A loaded model as a ``models.eval`` list recommender over ``train``'s users and catalogue: each user is
    asked just after their last training event, with the feature state of ``train`` replayed up to then (what
    ``TwoStageRecommender`` does for a model fitted in process, for any bundle's model)."""

    def __init__(self, model: RecommenderModel, train: EventLog) -> None:
        self.log = train
        self.model = as_of(model, train)
        ids = self.model.items.ids
        log_index = train.catalog.index
        # model row -> train catalogue index (-1: a title the log does not know; its features read as empty)
        self.to_log = np.array([log_index.get(str(item_id), -1) for item_id in ids], np.int64)

    def recommend(self, users: NDArray[np.int32], k: int, exclude: Any = None) -> NDArray[np.int32]:
        log, model = self.log, self.model
        last_row = np.full(log.n_users, -1, np.int64)
        last_row[log.user] = np.arange(log.n_events)
        end = int(log.ts.max()) + 1 if log.n_events else 0
        requests = []
        for u in np.asarray(users, np.int64).tolist():
            row = int(last_row[u])
            requests.append(request_at(log, u, max(row, 0), int(log.ts[row]) + 1 if row >= 0 else end, k))
        replay = Replay(log)
        out = np.full((len(requests), k), -1, np.int32)
        for g in np.argsort([int(r.now_ms or 0) for r in requests], kind="stable").tolist():
            request = requests[g]
            now = int(request.now_ms or 0)
            replay.advance(now)  # every event before the request, nothing after
            retrieved = retrieve(model, request, Snapshot(), now)
            rows = retrieved.candidates.items.astype(np.int64)
            state = RankingState(replay.store.read_user(int(users[g])), replay.store.read_items(self.to_log[rows], now),
                                 model.static.rows(rows))
            picks = self.to_log[rank_and_answer(model, request, retrieved, state, now, model.config.post).answer.rows]
            picks = picks[picks >= 0][:k]
            out[g, : len(picks)] = picks
        return out


def score_model(model: RecommenderModel, split: Split, metrics: tuple[str, ...] = GATE_METRICS) -> dict[str, float]:
    """``metrics`` of ``model`` on the window (``models.eval``'s metric code, lists from the pipeline)."""
    ks = tuple(sorted({int(name.split("@")[1]) for name in metrics if "@" in name} | {10, 20}))
    scores, _curves = evaluate_system(PipelineRecommender(model, split.train), split, ks)
    return {name: float(scores[name]) for name in metrics}
