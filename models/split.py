"""Offline evaluation splits: which events train, which item events are held out, and the positives.

Two protocols, both cut along time so no system sees the future of a user it is scored on:

``user-last`` (the default)
    Every user with at least ``min_events`` item events (rows with ``item >= 0``, any kind) holds
    out the latest ``floor(test_fraction * n)`` of them, at least one. "Latest" is by row order,
    which is time order (``load_log`` sorts by ts, stably), so ties in ts are broken by row order.
    Everything else trains: all item events of the other users, and the earlier item events of
    the evaluated ones. Non-item rows (impressions, profile upserts) stay in training when their ts
    is earlier than the user's first held-out event (for a user with nothing held out: all of
    them), so no impression shown "after" the cut leaks into training; the dropped ones are in
    neither part.

``global-time``
    One cut for everybody at the ``cut_quantile`` quantile of item-event time. Rows (item or not)
    earlier than the cut train; the later item events of users with at least one training item
    event are held out. Users first seen after the cut are cold-start and not evaluated here.

Positives (for both): the distinct held-out items of a user that (a) have at least one training
interaction by anyone (nothing could learn an item never seen in training) and (b) are not among
the user's own training items. (b) matters only for logs with repeated interactions (the
synthetic world; MovieLens has one rating per pair): the protocol ranks the whole catalogue with
the user's training items excluded, so such an item could never be recommended. Test users are
the users with at least one positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from models.dataset import EventLog

SplitName = Literal["user-last", "global-time"]
SPLITS: Final[tuple[str, ...]] = ("user-last", "global-time")


@dataclass
class Split:
    """A log cut into training rows and held-out item rows, with the positives to rank."""

    name: str
    log: EventLog  # the log the split was cut from (indices shared with ``train``)
    train_mask: NDArray[np.bool_]  # rows of ``log`` that train
    test_mask: NDArray[np.bool_]  # held-out item rows of ``log`` (before filtering to positives)
    train: EventLog  # ``log.select(train_mask)``: what every system is fitted on
    train_items: sp.csr_matrix  # (n_users, n_items) binary: any training item event of the user
    test_users: NDArray[np.int32]  # users with at least one positive, ascending
    positives: sp.csr_matrix  # (len(test_users), n_items) binary; row r belongs to test_users[r]

    @property
    def n_items(self) -> int:
        return self.log.catalog.n_items

    @property
    def n_test_users(self) -> int:
        return len(self.test_users)

    @property
    def n_positives(self) -> int:
        return int(self.positives.nnz)

    def positives_per_user(self) -> NDArray[np.int64]:
        return np.diff(self.positives.indptr).astype(np.int64)

    def exclude(self, users: NDArray[np.int32]) -> sp.csr_matrix:
        """Training items of ``users`` (rows aligned with ``users``): what may not be recommended."""
        return self.train_items[users]

    def summary(self) -> dict[str, int | str]:
        return {"split": self.name, "train_events": int(self.train_mask.sum()),
                "held_out_events": int(self.test_mask.sum()), "test_users": self.n_test_users,
                "positives": self.n_positives}


def interaction_matrix(log: EventLog) -> sp.csr_matrix:
    """Binary (n_users, n_items) matrix: 1 where the user has any item event (any kind, any value)."""
    rows = log.item >= 0
    data = np.ones(int(rows.sum()), np.float32)
    matrix = sp.csr_matrix((data, (log.user[rows], log.item[rows])), shape=(log.n_users, log.catalog.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # repeated events of one pair count once
    return matrix


def make_split(
    log: EventLog,
    name: str = "user-last",
    *,
    test_fraction: float = 0.2,
    min_events: int = 5,
    cut_quantile: float = 0.8,
) -> Split:
    """Cut ``log`` by the protocol ``name`` (see the module docstring)."""
    if name == "user-last":
        train_mask, test_mask = _user_last(log, test_fraction, min_events)
    elif name == "global-time":
        train_mask, test_mask = _global_time(log, cut_quantile)
    else:
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    train = log.select(train_mask)
    train_items = interaction_matrix(train)
    test_users, positives = _positives(log, test_mask, train_items)
    return Split(name=name, log=log, train_mask=train_mask, test_mask=test_mask, train=train,
                 train_items=train_items, test_users=test_users, positives=positives)


def _user_last(
    log: EventLog, test_fraction: float, min_events: int
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    is_item = log.item_events()
    rows = np.flatnonzero(is_item)
    users = log.user[rows]
    # A stable sort by user keeps each user's rows in log (= time, then row) order.
    order = np.argsort(users, kind="stable")
    rows, users = rows[order], users[order]
    counts = np.bincount(users, minlength=log.n_users)
    # floor(0.2 n), at least one (as RecBole's ratio split); the epsilon guards 0.2 * 15 = 2.9999...
    n_test = np.where(counts >= min_events, np.maximum(1, np.floor(counts * test_fraction + 1e-9)), 0).astype(np.int64)
    starts = np.cumsum(counts) - counts
    position = np.arange(len(rows)) - starts[users]
    held = position >= (counts - n_test)[users]
    test_mask = np.zeros(log.n_events, bool)
    test_mask[rows[held]] = True

    # The user's first held-out ts: non-item rows from then on are dropped (they happened after the cut).
    first_held = np.full(log.n_users, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first_held, log.user[test_mask], log.ts[test_mask])
    train_mask = (is_item & ~test_mask) | (~is_item & (log.ts < first_held[log.user]))
    return train_mask, test_mask


def _global_time(log: EventLog, cut_quantile: float) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    is_item = log.item_events()
    if not is_item.any():
        return np.ones(log.n_events, bool), np.zeros(log.n_events, bool)
    cut = np.quantile(log.ts[is_item], cut_quantile)
    train_mask = log.ts < cut
    seen = np.zeros(log.n_users, bool)
    seen[log.user[train_mask & is_item]] = True
    test_mask = is_item & ~train_mask & seen[log.user]
    return train_mask, test_mask


def _positives(
    log: EventLog, test_mask: NDArray[np.bool_], train_items: sp.csr_matrix
) -> tuple[NDArray[np.int32], sp.csr_matrix]:
    users, items = log.user[test_mask], log.item[test_mask]
    held = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=train_items.shape)
    held.sum_duplicates()
    held.data[:] = 1.0
    trained_anywhere = np.asarray(train_items.sum(axis=0)).ravel() > 0
    held = held.multiply(trained_anywhere[None, :].astype(np.float32)).tocsr()  # (a) item seen in training
    held = (held - held.multiply(train_items)).tocsr()  # (b) not one of the user's own training items
    held.eliminate_zeros()
    held.sort_indices()
    test_users = np.flatnonzero(np.diff(held.indptr) > 0).astype(np.int32)
    return test_users, held[test_users].tocsr()
