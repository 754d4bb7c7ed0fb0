"""Regression: the most-recent cut keeps the whole history when it is shorter than ``max_items``.

Before the fix ``order[len(order) - max_items:]`` had a negative start for
``0 < len(order) < max_items``, which Python counts from the end: it kept ``min(len, max - len)``
items (3 positives, max 5: the last 2) instead of every positive.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.candidates import most_recent, recent_positives


@pytest.mark.parametrize("n_items", [1, 2, 3, 4])
def test_recent_positives_keeps_all_when_history_is_shorter_than_max(n_items: int) -> None:
    items = np.arange(10, 10 + n_items)
    ts = np.arange(n_items) * 100
    kept, net, last = recent_positives(items, np.ones(n_items), ts, max_items=5)
    np.testing.assert_array_equal(kept, items)  # all of them, oldest first
    np.testing.assert_array_equal(last, ts)
    np.testing.assert_array_equal(net, np.ones(n_items, np.float32))


def test_recent_positives_three_items_max_five_is_not_cut_to_two() -> None:
    """The case from the bug report: 3 positives, max 5 kept only the last 2."""
    kept = recent_positives(np.array([7, 8, 9]), np.ones(3), np.array([1, 2, 3]), max_items=5)[0]
    assert kept.tolist() == [7, 8, 9]


@pytest.mark.parametrize("max_items", [1, 2, 3, 4, 5, 8])
def test_most_recent_keeps_the_last_min_of_len_and_max(max_items: int) -> None:
    items = np.array([3, 1, 4, 5])
    ts = np.array([10, 20, 30, 40])
    full = recent_positives(items, np.ones(4), ts)
    kept, net, last = most_recent(full, max_items)
    expected = min(max_items, 4)
    np.testing.assert_array_equal(kept, items[4 - expected:])
    np.testing.assert_array_equal(last, ts[4 - expected:])
    assert len(net) == expected
    # the shortcut and the direct call agree on the same cut
    np.testing.assert_array_equal(kept, recent_positives(items, np.ones(4), ts, max_items)[0])


def test_non_positive_max_keeps_nothing() -> None:
    full = recent_positives(np.array([1, 2]), np.ones(2))
    for max_items in (0, -3):
        assert len(recent_positives(np.array([1, 2]), np.ones(2), max_items=max_items)[0]) == 0
        assert len(most_recent(full, max_items)[0]) == 0
