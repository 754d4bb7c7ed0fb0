"""The record format of the compacted ``item-vectors`` topic (key = item id, UTF-8).

Value: one JSON object (orjson), about 450 bytes at d = 64::

    {"item_id": "m42", "vector": "<base64 of little-endian float32[d]>", "dim": 64,
     "bundle": "<bundle version>", "source": "cf" | "content" | "online", "ts": 1767225600000, "format": 1}

- ``bundle``: the bundle whose CF space the vector lives in. A server must ignore vectors of
  another bundle (after a retrain the space is different: a stale vector scores garbage).
- ``source``: ``cf`` (the bundle's trained vector), ``content`` (projected from metadata) or
  ``online`` (a content-projected title moved toward its engaging users, :mod:`streams.item_learning`;
  same space, same bundle, so a server uses it like any other; :func:`decode_item_vector` passes any
  source through).
- ``ts``: event time (ms) of the catalog event that produced it (0 for a bundle seed; for ``online``
  the newest engagement counted).
- ``format``: this layout's version, bumped on an incompatible change.

A tombstone (value ``None``) means the item was removed: the server drops it, and compaction
eventually drops the key. Base64 rather than a JSON list: 4/3 bytes per byte instead of ~10
characters per float, and an exact round trip. Imports nothing of ours.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
import orjson
from numpy.typing import NDArray

FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class ItemVector:
    item_id: str
    vector: NDArray[np.float32]
    bundle: str
    source: str
    ts: int


def encode_item_vector(item: ItemVector) -> tuple[bytes, bytes]:
    """``(key, value)`` of the record for ``item``."""
    vec = np.ascontiguousarray(item.vector, dtype="<f4")
    value = orjson.dumps({
        "item_id": item.item_id, "vector": base64.b64encode(vec.tobytes()).decode("ascii"), "dim": int(vec.size),
        "bundle": item.bundle, "source": item.source, "ts": int(item.ts), "format": FORMAT,
    })
    return item.item_id.encode(), value


def tombstone(item_id: str) -> tuple[bytes, None]:
    """``(key, None)``: the record that deletes ``item_id``."""
    return item_id.encode(), None


def decode_item_vector(key: bytes, value: bytes | None) -> ItemVector | None:
    """The record's vector, or ``None`` for a tombstone. Raises ``ValueError`` on a bad record."""
    if value is None:
        return None
    try:
        obj = orjson.loads(value)
        if obj.get("format") != FORMAT:
            raise ValueError(f"item vector format {obj.get('format')!r}, this code reads {FORMAT}")
        vec = np.frombuffer(base64.b64decode(obj["vector"], validate=True), dtype="<f4").astype(np.float32)
        if vec.size != obj["dim"]:
            raise ValueError(f"item vector has {vec.size} floats, dim says {obj['dim']}")
        item_id = str(obj["item_id"])
        if item_id.encode() != key:
            raise ValueError(f"item vector of {item_id!r} under key {key!r}")
        return ItemVector(item_id, vec, str(obj["bundle"]), str(obj["source"]), int(obj["ts"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad item-vectors record for key {key!r}: {exc}") from exc


def space_id(item_vectors: NDArray[np.floating]) -> int:
    """crc32 of the float32 bytes of a bundle's item vectors: the id of the space its user vectors live in."""
    return zlib.crc32(np.ascontiguousarray(item_vectors, "<f4").tobytes())
