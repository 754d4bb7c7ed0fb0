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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.bundle import Bundle
from models.cf import CFModel
from models.content import ContentModel, ContentProjection
from models.item_vector_codec import ItemVector, encode_item_vector
from schemas.events import CatalogEvent, ItemRemove, ItemUpsert
from streamrec.kafka_io import KeyedBatchSender

DEFAULT_THRESHOLD: Final = 0.05  # cosine distance


def cosine_distance(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    return 1.0 - float(np.dot(a, b)) / (na * nb)


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

    async def handle(self, event: CatalogEvent) -> bool:
        """Queue the record for one catalog event, if any; ``True`` when one was queued.

        Records go out in batches: call :meth:`flush` (e.g. once per consumed batch, before
        committing the catalog offsets) to send them and wait for the broker's acks.
        """
        if isinstance(event, ItemRemove):
            self.last.pop(event.item_id, None)
            # KeyedBatchSender passes the value to the record batch, which takes None (a tombstone).
            await self.sender.add(self.topic, event.item_id.encode(), None)  # type: ignore[arg-type]
            return True
        vector, source = self.vector_for(event)
        if not np.any(vector):
            return False
        previous = self.last.get(event.item_id)
        if previous is not None and cosine_distance(previous, vector) <= self.threshold:
            return False
        self.last[event.item_id] = vector
        key, value = encode_item_vector(ItemVector(event.item_id, vector, self.bundle_version, source, event.ts))
        await self.sender.add(self.topic, key, value)
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


# --- worker registry (streams.worker discovers these) ---------------------------------------------


def make_catalog_hook(ctx: Any) -> Callable[[Any, Sequence[Any], Any], Awaitable[None]] | None:
    """New titles' vectors to ``item-vectors`` (needs the bundle's content model and projection)."""
    if ctx.bundle is None or ctx.producer is None:
        return None
    publisher = ItemVectorPublisher.from_bundle(ctx.bundle, ctx.producer, topic=ctx.settings.topic_item_vectors)

    async def hook(pipe: Any, events: Sequence[Any], info: Any) -> None:
        # Sent and acknowledged before the catalog batch's EXEC: at least once, and a repeat is
        # harmless on a compacted topic keyed by item id.
        for event in events:
            await publisher.handle(event)
        await publisher.flush()

    return hook
