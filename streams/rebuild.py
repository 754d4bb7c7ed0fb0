"""What ``streamrec worker --rebuild`` does before consuming: delete the whole online state, offsets included,
so that every partition is applied again from the beginning of the log (Kafka is the source of truth)."""

from __future__ import annotations

from typing import Any

from online_state.keys import KeyLayout


async def delete_state(client: Any, keys: KeyLayout) -> int:
    """Delete every key under ``keys``' prefix (state and offsets); returns how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=keys.everything, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await client.unlink(*batch)
            batch = []
    if batch:
        deleted += await client.unlink(*batch)
    return deleted
