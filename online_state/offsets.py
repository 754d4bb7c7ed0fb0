"""The stored form of a partition's applied offset (``{prefix}:offset:{topic}:{partition}``, an integer
string written in the same ``MULTI`` as the batch's effects): what the worker, catch-up waits and tests read."""

from __future__ import annotations

from typing import Final

NOTHING_APPLIED: Final = -1


def parse_stored(raw: bytes | str | None) -> int:
    """The stored offset (``NOTHING_APPLIED`` when the key is absent)."""
    return NOTHING_APPLIED if raw is None else int(raw)
