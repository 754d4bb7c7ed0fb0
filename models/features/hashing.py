"""Stable hashes for ids and crossed features: the same numbers in every process, on every machine.

Python's ``hash()`` of a string is salted per process (``PYTHONHASHSEED``), so a wide feature
hashed with it would land in a different bucket in the trainer, the worker and the server. Here:

- :func:`hash_str`: an id (user id, item id, genre name) to a non-negative 63-bit integer, the
  first 8 bytes of BLAKE2b (little-endian) with the top bit cleared so it fits an ``int64``.
  Cached, because the same item ids are hashed again and again on the serving path.
- :func:`cross`: two integer columns (hashes or small codes) and a per-feature salt to a bucket in
  ``[0, buckets)``, vectorised over numpy arrays with the SplitMix64 finaliser (multiply-xorshift
  on ``uint64``, wrapping). Different salts make the crosses of different features independent
  even when their inputs coincide.

Both are pure functions of their inputs; ``tests/unit/test_features.py`` pins a few values, so a
change here (which would silently invalidate every trained wide part) fails a test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

_MASK63: Final = (1 << 63) - 1
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_GOLDEN_INT: Final = 0x9E3779B97F4A7C15
_MASK64: Final = (1 << 64) - 1
_S30: Final = np.uint64(30)
_S27: Final = np.uint64(27)
_S31: Final = np.uint64(31)


@lru_cache(maxsize=1 << 18)
def hash_str(text: str) -> int:
    """A stable, non-negative 63-bit hash of ``text`` (BLAKE2b, first 8 bytes)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def hash_strs(texts: Iterable[str]) -> NDArray[np.int64]:
    """:func:`hash_str` of each text, as an ``int64`` array."""
    return np.fromiter((hash_str(t) for t in texts), np.int64)


def _as_u64(values: ArrayLike) -> NDArray[np.uint64]:
    # Reinterpret the int64 bits (negative codes such as -1 for "unknown" included) as uint64;
    # a 1-d contiguous array so that numpy wraps on overflow instead of warning as scalars do.
    arr = np.ascontiguousarray(np.atleast_1d(np.asarray(values, np.int64)))
    return arr.view(np.uint64)


def mix64(values: ArrayLike) -> NDArray[np.uint64]:
    """The SplitMix64 finaliser: a bijection on 64-bit integers that spreads every input bit."""
    z = _as_u64(values)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _mix64_in_place(z: NDArray[np.uint64]) -> None:
    """:func:`mix64` of a fresh 1-d ``uint64`` array, written over it (the same operations, fewer temporaries)."""
    t = z >> _S30
    z ^= t
    z *= _M1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _M2
    np.right_shift(z, _S31, out=t)
    z ^= t


def cross(a: ArrayLike, b: ArrayLike, salt: int, buckets: int) -> NDArray[np.int64]:
    """Bucket of the pair ``(a, b)`` for the crossed feature ``salt``, in ``[0, buckets)``.

    ``a`` and ``b`` broadcast against each other (a scalar user hash against a column of items).
    """
    a_arr, b_arr = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    return cross_mixed(mix64(a_arr.ravel()), b_arr.ravel(), salt, buckets).reshape(a_arr.shape)


def cross_mixed(a_mixed: NDArray[np.uint64], b: ArrayLike, salt: int, buckets: int) -> NDArray[np.int64]:
    """:func:`cross` of ``a`` and ``b`` given ``a_mixed = mix64(a)`` (1-d; length 1 or ``b``'s, broadcast).

    The same numbers as ``cross``; for a caller that crosses one column with several others (the item
    hash with each context code) or a scalar with a column: ``mix64(a)`` is computed once, and a
    scalar's once instead of once per row.
    """
    b_arr = _as_u64(b)
    # The salt constant is computed with Python ints: numpy scalar arithmetic warns on overflow.
    mixed = (a_mixed + np.uint64((salt * _GOLDEN_INT) & _MASK64)) ^ b_arr  # length 1 broadcasts; a fresh array
    _mix64_in_place(mixed)
    if buckets > 0 and buckets & (buckets - 1) == 0:  # a power of two: the remainder is the low bits
        mixed &= np.uint64(buckets - 1)
    else:
        mixed %= np.uint64(buckets)
    return mixed.view(np.int64)
