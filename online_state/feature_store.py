"""The online feature store interface: apply event batches, read the state behind a ranking request."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.features.batch import FeatureBatch
from models.features.hashing import hash_str
from models.features.rows import RequestContext, feature_batch
from models.features.state import EventBatch, ItemStates, ItemStatic, StaticRows, UserStates
from schemas.events import InteractionEvent


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What :func:`~models.features.rows.feature_batch` needs for one request, read at ``now_ts``."""

    user_id: str
    user: UserStates  # one row
    items: ItemStates  # aligned with the requested item ids
    static: StaticRows  # aligned with the requested item ids
    now_ts: int


class OnlineFeatureStore(ABC):
    """State keyed by user id and item id (strings), updated by event batches.

    ``apply`` must be called by the owner of the batch's users (the worker of their partition),
    with each user's events in order; item state may be updated by any number of writers.
    """

    static: ItemStatic

    @abstractmethod
    async def apply(self, batch: EventBatch) -> object:
        """Apply a batch built by :meth:`EventBatch.from_events` (keys are id strings)."""

    @abstractmethod
    async def read(self, user_id: str, item_ids: Sequence[str], now_ts: int) -> StateSnapshot:
        """The state of a user and of candidate items, for features at ``now_ts`` (ms)."""

    async def apply_events(self, events: Iterable[InteractionEvent]) -> object:
        return await self.apply(EventBatch.from_events(events, self.static))

    async def features(
        self,
        user_id: str,
        item_ids: Sequence[str],
        now_ts: int,
        context: RequestContext | None = None,
        extra_dense: Mapping[str, NDArray[np.floating] | float] | None = None,
    ) -> FeatureBatch:
        """Ranking features of ``item_ids`` for ``user_id`` at ``now_ts``: one read, then the shared
        feature function."""
        snap = await self.read(user_id, item_ids, now_ts)
        return feature_batch(hash_str(user_id), snap.user, snap.items, snap.static, context or RequestContext(),
                             now_ts, extra_dense)
