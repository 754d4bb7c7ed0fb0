"""The stored form of the ranking feature state: a user's msgpack value and an item's hash fields.

One codec for the store's writes, the server's reads and ``inspect``, so the value format is defined once.

``{prefix}:u:{user_id}`` — STRING, one user's :class:`~models.features.state.UserStates` row as a msgpack
array (:class:`UserBlob`). Only the worker that owns the user's partition writes it, and always whole (read,
update, ``SET ... EX``), so a hash's per-field access would buy nothing: one packed value is one short command
per user instead of an ``HSET`` with ~80 arguments plus an ``EXPIRE``, and it decodes faster. Fields, in order:

======= ===============================================================================================
v       layout version (1)
n       counts ``[ev, play, comp, skip, rate, click, add]`` (``ev``: interactions, heartbeats excluded)
rsum    sum of ratings in thousandths of a star
last    ts (ms) of the newest interaction (``-2**63``: never)
dev     last known device code (0 unknown) · ``cty`` country code (0 unknown) · ``hr`` hour (-1)
ge      epoch of the genre sums (``ts // (8 * 14 days)``; ``-2**63``: none)
g       ``{genre: [sum of epoch ge-1, sum of epoch ge]}`` (fixed point, 2**20), non-zero genres only
rec     ``[[item_id, ts], ...]``: the last 20 distinct engaged items, most recent first
======= ===============================================================================================

``{prefix}:i:{item_id}`` — HASH, one item's state, decimal integers updated with ``HINCRBY`` only:

======================= ===========================================================================
field                   value
======================= ===========================================================================
play comp skip rate     counts per kind
rsum                    sum of ratings in thousandths of a star
imp click add           impressions (each time shown), clicks, saves
d:{epoch}               1-day-half-life popularity sum of epoch ``ts // 8 days`` (fixed point, 2**20)
w:{epoch}               7-day-half-life popularity sum of epoch ``ts // 56 days``
======================= ===========================================================================

A read at ``now`` needs the fields of ``now``'s popularity epochs and of the one before each
(:func:`item_fields`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from models.features import spec
from models.features.hashing import hash_str
from models.features.state import ITEM_COUNT_NAMES, NO_ITEM_HASH, ItemStates, UserStates

USER_BLOB_VERSION: Final = 1


class UserBlob(msgspec.Struct, array_like=True, frozen=True):
    """The value of ``{prefix}:u:{user_id}`` (see the module docstring)."""

    v: int
    n: list[int]
    rsum: int
    last: int
    dev: int
    cty: int
    hr: int
    ge: int
    g: dict[str, tuple[int, int]]
    rec: list[tuple[str, int]]


encode_user_blob = msgspec.msgpack.Encoder().encode
_decode_blob = msgspec.msgpack.Decoder(UserBlob).decode


def decode_user_blob(raw: bytes) -> UserBlob:
    """A user's value as a struct (for debugging: ``decode_user_blob(redis.get(KeyLayout().user_state("42")))``);
    ``ValueError`` for another layout version."""
    blob = _decode_blob(raw)
    if blob.v != USER_BLOB_VERSION:
        raise ValueError(f"user state layout {blob.v} is not {USER_BLOB_VERSION}: rebuild the feature store")
    return blob


@dataclass(frozen=True, slots=True)
class StoredUser:
    """What ``{prefix}:u:{user_id}`` held when it was read: its decoded value, or ``None`` (a new or
    expired user). The server reads it once per request and hands it to the feature read."""

    blob: UserBlob | None

    @classmethod
    def decode(cls, raw: bytes | None) -> StoredUser:
        return cls(None if raw is None else decode_user_blob(raw))


class UserStateCodec:
    """Converts between :class:`UserBlob` values and rows of :class:`UserStates` for one genre vocabulary
    (a genre no longer in it is dropped on read, and gone at the next write)."""

    def __init__(self, genre_vocab: Sequence[str]) -> None:
        self.genre_vocab = list(genre_vocab)
        self._genre_pos = {g: i for i, g in enumerate(self.genre_vocab)}

    def encode(self, states: UserStates, rows: list[int], id_of: dict[int, str]) -> list[bytes]:
        """The values of ``rows`` of ``states`` (``id_of``: item hash -> id, for the recent-items lists)."""
        vocab = self.genre_vocab
        sub = states.take(np.array(rows, np.int64))
        out = []
        for k in range(len(rows)):
            sums = sub.genre_sums[k]  # (2, G)
            genres = {vocab[g]: (int(sums[0, g]), int(sums[1, g])) for g in np.flatnonzero(sums.any(axis=0)).tolist()}
            recent = [(id_of[h], t) for h, t in zip(sub.recent_item[k].tolist(), sub.recent_ts[k].tolist(), strict=True)
                      if h != NO_ITEM_HASH]
            out.append(encode_user_blob(UserBlob(
                v=USER_BLOB_VERSION, n=sub.counts[k].tolist(), rsum=int(sub.rating_milli[k]), last=int(sub.last_ts[k]),
                dev=int(sub.device[k]), cty=int(sub.country[k]), hr=int(sub.hour[k]), ge=int(sub.genre_epoch[k]),
                g=genres, rec=recent,
            )))
        return out

    def fill(self, blobs: Sequence[UserBlob | None], states: UserStates, rows: Sequence[int],
             id_of: dict[int, str]) -> None:
        """Fill ``rows`` of ``states`` from stored values (``None``: a new or expired user, left empty);
        ``id_of`` learns the hashes of the recent items' ids."""
        for u, blob in zip(rows, blobs, strict=True):
            if blob is None:
                continue
            states.counts[u] = blob.n
            states.rating_milli[u] = blob.rsum
            states.last_ts[u] = blob.last
            states.device[u] = blob.dev
            states.country[u] = blob.cty
            states.hour[u] = blob.hr
            states.genre_epoch[u] = blob.ge
            for genre, pair in blob.g.items():
                g = self._genre_pos.get(genre)
                if g is not None:
                    states.genre_sums[u, :, g] = pair
            for slot, (item_id, ts) in enumerate(blob.rec[: spec.RECENT_ITEMS]):
                h = hash_str(item_id)
                id_of[h] = item_id
                states.recent_item[u, slot] = h
                states.recent_ts[u, slot] = ts

    def fill_raw(self, raws: Sequence[bytes | None], states: UserStates, rows: Sequence[int],
                 id_of: dict[int, str]) -> None:
        """:meth:`fill` from ``GET`` replies."""
        self.fill([None if raw is None else decode_user_blob(raw) for raw in raws], states, rows, id_of)

    def user_states(self, stored: StoredUser) -> UserStates:
        """One user's state as a one-row :class:`UserStates`."""
        states = UserStates.empty(1, len(self.genre_vocab))
        self.fill([stored.blob], states, [0], {})
        return states


def item_fields(now_ts: int) -> tuple[list[str], tuple[int, ...]]:
    """The hash fields a read at ``now_ts`` needs (counts, then per popularity half-life the previous and the
    current epoch's sum), and those current epochs."""
    epochs = ItemStates.epochs_at(now_ts)
    fields = list(ITEM_COUNT_NAMES)
    for (field_prefix, _), end in zip(spec.POP_HALF_LIVES, epochs, strict=True):
        fields += [f"{field_prefix}:{end - 1}", f"{field_prefix}:{end}"]
    return fields, epochs


def parse_item_rows(rows: Sequence[Sequence[Any]], width: int) -> NDArray[np.int64]:
    """``HMGET`` replies (decimal byte strings, ``None`` for absent fields) as an int64 matrix."""
    if not rows:
        return np.zeros((0, width), np.int64)
    flat = [b"0" if v is None else v for row in rows for v in row]
    # numpy parses the decimal byte strings in C: much faster than int() per value.
    return np.array(flat, dtype=np.bytes_).astype(np.int64).reshape(len(rows), width)


def item_states(values: NDArray[np.int64], epochs: tuple[int, ...]) -> ItemStates:
    """:class:`ItemStates` from rows of :func:`item_fields` values (columns in that order)."""
    n_counts = len(ITEM_COUNT_NAMES)
    return ItemStates(counts=values[:, :n_counts], pop=values[:, n_counts:].reshape(len(values), len(epochs), 2),
                      epoch=epochs)
