"""The stored form of a title's online learning sums (``{prefix}:il:{space:08x}:{item}``, a HASH): field names
and codecs, shared by the worker effect that adds to them and the publisher that reads them back.

``space`` is the bundle's CF space (:func:`models.item_vector_codec.space_id`): a retrained bundle has another
one, in which old sums of user vectors mean nothing, so its workers start new keys (the old ones are never read
again; delete them with ``SCAN MATCH {KeyLayout.item_learning_space(old)}*`` when convenient). Why and how
titles learn: :mod:`streams.item_learning`.

====== =====================================================================================
w      Σ w_e (fixed point, :data:`SCALE` units per 1.0)  ─┐ added with HINCRBY by the interactions
n      number of engagements counted                      │ batches: integer sums commute, so any
s{k}   Σ w_e · p_e[k] (fixed point), k < d               ─┘ order and batching give the same (absent = 0)
q0     content vector (float32 LE bytes), written by the catalog hook with the title's upsert
gone   "1" once the title was removed (nothing is published for it any more)
pub    the vector last put on ``item-vectors`` for it (float32 LE), for the publishing threshold
====== =====================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

SCALE: Final = 1 << 24  # fixed-point units per 1.0: ~6e-8 resolution; int64 holds ~1e11 weight-2 engagements


@dataclass(frozen=True, slots=True)
class ItemSums:
    """One title's increments (or totals): fixed-point ``w`` and ``s``, count ``n``, newest event ``ts``."""

    w: int
    n: int
    s: NDArray[np.int64]
    ts: int


def to_fixed(x: NDArray[np.floating] | float) -> NDArray[np.int64]:
    """Fixed-point integers of ``x`` (float64 arithmetic, round half to even)."""
    return np.rint(np.asarray(x, np.float64) * SCALE).astype(np.int64)


def sum_field(k: int) -> str:
    return f"s{k}"


def state_fields(dim: int) -> list[str]:
    """The fields of a title's whole state, in the order :func:`parse_learning_state` reads them."""
    return ["w", "n", *(sum_field(k) for k in range(dim)), "q0", "gone", "pub"]


def parse_learning_state(raw: Sequence[Any], dim: int) -> tuple[ItemSums, bytes | None, bool, bytes | None]:
    """``HMGET`` reply of :func:`state_fields` → ``(sums, q0 bytes, gone, pub bytes)``."""
    w, n, *rest = raw
    s = np.array([int(x) if x is not None else 0 for x in rest[:dim]], np.int64)
    q0, gone, pub = rest[dim:dim + 3]
    return ItemSums(int(w or 0), int(n or 0), s, 0), q0, gone is not None and bytes(gone) == b"1", pub


def increment_fields(inc: ItemSums) -> list[Any]:
    """``[field, amount, ...]`` of one title's increments (zero components left out: absent reads as 0)."""
    out: list[Any] = ["w", inc.w, "n", inc.n]
    for k in np.flatnonzero(inc.s).tolist():
        out += [sum_field(k), int(inc.s[k])]
    return out


def vector_bytes(vector: NDArray[np.floating]) -> bytes:
    return np.ascontiguousarray(vector, "<f4").tobytes()


def bytes_vector(raw: bytes | None, dim: int) -> NDArray[np.float32] | None:
    if raw is None or len(raw) != 4 * dim:
        return None
    return np.frombuffer(raw, "<f4").astype(np.float32)
