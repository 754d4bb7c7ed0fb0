"""An in-process feature store (tests, local tools): :class:`~models.features.state.InMemoryStore`
behind the async :class:`~online_state.feature_store.OnlineFeatureStore` interface.

Users get integer rows in order of first sight; items known to the static table use their static
index as row, unknown ones rows after it. Not shared between processes, not persistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from models.features.state import EventBatch, InMemoryStore, ItemStatic
from online_state.feature_store import OnlineFeatureStore, StateSnapshot


class MemoryFeatureStore(OnlineFeatureStore):
    def __init__(self, static: ItemStatic) -> None:
        self.static = static
        self.store = InMemoryStore(static)
        self._user_rows: dict[str, int] = {}
        self._extra_item_rows: dict[str, int] = {}

    def _item_row(self, item_id: str, create: bool) -> int:
        row = self.static.index.get(item_id)
        if row is not None:
            return row
        row = self._extra_item_rows.get(item_id)
        if row is None:
            if not create:
                return -1
            row = self._extra_item_rows[item_id] = self.static.n_items + len(self._extra_item_rows)
        return row

    async def apply(self, batch: EventBatch) -> int:
        """Apply a batch keyed by id strings; returns the number of events."""
        users = np.array([self._user_rows.setdefault(u, len(self._user_rows)) for u in batch.user_keys], np.int64)
        items = np.array([self._item_row(i, create=True) for i in batch.item_keys], np.int64)
        self.store.apply(replace(batch, user_keys=users, item_keys=items))
        return len(batch)

    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        row = self._user_rows.get(user_id, -1)
        items = np.array([self._item_row(i, create=False) for i in item_ids], np.int64)
        index, hashes = self.static.lookup(item_ids)
        return StateSnapshot(user_id=user_id, user=self.store.read_user(row),
                             items=self.store.read_items(items, now_ts), static=self.static.rows(index, hashes),
                             now_ts=now_ts)
