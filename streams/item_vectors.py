"""Item vectors for the servers, kept current from catalog events on the compacted ``item-vectors`` topic.

Records: :mod:`models.item_vector_codec` (key = item id; JSON value with the float32 vector in
base64 and the bundle version; ``None`` value = tombstone).

What :meth:`ItemVectorPublisher.handle` publishes per catalog event:

- ``item_upsert`` of a title **not in the bundle**: its metadata embedded by the bundle's content
  model and projected into CF space (``content.embed`` → ``projection.project``), ``source=content``.
- ``item_upsert`` of a **bundle** title: its CF vector if it had CF data in training
  (``trained_items``), else the projection of the new metadata (what training did for such items).
- Either way only if the vector moved: cosine distance > ``threshold`` (0.05) from the last one
  published for the item (or none was). A metadata fix on a trained title therefore publishes
  nothing: its CF vector did not change. Zero vectors (metadata with no known token) are not
  published: they would rank the title nowhere, which is what "no vector" does already.
- ``item_remove``: a tombstone, and the item is forgotten (a later upsert publishes again).

"Last published" is in memory, seeded with the bundle vectors (which :func:`publish_bundle_vectors`
puts on the topic for a fresh deployment). After a restart a replayed upsert may publish a vector
again: harmless, the topic is compacted and consumers keep the last value per key.
Catalog events are keyed by item id and each item lives on one partition of ``catalog``, so two
publishers never race on one item.

Online updates (:mod:`streams.item_learning`, built here by ``make_effect``): content-projected
titles (new ones, and bundle titles without CF data) move toward the online vectors of the users who
engage with them; once a batch committed their vector is re-published with ``source=online`` when it
moved beyond the same threshold from the last one published. Trained titles keep their CF vectors
until the next retrain (why: see that module). The catalog effect puts each such title's content
vector in Redis (``q0``) for every worker to start from, and records what it published (``pub``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from foundation.kafka_io import KeyedBatchSender
from models.bundle import Bundle
from models.cf import CFModel
from models.content import ContentModel, ContentProjection
from models.item_vector_codec import ItemVector, encode_item_vector, space_id
from online_state.item_learning import vector_bytes
from online_state.keys import KeyLayout
from schemas.events import CatalogEvent, ItemRemove, ItemUpsert
from streams.effects import Batch, Effect, EffectContext, Reads
from streams.item_learning import (
    ItemLearner,
    ItemLearningEffect,
    OnlineItemPublisher,
    catalog_learning_writes,
    cosine_distance,
)
from streams.user_vectors import make_effect as make_user_vector_effect

DEFAULT_THRESHOLD: Final = 0.05  # cosine distance


class ItemVectorPublisher:
    """Turns catalog events into ``item-vectors`` records (see the module docstring)."""

    def __init__(
        self,
        content: ContentModel,
        projection: ContentProjection,
        cf_item_vectors: NDArray[np.floating],
        trained_items: NDArray[np.bool_],
        item_ids: Sequence[str],
        producer: Any,
        *,
        topic: str,
        bundle_version: str,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self.content = content
        self.projection = projection
        self.cf = np.asarray(cf_item_vectors, np.float32)
        self.trained = np.asarray(trained_items, bool)
        self.index = {item_id: i for i, item_id in enumerate(item_ids)}
        self.topic = topic
        self.bundle_version = bundle_version
        self.threshold = threshold
        self.sender = KeyedBatchSender(producer)
        # Assumes the topic holds the bundle's vectors (publish_bundle_vectors); zero rows were never published.
        self.last: dict[str, NDArray[np.float32]] = {
            item_id: self.cf[i] for item_id, i in self.index.items() if np.any(self.cf[i])
        }

    @classmethod
    def from_bundle(cls, bundle: Bundle, producer: Any, *, topic: str,
                    threshold: float = DEFAULT_THRESHOLD) -> ItemVectorPublisher:
        cf = CFModel.load(bundle.file("cf.npz"))
        return cls(ContentModel.load(bundle.file("content.npz")), ContentProjection.load(bundle.file("projection.npz")),
                   cf.item_vectors, cf.trained_items, bundle.json("item_ids"), producer, topic=topic,
                   bundle_version=bundle.version, threshold=threshold)

    def vector_for(self, event: ItemUpsert) -> tuple[NDArray[np.float32], str]:
        """The vector an upsert stands for, and its source (``cf`` or ``content``)."""
        row = self.index.get(event.item_id)
        if row is not None and self.trained[row]:
            return self.cf[row], "cf"
        year = event.year if event.year is not None else 0
        content = self.content.embed([event.title], [event.genres], [event.tags], [event.cast], [year])
        return self.projection.project(content)[0], "content"

    async def handle(self, event: CatalogEvent, sender: KeyedBatchSender | None = None) -> bool:
        """Queue the record for one catalog event, if any; ``True`` when one was queued.

        Records go out in batches: call :meth:`flush` (e.g. once per consumed batch, before
        committing the catalog offsets) to send them and wait for the broker's acks. Concurrent
        callers pass their own ``sender`` (``self.sender.fork()``) and flush that one, so each
        waits for the acks of its own records.
        """
        sender = sender if sender is not None else self.sender
        if isinstance(event, ItemRemove):
            self.last.pop(event.item_id, None)
            # KeyedBatchSender passes the value to the record batch, which takes None (a tombstone).
            await sender.add(self.topic, event.item_id.encode(), None)  # type: ignore[arg-type]
            return True
        vector, source = self.vector_for(event)
        if not np.any(vector):
            return False
        previous = self.last.get(event.item_id)
        if previous is not None and cosine_distance(previous, vector) <= self.threshold:
            return False
        self.last[event.item_id] = vector
        key, value = encode_item_vector(ItemVector(event.item_id, vector, self.bundle_version, source, event.ts))
        await sender.add(self.topic, key, value)
        return True

    async def flush(self) -> None:
        await self.sender.flush()


async def publish_bundle_vectors(bundle: Bundle, producer: Any, *, topic: str, ts: int = 0) -> int:
    """Seed ``topic`` with every non-zero item vector of ``bundle`` (fresh deployment); returns the count."""
    cf = CFModel.load(bundle.file("cf.npz"))
    item_ids: list[str] = bundle.json("item_ids")
    sender = KeyedBatchSender(producer)
    sent = 0
    for i, item_id in enumerate(item_ids):
        vector = cf.item_vectors[i]
        if not np.any(vector):
            continue
        source = "cf" if cf.trained_items[i] else "content"
        key, value = encode_item_vector(ItemVector(item_id, vector, bundle.version, source, ts))
        await sender.add(topic, key, value)
        sent += 1
    await sender.flush()
    return sent


# --- the worker's effects (listed in streams.effects_registry) -------------------------------------


class ItemVectorCatalogEffect(Effect[CatalogEvent]):
    """From the catalog partitions this worker owns: new titles' vectors to ``item-vectors``
    (:class:`ItemVectorPublisher`), and the content vector of every content-projected title into its
    online-learning hash (``q0``, see :mod:`streams.item_learning`), queued in the catalog batch's MULTI."""

    name = "item_vectors"

    def __init__(self, publisher: ItemVectorPublisher, keys: KeyLayout) -> None:
        self.publisher = publisher
        self.keys = keys
        self.space = space_id(publisher.cf)  # the bundle's CF space, as the user vectors and the learning name it

    async def write(self, pipe: Any, batch: Batch[CatalogEvent], reads: Reads[Any]) -> None:
        # Sent and acknowledged before the catalog batch's EXEC: at least once, and a repeat is
        # harmless on a compacted topic keyed by item id. The worker runs the catalog partitions'
        # batches concurrently: each call flushes (and waits for) a sender of its own.
        publisher = self.publisher
        sender = publisher.sender.fork()
        published: dict[str, NDArray[np.float32]] = {}
        for event in batch.events:
            learns = False
            if isinstance(event, ItemRemove):
                catalog_learning_writes(pipe, event.item_id, None, removed=True, keys=self.keys, space=self.space)
            elif isinstance(event, ItemUpsert):
                vector, source = publisher.vector_for(event)
                learns = source == "content"  # only content-projected titles learn online
                if learns:
                    catalog_learning_writes(pipe, event.item_id, vector, removed=False, keys=self.keys,
                                            space=self.space)
            if await publisher.handle(event, sender) and learns:
                published[event.item_id] = publisher.last[event.item_id]
        await sender.flush()
        for item_id, vector in published.items():
            # What the topic now holds: the online publisher's threshold compares against it.
            pipe.hset(self.keys.item_learning(self.space, item_id), "pub", vector_bytes(vector))


def make_catalog_effect(ctx: EffectContext) -> ItemVectorCatalogEffect | None:
    """Needs the bundle's content model and projection, and a producer to publish with."""
    if ctx.bundle is None or ctx.producer is None:
        return None
    publisher = ItemVectorPublisher.from_bundle(ctx.bundle, ctx.producer, topic=ctx.settings.topic_item_vectors)
    return ItemVectorCatalogEffect(publisher, ctx.keys)


def make_effect(ctx: EffectContext) -> ItemLearningEffect | None:
    """Online learning of content-projected titles' vectors (:mod:`streams.item_learning`).

    Needs the bundle (the online user-vector model defines the users' vectors it learns from, and the
    bundle rows are the content vectors of its cold titles); publishes only with a producer.
    """
    if ctx.bundle is None:
        return None
    users = make_user_vector_effect(ctx)  # the very model/index/initial the user-vector effect runs with
    if users is None:
        return None
    cf = CFModel.load(ctx.bundle.file("cf.npz"))
    learner = ItemLearner(users.model, users.item_index, cf.trained_items, initial=users.initial)
    index = users.item_index
    cold = np.asarray(cf.item_vectors, np.float32)

    def base(item_id: str) -> NDArray[np.float32] | None:
        # A bundle title without CF data (and no catalog upsert seen since): its bundle row is the
        # content projection the bundle seed published.
        row = index.get(item_id)
        return cold[row] if row is not None and not cf.trained_items[row] else None

    online = None
    if ctx.producer is not None and ctx.redis is not None:
        online = OnlineItemPublisher(ctx.redis, ctx.producer, topic=ctx.settings.topic_item_vectors,
                                     bundle_version=ctx.bundle.version, dim=cf.dim, space=users.space, base=base,
                                     keys=ctx.keys, threshold=DEFAULT_THRESHOLD)
        online.start_catch_up()
    return ItemLearningEffect(learner, space=users.space, keys=ctx.keys, publisher=online, bulk=ctx.bulk)
