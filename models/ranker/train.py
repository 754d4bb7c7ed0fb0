"""Training the Wide & Deep ranker on what retrieval returned, request by request.

Examples: one row per (request, candidate) where the candidates are what the candidate generators
actually returned for that request (~1,000 per request), so the ranker learns to order retrieval's
output rather than the whole catalogue. ``groups[r]`` is the request id of row ``r``.

Labels: ``labels[r]`` in [0, 1] is the engagement the user showed with the candidate after the
request, as defined once in ``models.feedback.engagement`` (the strongest event for the pair): a
completion is 1; a partial watch counts by the share watched, capped at 0.8 so that finishing stays
best (watch-time weighted); a rating maps 0.5..5 stars to 0..1; a save 0.6; a start alone 0.3; a
click 0.1; a skip 0; a candidate the user never touched 0. A row is a *positive* when its label > 0.

Losses:
- ``"listwise"`` (default): softmax cross-entropy within each request, the target distribution being
  the request's labels normalised to sum 1: ``loss_g = logsumexp(s_g) - sum_i p_i s_i``, averaged
  over requests. Requests without any positive carry no target and are skipped.
- ``"pointwise"``: binary cross-entropy with the labels as soft targets, over every row.

Both are computed for a mini-batch made of whole requests, vectorised with segment operations
(``scatter_reduce(amax)`` for the stabilising max, ``index_add_`` for the sums), no padding.

Negative subsampling (``negatives_per_group``, default 128): each epoch keeps every positive of a
request and up to N of its negatives drawn afresh (uniformly, from the seeded generator). 600 requests
× 1,000 candidates becomes ~600 × (positives + 128) rows per epoch, which is what keeps training on
ml-latest-small-sized data well under a minute on 2 cores (``benchmarks/bench_ranker.py --train``).
Uniform subsampling within a request multiplies every negative's softmax share by the same factor, so
it shifts the scores of a request by a constant and leaves their order alone. ``None`` keeps all rows.

Early stopping: with ``valid=(batch, labels, groups)``, NDCG@10 within requests (linear gains = the
labels; requests without positives skipped) after every epoch; training stops after ``patience``
epochs without improvement and the best epoch's weights are returned.

Determinism: on CPU, same data + seed + thread count → bit-identical weights. The torch RNG used for
initialisation and dropout is forked, so the caller's global RNG state is left untouched.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from models.features.batch import FeatureBatch, FeatureLayout
from models.ranker.model import WideAndDeep, batch_tensors

Loss = Literal["listwise", "pointwise"]


@dataclass(frozen=True, slots=True)
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean training loss over the epoch's mini-batches
    rows: int  # rows seen this epoch (after negative subsampling)
    groups: int  # requests seen this epoch
    seconds: float  # wall time of the epoch, validation included
    valid_ndcg10: float | None  # None without ``valid``


@dataclass(slots=True)
class TrainHistory:
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose weights were returned
    best_valid_ndcg10: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0  # whole call, data preparation included
    params: dict[str, object] = field(default_factory=dict)  # the call's hyper-parameters

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --- metrics -----------------------------------------------------------------------------------


def grouped_ndcg(scores: NDArray[np.floating], labels: NDArray[np.floating], groups: NDArray[np.integer],
                 k: int = 10) -> float:
    """Mean NDCG@k over the groups with at least one positive label; gains are the labels (linear).

    Ties in score keep input order (stable sort), so a constant score measures the input order.
    Returns nan when no group has a positive.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.float64)
    groups = np.asarray(groups)
    if not len(scores):
        return math.nan
    _, gidx = np.unique(groups, return_inverse=True)
    gidx = gidx.reshape(-1)
    n_groups = int(gidx.max()) + 1
    discount = 1.0 / np.log2(np.arange(k) + 2.0)

    def dcg(order: NDArray[np.intp]) -> NDArray[np.float64]:
        g = gidx[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
        top = rank < k
        return np.bincount(g[top], labels[order][top] * discount[rank[top]], minlength=n_groups)

    got = dcg(np.lexsort((-scores, gidx)))
    ideal = dcg(np.lexsort((-labels, gidx)))
    has_pos = ideal > 0
    if not has_pos.any():
        return math.nan
    return float(np.mean(got[has_pos] / ideal[has_pos]))


# --- training ----------------------------------------------------------------------------------


def _listwise_loss(scores: torch.Tensor, labels: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """Mean over segments of softmax cross-entropy against the segment's normalised labels.

    Segments without any positive label carry no target distribution and are left out of the mean
    (rather than dividing by a zero label sum), whatever the caller's subsampling did.
    """
    zeros = scores.new_zeros(n_seg)
    label_sum = zeros.index_add(0, seg, labels)
    has_target = label_sum > 0
    target = labels / label_sum.clamp_min(1e-12)[seg]
    # The max only stabilises exp(); logsumexp is exact for any shift, so no gradient through it.
    seg_max = zeros.scatter_reduce(0, seg, scores.detach(), reduce="amax", include_self=False)
    lse = torch.log(zeros.index_add(0, seg, torch.exp(scores - seg_max[seg]))) + seg_max
    per_segment = lse - zeros.index_add(0, seg, target * scores)
    if not bool(has_target.any()):
        return scores.sum() * 0.0  # keeps the graph; nothing to learn from this mini-batch
    return per_segment[has_target].mean()


def _group_bounds(sorted_groups: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(starts, lengths) of the runs of equal ids in a sorted id array."""
    n = len(sorted_groups)
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, n])
    return starts.astype(np.int64), lengths.astype(np.int64)


def _predict(model: WideAndDeep, tensors: Sequence[torch.Tensor], chunk: int = 65_536) -> NDArray[np.float32]:
    model.eval()
    with torch.no_grad():
        n = tensors[0].shape[0]
        out = [model(*(t[i:i + chunk] for t in tensors)) for i in range(0, n, chunk)]
    return (torch.cat(out) if out else torch.zeros(0)).numpy()


def _check_inputs(batch: FeatureBatch, labels: NDArray[np.floating], groups: NDArray[np.integer],
                  layout: FeatureLayout, what: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    labels = np.asarray(labels, np.float32).reshape(-1)
    groups = np.asarray(groups, np.int64).reshape(-1)
    n = len(batch)
    if len(labels) != n or len(groups) != n or len(batch.wide) != n or len(batch.cats) != n:
        raise ValueError(f"{what}: batch, labels and groups differ in length")
    widths = (batch.dense.shape[1], batch.wide.shape[1], batch.cats.shape[1])
    if widths != (len(layout.dense_names), len(layout.wide_names), len(layout.cat_names)):
        raise ValueError(f"{what}: batch columns {widths} do not match the layout")
    if not np.all(np.isfinite(labels)) or (n and (labels.min() < 0 or labels.max() > 1)):
        raise ValueError(f"{what}: labels must be finite and in [0, 1]")
    return labels, groups


def train_ranker(
    batch: FeatureBatch,
    labels: NDArray[np.floating],
    groups: NDArray[np.integer],
    layout: FeatureLayout,
    *,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 8192,
    seed: int = 0,
    loss: Loss = "listwise",
    weight_decay: float = 1e-5,
    negatives_per_group: int | None = 128,
    patience: int = 2,
    emb_dim: int = 16,
    hidden: Sequence[int] = (128, 64),
    dropout: float = 0.1,
    progress: Callable[[EpochStats], None] | None = None,
    valid: tuple[FeatureBatch, NDArray[np.floating], NDArray[np.integer]] | None = None,
) -> tuple[WideAndDeep, TrainHistory]:
    """Train a ``WideAndDeep`` on ``batch`` (rows of many requests); returns (model in eval mode, history).

    ``batch_size`` counts rows; a mini-batch is made of whole requests (a request larger than
    ``batch_size`` is a mini-batch of its own), requests shuffled every epoch. ``progress`` is called
    with each epoch's ``EpochStats``. See the module docstring for labels, losses and subsampling.
    """
    if loss not in ("listwise", "pointwise"):
        raise ValueError(f"loss must be 'listwise' or 'pointwise', not {loss!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    started = time.perf_counter()
    labels_np, groups_np = _check_inputs(batch, labels, groups, layout, "train")
    history = TrainHistory(params={"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "loss": loss,
                                   "weight_decay": weight_decay, "negatives_per_group": negatives_per_group,
                                   "patience": patience, "emb_dim": emb_dim, "hidden": list(hidden),
                                   "dropout": dropout, "rows": len(batch)})

    # Sort rows by request once; everything after works on contiguous runs of rows.
    order = np.argsort(groups_np, kind="stable")
    g_sorted = groups_np[order]
    y_sorted = labels_np[order]
    starts, lengths = _group_bounds(g_sorted)
    gid = np.repeat(np.arange(len(starts)), lengths)  # dense request index per sorted row
    positive = y_sorted > 0
    n_pos = np.bincount(gid, positive, minlength=len(starts)).astype(np.int64)
    keep_group = n_pos > 0 if loss == "listwise" else np.ones(len(starts), bool)
    if not keep_group.any():
        raise ValueError("train: no request has a positive label" if loss == "listwise" else "train: no rows")
    row_in_kept = keep_group[gid]
    dense_t, wide_t, cats_t = batch_tensors(batch.take(order))
    y_t = torch.from_numpy(np.ascontiguousarray(y_sorted))

    valid_data = None
    if valid is not None:
        v_labels, v_groups = _check_inputs(valid[0], valid[1], valid[2], layout, "valid")
        valid_data = (batch_tensors(valid[0]), v_labels, v_groups)

    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WideAndDeep(layout, emb_dim=emb_dim, hidden=hidden, dropout=dropout)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        best_state: dict[str, torch.Tensor] | None = None
        best_metric = -math.inf
        since_best = 0
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            # 1. rows of this epoch: kept requests; all positives + up to N fresh random negatives each.
            if negatives_per_group is None:
                rows = np.flatnonzero(row_in_kept)
            else:
                # Sort key inside a request: positives first (0), negatives after in random order (1 + u).
                key = gid * 4.0 + np.where(positive, 0.0, 1.0 + rng.random(len(gid)))
                within = np.argsort(key, kind="stable")  # stays grouped by request
                rank = np.arange(len(within)) - starts[gid[within]]
                rows = within[(rank < n_pos[gid[within]] + negatives_per_group) & keep_group[gid[within]]]
            r_starts, r_lengths = _group_bounds(gid[rows])
            # 2. shuffle requests, lay their rows out contiguously in the new order.
            perm = rng.permutation(len(r_starts))
            p_len = r_lengths[perm]
            p_off = np.cumsum(p_len) - p_len
            epoch_rows = rows[np.repeat(r_starts[perm] - p_off, p_len) + np.arange(int(p_len.sum()))]
            seg_all = np.repeat(np.arange(len(perm)), p_len)
            # 3. cut into mini-batches of whole requests: a request starts a new batch when the rows
            #    before it cross a multiple of batch_size.
            batch_of_group = p_off // batch_size
            cut_groups = np.flatnonzero(np.r_[True, batch_of_group[1:] != batch_of_group[:-1]])
            cut_rows = np.r_[p_off[cut_groups], len(epoch_rows)]
            cut_groups = np.r_[cut_groups, len(perm)]
            model.train()
            total, n_batches = 0.0, 0
            for b in range(len(cut_groups) - 1):
                lo, hi = int(cut_rows[b]), int(cut_rows[b + 1])
                idx = torch.from_numpy(epoch_rows[lo:hi])
                scores = model(dense_t[idx], wide_t[idx], cats_t[idx])
                target = y_t[idx]
                if loss == "listwise":
                    seg = torch.from_numpy(seg_all[lo:hi] - cut_groups[b])
                    value = _listwise_loss(scores, target, seg, int(cut_groups[b + 1] - cut_groups[b]))
                else:
                    value = F.binary_cross_entropy_with_logits(scores, target)
                optimiser.zero_grad(set_to_none=True)
                value.backward()
                optimiser.step()
                total += float(value.detach())
                n_batches += 1

            metric = None
            if valid_data is not None:
                metric = grouped_ndcg(_predict(model, valid_data[0]), valid_data[1], valid_data[2], k=10)
            stats = EpochStats(epoch, total / max(n_batches, 1), len(epoch_rows), len(perm),
                               time.perf_counter() - t0, metric)
            history.epochs.append(stats)
            if progress is not None:
                progress(stats)
            if metric is None or math.isnan(metric):
                history.best_epoch = epoch
                continue
            if metric > best_metric + 1e-6:
                best_metric, since_best, history.best_epoch = metric, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if since_best >= patience:
                    history.stopped_early = epoch < epochs
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
            history.best_valid_ndcg10 = best_metric
    model.eval()
    history.seconds = time.perf_counter() - started
    return model, history


# --- synthetic data (tests and benchmarks) ------------------------------------------------------


def synthetic_layout(wide_buckets: int = 1 << 16, n_users: int = 600, n_items: int = 10_000) -> FeatureLayout:
    """A layout shaped like the real one (ml-latest-small sizes) for tests and benchmarks."""
    return FeatureLayout(
        dense_names=("retrieval_score", "item_popularity", "item_age", "user_activity", "genre_affinity",
                     "hour_sin", "hour_cos", "session_len"),
        wide_names=("user_x_genre", "item_x_context", "cowatch"),
        wide_buckets=wide_buckets,
        cat_names=("user", "item", "genre", "device"),
        cat_cardinalities=(n_users + 1, n_items + 1, 21, 7),
    )


def synthetic_examples(layout: FeatureLayout, n_groups: int, group_size: int, seed: int = 0,
                       positive_rate: float = 0.03) -> tuple[FeatureBatch, NDArray[np.float32], NDArray[np.int64]]:
    """Requests of ``group_size`` candidates whose engagement depends on known signal in every part.

    Relevance = dense (retrieval_score, -item_popularity) + wide (a per user×genre bucket affinity:
    only the crossed feature carries it) + categorical (a per-item quality) + noise. In each request the
    top ``positive_rate`` by relevance get graded labels in {0.3, 0.6, 1.0} (start, save, completion),
    the rest 0. Requests are numbered 0..n_groups-1 and rows come grouped but in random order inside.
    Must be called with the layout of ``synthetic_layout`` (column roles are positional).
    """
    rng = np.random.default_rng(seed)
    n = n_groups * group_size
    n_users, n_items, n_genres, n_devices = layout.cat_cardinalities
    groups = np.repeat(np.arange(n_groups, dtype=np.int64), group_size)
    user = 1 + (groups % (n_users - 1))
    item = rng.integers(1, n_items, n)
    genre = 1 + item % (n_genres - 1)  # an item has one genre
    device = np.repeat(rng.integers(1, n_devices, n_groups), group_size)
    dense = rng.normal(0.0, 1.0, (n, len(layout.dense_names))).astype(np.float32)
    bucket_ug = (user * 1_000_003 + genre * 7_919) % layout.wide_buckets
    wide = np.stack([bucket_ug,
                     (item * 31 + device * 1_009) % layout.wide_buckets,
                     rng.integers(0, layout.wide_buckets, n)], axis=1).astype(np.int64)
    cats = np.stack([user, item, genre, device], axis=1).astype(np.int64)
    # Fixed hidden effects (own generator so they do not depend on n).
    effects = np.random.default_rng(12_345)
    affinity = effects.normal(0.0, 1.0, layout.wide_buckets)
    quality = effects.normal(0.0, 1.0, n_items)
    relevance = (0.9 * dense[:, 0] - 0.6 * dense[:, 1] + 1.0 * affinity[bucket_ug] + 0.8 * quality[item]
                 + rng.normal(0.0, 0.5, n))
    # Per-request threshold at the (1 - positive_rate) quantile; grade by how far above it a row is.
    rel = relevance.reshape(n_groups, group_size)
    top = max(1, round(positive_rate * group_size))
    thresholds = np.sort(rel, axis=1)[:, group_size - top][:, None]
    above = rel - thresholds
    spread = np.maximum(above.max(axis=1, keepdims=True), 1e-6)
    grade = np.where(above >= 0, np.select([above > 0.5 * spread, above > 0.2 * spread], [1.0, 0.6], 0.3), 0.0)
    labels = grade.reshape(n).astype(np.float32)
    return FeatureBatch(dense, wide, cats), labels, groups
