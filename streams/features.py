"""The ranking features as a worker effect: the online feature store's steps, run inside the batch protocol.

The store (:class:`online_state.redis_store.RedisFeatureStore`) plans a batch, queues the read of its users,
queues every write from their replies and learns from the ``EXEC`` which epoch fields it created;
:class:`FeatureStoreEffect` maps those steps onto the effect protocol (:mod:`streams.effects`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.features.state import EventBatch
from online_state.redis_store import ApplyPlan, RedisFeatureStore
from schemas.events import InteractionEvent
from streams.catalogue import LiveCatalogue
from streams.effects import Batch, Effect, EffectContext, Reads
from streams.item_state import ItemStatePublisher


@dataclass(frozen=True, slots=True)
class _Planned:
    store: RedisFeatureStore  # the store that planned the batch (committed/failed go back to it)
    plan: ApplyPlan


class FeatureStoreEffect(Effect[InteractionEvent]):
    """The features' state of the batch's users and items (``sr:u:*``, ``sr:i:*``).

    The catalogue grows while the worker runs: the store follows it (:meth:`RedisFeatureStore.with_static`),
    keeping the epoch clean-ups it still owes.
    """

    name = "features"

    def __init__(self, store: RedisFeatureStore, catalogue: LiveCatalogue,
                 publisher: ItemStatePublisher | None = None) -> None:
        self.store = store
        self.catalogue = catalogue
        # The servers' copies of the item state (online_state.item_state): the hashes this batch changed, as
        # read back inside its transaction, go to the item-state topic once it committed.
        self.publisher = publisher

    def _current(self) -> RedisFeatureStore:
        static = self.catalogue.static()
        if self.store.static is not static:
            self.store = self.store.with_static(static)
        return self.store

    def read(self, pipe: Any, batch: Batch[InteractionEvent]) -> Reads[_Planned]:
        store = self._current()
        events = EventBatch.from_events(batch.events, store.static)
        if not len(events):
            return Reads()
        plan = store.plan(events)
        return Reads(queued=store.queue_reads(pipe, plan), state=_Planned(store, plan))

    def write(self, pipe: Any, batch: Batch[InteractionEvent], reads: Reads[_Planned]) -> None:
        if reads.state is not None:
            reads.state.store.queue_writes(pipe, reads.state.plan, reads.replies)

    def committed(self, batch: Batch[InteractionEvent], reads: Reads[_Planned], replies: list[Any]) -> None:
        if reads.state is not None:
            plan = reads.state.plan
            reads.state.store.committed(plan, replies)
            if self.publisher is not None and plan.rows:
                self.publisher.note(plan.rows)

    def failed(self, batch: Batch[InteractionEvent], reads: Reads[_Planned]) -> None:
        if reads.state is not None:
            reads.state.store.failed(reads.state.plan)


    async def idle(self, timeout_s: float = 5.0) -> None:
        if self.publisher is not None:
            await self.publisher.idle(timeout_s)


def make_effect(ctx: EffectContext) -> FeatureStoreEffect:
    catalogue = ctx.catalog if ctx.catalog is not None else LiveCatalogue()
    publisher = ItemStatePublisher(ctx.producer, ctx.settings.topic_item_state) if ctx.producer is not None else None
    store = RedisFeatureStore(ctx.redis, catalogue.static(), keys=ctx.keys, bulk=ctx.bulk,
                              read_back=publisher is not None)
    return FeatureStoreEffect(store, catalogue, publisher)
