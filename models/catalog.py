"""The one catalogue model: how ``item_upsert`` and ``item_remove`` change the table of titles.

Training (:func:`models.dataset.load_catalog`), the stream workers (the features' static table) and the
server (its item arrays) all apply catalogue events through :meth:`CatalogTable.apply`, so a title
means the same thing everywhere: rows in order of first sight, an upsert replaces the metadata (and
sets availability) but never ``first_seen_ts``, a removal keeps the row and its metadata (events of the
title still need its genres) and marks it unavailable, a removal of a title never seen is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from schemas.decoder import EventError, catalog_decoder
from schemas.events import MATURITY_ORDER, ItemRemove, ItemUpsert

MATURITY_POS = {m: i for i, m in enumerate(MATURITY_ORDER)}
UNRATED = len(MATURITY_ORDER) - 1  # the maturity of a title whose rating is not known yet

CatalogEvent = ItemUpsert | ItemRemove


@dataclass
class Catalog:
    """Every title the log ever upserted, with its latest metadata."""

    item_ids: list[str]
    index: dict[str, int]
    titles: list[str]
    genres: list[list[str]]
    tags: list[list[str]]
    cast: list[list[str]]
    year: NDArray[np.int32]  # 0 when unknown
    release_ts: NDArray[np.int64]
    first_seen_ts: NDArray[np.int64]  # ts of the first upsert: when the title entered the catalogue
    maturity: NDArray[np.int8]  # index into MATURITY_ORDER
    is_original: NDArray[np.bool_]
    available: NDArray[np.bool_]  # false when unavailable or removed at the end of the log
    genre_vocab: list[str]
    genre_matrix: NDArray[np.float32]  # (items, genres) multi-hot

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """Rows an :meth:`CatalogTable.apply` touched: ``upserted`` (metadata replaced), ``removed``, ``added``."""

    upserted: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    added: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.upserted) + len(self.removed)


@dataclass
class CatalogTable:
    """Latest metadata per title, one row per title ever seen, in order of first sight."""

    item_ids: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)
    genres: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    cast: list[list[str]] = field(default_factory=list)
    year: list[int] = field(default_factory=list)  # 0 when unknown
    release_ts: list[int] = field(default_factory=list)
    first_seen_ts: list[int] = field(default_factory=list)  # ts of the first upsert
    maturity: list[int] = field(default_factory=list)  # index into MATURITY_ORDER
    is_original: list[bool] = field(default_factory=list)
    available: list[bool] = field(default_factory=list)
    described: list[bool] = field(default_factory=list)  # an upsert has been seen (else a placeholder row)
    version: int = 0  # bumped by every apply that changed something

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> CatalogTable:
        """A table holding ``catalog``'s titles (a bundle's, or a log's), rows in the same order."""
        return cls(
            item_ids=list(catalog.item_ids), index=dict(catalog.index), titles=list(catalog.titles),
            genres=[list(g) for g in catalog.genres], tags=[list(t) for t in catalog.tags],
            cast=[list(c) for c in catalog.cast], year=catalog.year.tolist(), release_ts=catalog.release_ts.tolist(),
            first_seen_ts=catalog.first_seen_ts.tolist(), maturity=catalog.maturity.tolist(),
            is_original=catalog.is_original.tolist(), available=catalog.available.tolist(),
            described=[True] * catalog.n_items,
        )

    def add_placeholders(self, item_ids: Iterable[str]) -> list[int]:
        """Rows for titles known before their metadata (e.g. a vector that arrived first): unavailable."""
        added = []
        for item_id in dict.fromkeys(item_ids):
            if item_id not in self.index:
                added.append(self._new_row(item_id, 0))
        return added

    def _new_row(self, item_id: str, first_seen_ts: int) -> int:
        row = self.index[item_id] = len(self.item_ids)
        self.item_ids.append(item_id)
        self.titles.append(item_id)
        self.genres.append([])
        self.tags.append([])
        self.cast.append([])
        self.year.append(0)
        self.release_ts.append(0)
        self.first_seen_ts.append(first_seen_ts)
        self.maturity.append(UNRATED)
        self.is_original.append(False)
        self.available.append(False)
        self.described.append(False)
        return row

    def apply(self, events: Iterable[CatalogEvent]) -> CatalogChange:
        """Apply catalogue events in order (see the module docstring for the rules)."""
        upserted: dict[int, None] = {}
        removed: dict[int, None] = {}
        added: list[int] = []
        for event in events:
            row = self.index.get(event.item_id)
            if isinstance(event, ItemRemove):
                if row is not None:
                    self.available[row] = False
                    removed[row] = None
                    upserted.pop(row, None)
                continue
            if row is None:
                row = self._new_row(event.item_id, event.ts)
                added.append(row)
            elif not self.described[row]:
                self.first_seen_ts[row] = event.ts
            self.titles[row] = event.title
            self.genres[row] = list(event.genres)
            self.tags[row] = list(event.tags)
            self.cast[row] = list(event.cast)
            self.year[row] = event.year or 0
            self.release_ts[row] = event.release_ts
            self.maturity[row] = MATURITY_POS[event.maturity_rating]
            self.is_original[row] = event.is_original
            self.available[row] = event.available
            self.described[row] = True
            upserted[row] = None
            removed.pop(row, None)
        change = CatalogChange(tuple(upserted), tuple(removed), tuple(added))
        if len(change) or added:
            self.version += 1
        return change

    def genre_vocab(self, base: Sequence[str] = ()) -> list[str]:
        """``base`` (e.g. a bundle's genres, in its order), then every other genre seen, sorted.

        The same list whatever order the events came in, so values keyed by genre position stay
        byte-identical across rebuilds.
        """
        known = set(base)
        return list(base) + sorted({g for gs in self.genres for g in gs if g not in known})

    def to_catalog(self) -> Catalog:
        """The described titles as a training :class:`~models.dataset.Catalog` (placeholders are not titles
        yet and are left out; rows renumbered in order; genres sorted)."""
        rows = [r for r, described in enumerate(self.described) if described]
        item_ids = [self.item_ids[r] for r in rows]
        genres = [list(self.genres[r]) for r in rows]
        vocab = sorted({g for gs in genres for g in gs})
        pos = {g: i for i, g in enumerate(vocab)}
        matrix = np.zeros((len(rows), max(1, len(vocab))), np.float32)
        for i, gs in enumerate(genres):
            matrix[i, [pos[g] for g in gs]] = 1.0
        take = np.array(rows, np.int64)
        return Catalog(
            item_ids=item_ids, index={item_id: i for i, item_id in enumerate(item_ids)},
            titles=[self.titles[r] for r in rows], genres=genres, tags=[list(self.tags[r]) for r in rows],
            cast=[list(self.cast[r]) for r in rows], year=np.array(self.year, np.int32)[take],
            release_ts=np.array(self.release_ts, np.int64)[take],
            first_seen_ts=np.array(self.first_seen_ts, np.int64)[take],
            maturity=np.array(self.maturity, np.int8)[take], is_original=np.array(self.is_original, bool)[take],
            available=np.array(self.available, bool)[take], genre_vocab=vocab, genre_matrix=matrix,
        )


def load_catalog(path: Path) -> Catalog:
    """The titles of a ``catalog.jsonl`` after every valid event in it (invalid lines are skipped)."""
    table = CatalogTable()
    events: list[CatalogEvent] = []
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                events.append(catalog_decoder.decode(line))
            except EventError:
                continue  # replay reports invalid lines; training only skips them
    table.apply(events)
    return table.to_catalog()
