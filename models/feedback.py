"""What an event says about a user's taste: implicit-feedback weights and the engagement label.

Two definitions, written down once and imported by training, evaluation and the workers:

- ``FEEDBACK_WEIGHT``: the confidence an event adds to a (user, item) pair for collaborative
  filtering. Completions and saves count more than a start; a skip counts against the pair.
- ``engagement``: the ranker's label in [0, 1] for a (user, item) pair: the strongest engagement
  the user showed with the item. A completion is 1; a partial watch counts by the share watched
  (capped at 0.8 so finishing stays best); a rating maps 0.5..5 stars linearly to 0..1; a save
  0.6; a start alone 0.3; a click 0.1; a skip 0. A candidate the user never touched is 0.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.dataset import KIND

FEEDBACK_WEIGHT: Final[dict[str, float]] = {
    "play": 1.0,
    "progress": 0.0,  # heartbeats repeat what play/complete already say
    "complete": 2.0,
    "rating": 1.0,  # scaled by the rating below
    "click": 0.25,
    "skip": -1.0,
    "add_to_list": 1.5,
    "impression": 0.0,
    "user_upsert": 0.0,
}
_WEIGHT_BY_CODE = np.array([FEEDBACK_WEIGHT[name] for name in sorted(KIND, key=KIND.__getitem__)], np.float32)
_ENGAGEMENT_BASE = {"play": 0.3, "click": 0.1, "add_to_list": 0.6, "complete": 1.0, "skip": 0.0}


def feedback_weights(kind: NDArray[np.int8], value: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per-event CF weight; ratings scale from 0.25 (half a star) to 2.0 (five stars)."""
    weights = _WEIGHT_BY_CODE[kind].copy()
    is_rating = kind == KIND["rating"]
    weights[is_rating] = np.clip(0.25 + (value[is_rating] - 0.5) * (1.75 / 4.5), 0.25, 2.0)
    return weights


def engagement(
    kind: NDArray[np.int8], value: NDArray[np.float32], duration: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Per-event engagement label in [0, 1] (see the module docstring)."""
    out = np.zeros(len(kind), np.float32)
    for name, base in _ENGAGEMENT_BASE.items():
        out[kind == KIND[name]] = base
    rating = kind == KIND["rating"]
    out[rating] = (value[rating] - 0.5) / 4.5
    progress = kind == KIND["progress"]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(duration[progress] > 0, value[progress] / np.maximum(duration[progress], 1e-6), 0.3)
    out[progress] = np.clip(share, 0.0, 0.8)
    return out
