"""The stored form of a user's online vector (``{prefix}:uv:{user}``): pack, unpack, and the server's read.

Value (little-endian)::

    uint32 version      events applied so far (mod 2**32): lets a reader tell a fresher value
    uint32 space        crc32 of the item vectors the user vector was learnt against (models.item_vector_codec.space_id)
    float32[d] vector

``space`` matters after a retrain: a new bundle has a new CF space in which an old vector scores garbage, so
values of another space (or dimension) read as absent.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from online_state.keys import DEFAULT_KEYS, KeyLayout

_HEADER: Final = struct.Struct("<II")


def pack_user_vector(vector: NDArray[np.floating], version: int, space: int) -> bytes:
    return _HEADER.pack(version & 0xFFFFFFFF, space & 0xFFFFFFFF) + np.ascontiguousarray(vector, "<f4").tobytes()


def unpack_user_vector(
    value: bytes | None, *, space: int | None = None, dim: int | None = None
) -> tuple[NDArray[np.float32] | None, int]:
    """``(vector, version)``; ``(None, 0)`` for no value, a malformed one, or one of another space/dim."""
    if value is None or len(value) < _HEADER.size or (len(value) - _HEADER.size) % 4:
        return None, 0
    version, stored_space = _HEADER.unpack_from(value)
    vector = np.frombuffer(value, "<f4", offset=_HEADER.size).astype(np.float32)
    if (space is not None and stored_space != space) or (dim is not None and vector.size != dim):
        return None, 0
    return vector, int(version)


async def read_user_vector(
    redis: Any, user_id: str, *, keys: KeyLayout = DEFAULT_KEYS, space: int | None = None, dim: int | None = None
) -> tuple[NDArray[np.float32] | None, int]:
    """``(vector, version)`` of a user, ``(None, 0)`` when there is none.

    Pass ``space`` (the serving bundle's :func:`~models.item_vector_codec.space_id`) to ignore vectors learnt
    against another bundle.
    """
    return unpack_user_vector(await redis.get(keys.user_vector(user_id)), space=space, dim=dim)
