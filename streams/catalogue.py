"""The worker's live catalogue: every partition of ``catalog`` followed into the one catalogue model.

Every worker follows ALL catalog partitions with a group-less consumer (read to the end at start-up, then
drained before each round), so that its table of titles (:class:`models.catalog.CatalogTable`, the rules
training and the server apply too) is complete whichever partitions it owns. Known gap: an interaction on a
title released while the worker runs may be applied before this worker read the title's upsert (the two
topics are not ordered), and then counts without genres; a replay with everything already in the log
(tests, ``--rebuild``) reads the catalogue first and is exact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from foundation.dead_letters import decode_records
from foundation.logs import get_logger
from models.bundle import Bundle
from models.catalog import CatalogChange, CatalogEvent, CatalogTable
from models.features.state import ItemStatic
from schemas.decoder import catalog_decoder

log = get_logger(__name__)


class LiveCatalogue:
    """The catalogue table and the features' static table derived from it (rebuilt when the table changed).

    ``base_vocab``: the bundle's genres, in its order; genres seen since follow, sorted (the same list
    whatever order the catalog partitions were read in).
    """

    def __init__(self, table: CatalogTable | None = None, base_vocab: Sequence[str] = ()) -> None:
        self.table = table if table is not None else CatalogTable()
        self.base_vocab = list(base_vocab)
        self._static: ItemStatic | None = None
        self._static_version = -1

    @classmethod
    def from_bundle(cls, bundle: Bundle | None) -> LiveCatalogue:
        if bundle is None:
            return cls()
        return cls(bundle.catalog_table(), bundle.json("catalog")["genre_vocab"])

    def apply(self, events: Sequence[CatalogEvent]) -> CatalogChange:
        return self.table.apply(events)

    def static(self) -> ItemStatic:
        """The features' static table of every title so far (the same object until the table changes)."""
        if self._static is None or self._static_version != self.table.version:
            self._static = ItemStatic.from_table(self.table, self.base_vocab)
            self._static_version = self.table.version
        return self._static

    def genres_of(self, item_id: str) -> list[str]:
        """A title's genres (``[]`` for a title not seen yet)."""
        row = self.table.index.get(item_id)
        return list(self.table.genres[row]) if row is not None else []


class CatalogueFollower:
    """Applies every catalog partition's records, from the beginning, to a :class:`LiveCatalogue`."""

    def __init__(self, consumer: Any, catalogue: LiveCatalogue) -> None:
        self.consumer = consumer  # started, group-less, assigned every catalog partition from the beginning
        self.catalogue = catalogue

    async def read_to_end(self, partitions: Sequence[Any]) -> None:
        """Follow until every partition's end offset as of now (start-up)."""
        if not partitions:
            return
        ends = await self.consumer.end_offsets(partitions)
        started = time.perf_counter()
        while True:
            positions = [await self.consumer.position(tp) for tp in partitions]
            if all(pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True)):
                break
            await self.follow(timeout_ms=500)
        log.info("worker.catalog_loaded", items=len(self.catalogue.table),
                 seconds=round(time.perf_counter() - started, 2))

    async def follow(self, timeout_ms: int = 0) -> None:
        """Apply what the consumer has now (waiting at most ``timeout_ms`` for it)."""
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in fetched.values():
            self.catalogue.apply(decode_records(records, catalog_decoder).events)
