"""Everything one loaded bundle serves with, plus the titles that arrived after it was trained.

A :class:`ServingModel` is built off the event loop (``asyncio.to_thread(ServingModel.load, ...)``)
and then replaced as one reference on a hot reload: a request keeps the model it started with.

Item rows: ``0 .. n_bundle-1`` are the bundle's titles (the order of ``item_ids.json``, the labels
of both HNSW indexes); titles first seen on ``catalog`` or ``item-vectors`` get the next rows. The
per-item arrays the retriever reads (availability, release time, content vectors, popularity,
maturity, originals, genres) grow together, once per applied batch, and are *replaced* rather than
written in place where a request could hold them, so an in-flight request sees one consistent set.
The features' :class:`ItemStatic` stays the bundle's: a new title reads the feature defaults
(``i_unknown`` = 1), as the ranker was trained to expect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.ann import ItemIndex
from models.bundle import Bundle, open_bundle
from models.candidates import Histories, Retriever
from models.cf import CFModel
from models.content import ContentModel
from models.dataset import MATURITY_ORDER
from models.features.batch import FeatureLayout
from models.features.spec import check_layout, feature_layout
from models.features.state import ItemStatic
from models.item_vector_codec import ItemVector
from models.ranker.scorer import RankerSession
from models.train import config_from_params
from models.two_stage import TwoStageConfig
from schemas.events import ItemRemove, ItemUpsert
from streams.user_vectors import space_id

_MATURITY_POS = {m: i for i, m in enumerate(MATURITY_ORDER)}


@dataclass
class ItemTable:
    """Per-item arrays over every row (bundle titles first, then live ones)."""

    item_ids: list[str]
    index: dict[str, int]
    titles: list[str]
    genres: list[list[str]]
    genre_vocab: list[str]
    available: NDArray[np.bool_]
    release_ts: NDArray[np.int64]
    maturity: NDArray[np.int8]
    is_original: NDArray[np.bool_]
    genre_matrix: NDArray[np.float32]  # (n, G) multi-hot over the bundle's genres (MMR similarity)
    content: NDArray[np.float32]  # (n, d_content) L2-normalised content vectors, zero when unknown
    popularity: NDArray[np.float32]  # training-time popularity (the fallback of the trending source)
    ids: NDArray[np.object_] = field(init=False)  # item_ids as an array: ids[rows] without a Python loop

    def __post_init__(self) -> None:
        self.ids = np.array(self.item_ids, dtype=object)

    def __len__(self) -> int:
        return len(self.item_ids)

    def grow(self, new_ids: Sequence[str]) -> None:
        """Append rows for ``new_ids`` (unavailable, no metadata yet): one copy per array per batch."""
        new_ids = [i for i in dict.fromkeys(new_ids) if i not in self.index]
        if not new_ids:
            return
        m = len(new_ids)
        for item_id in new_ids:
            self.index[item_id] = len(self.item_ids)
            self.item_ids.append(item_id)
            self.titles.append(item_id)
            self.genres.append([])
        self.ids = np.array(self.item_ids, dtype=object)
        self.available = np.concatenate([self.available, np.zeros(m, bool)])
        self.release_ts = np.concatenate([self.release_ts, np.zeros(m, np.int64)])
        self.maturity = np.concatenate([self.maturity, np.full(m, len(MATURITY_ORDER) - 1, np.int8)])
        self.is_original = np.concatenate([self.is_original, np.zeros(m, bool)])
        self.genre_matrix = np.vstack([self.genre_matrix, np.zeros((m, self.genre_matrix.shape[1]), np.float32)])
        self.content = np.vstack([self.content, np.zeros((m, self.content.shape[1]), np.float32)])
        self.popularity = np.concatenate([self.popularity, np.zeros(m, np.float32)])


@dataclass
class ServingModel:
    """One bundle, loaded for serving (see the module docstring)."""

    version: str
    bundle: Bundle
    config: TwoStageConfig
    items: ItemTable
    n_bundle_items: int
    cf_index: ItemIndex  # "ip" over CF vectors: user -> items
    neighbour_index: ItemIndex  # "cosine" over the same vectors: item -> similar items
    retriever: Retriever
    static: ItemStatic  # the features' static table (bundle titles only)
    layout: FeatureLayout
    content_model: ContentModel
    ranker: RankerSession
    user_index: dict[str, int]
    user_vectors: NDArray[np.float32]
    trained_users: NDArray[np.bool_]
    histories: Histories | None
    maturity_limit: NDArray[np.int8] | None  # per bundle user, -1 none
    space: int  # streams.user_vectors.space_id of the bundle's CF item vectors
    dim: int
    applied_vectors: int = 0
    applied_catalog: int = 0

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path, version: str | None = None) -> ServingModel:
        """Open and load a bundle (blocking: call it in a thread). Raises ``BundleError`` without one."""
        bundle = open_bundle(root, version)
        config = config_from_params(bundle.manifest.get("params", {}))
        item_ids: list[str] = bundle.json("item_ids")
        user_ids: list[str] = bundle.json("user_ids")
        arrays = bundle.arrays("items")
        meta = bundle.json("catalog")
        cf = CFModel.load(bundle.file("cf.npz"))
        cf_index = ItemIndex.load(bundle.file("hnsw_cf.bin"))
        neighbour_index = ItemIndex.load(bundle.file("hnsw_items.bin"))
        n = len(item_ids)
        items = ItemTable(
            item_ids=list(item_ids), index={i: k for k, i in enumerate(item_ids)}, titles=list(meta["titles"]),
            genres=[list(g) for g in meta["genres"]], genre_vocab=list(meta["genre_vocab"]),
            available=arrays["available"].astype(bool), release_ts=arrays["release_ts"].astype(np.int64),
            maturity=arrays["maturity"].astype(np.int8), is_original=arrays["is_original"].astype(bool),
            genre_matrix=arrays["genre_matrix"].astype(np.float32),
            content=arrays["content_vectors"].astype(np.float32), popularity=arrays["popularity"].astype(np.float32),
        )
        static = ItemStatic.build(item_ids, items.genres, items.release_ts, arrays["first_seen_ts"].astype(np.int64),
                                  items.maturity, items.is_original, items.genre_vocab)
        layout = FeatureLayout.from_dict(bundle.manifest["feature_layout"])
        check_layout(layout, feature_layout(n, static.n_genres))
        histories: Histories | None = None
        limits: NDArray[np.int8] | None = None
        if "histories.npz" in bundle.manifest["files"]:  # bundles trained before it existed lack it
            h = bundle.arrays("histories")
            histories = Histories(h["ptr"].astype(np.int64), h["items"].astype(np.int32),
                                  h["weights"].astype(np.float32), h["ts"].astype(np.int64))
            limits = h["maturity_limit"].astype(np.int8)
        model = cls(
            version=bundle.version, bundle=bundle, config=config, items=items, n_bundle_items=n,
            cf_index=cf_index, neighbour_index=neighbour_index, retriever=Retriever(config=config.candidates),
            static=static, layout=layout, content_model=ContentModel.load(bundle.file("content.npz")),
            ranker=RankerSession(bundle.bytes("ranker.onnx"), intra_op_threads=1),
            user_index={u: k for k, u in enumerate(user_ids)}, user_vectors=cf.user_vectors.astype(np.float32),
            trained_users=cf.trained_users.astype(bool), histories=histories, maturity_limit=limits,
            space=space_id(cf.item_vectors), dim=int(cf.item_vectors.shape[1]),
        )
        model._refresh_retriever()
        return model

    def _refresh_retriever(self) -> None:
        """A new Retriever over the current arrays (one reference swap; requests keep the old one)."""
        t = self.items
        self.retriever = Retriever(
            config=self.config.candidates, cf_index=self.cf_index, neighbour_index=self.neighbour_index,
            content=t.content, popularity=t.popularity, release_ts=t.release_ts, available=t.available,
            n_items=len(t),
        )

    # -- users --------------------------------------------------------------------------------------

    def user_row(self, user_id: str) -> int | None:
        return self.user_index.get(user_id)

    def bundle_vector(self, row: int | None) -> NDArray[np.float32] | None:
        if row is None or not self.trained_users[row]:
            return None
        return self.user_vectors[row]

    def bundle_history(self, row: int | None) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.int64]]:
        if row is None or self.histories is None or row + 1 >= len(self.histories.ptr):
            return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        return self.histories.of(row)

    def user_maturity_limit(self, row: int | None) -> int | None:
        if row is None or self.maturity_limit is None or row >= len(self.maturity_limit):
            return None
        limit = int(self.maturity_limit[row])
        return None if limit < 0 else limit

    def rows_of(self, item_ids: Iterable[str]) -> NDArray[np.int64]:
        """Rows of known ids, in order; unknown ids are left out."""
        get = self.items.index.get
        return np.fromiter((r for r in (get(i) for i in item_ids) if r is not None), np.int64)

    # -- live updates -------------------------------------------------------------------------------

    def apply_catalog(self, events: Sequence[ItemUpsert | ItemRemove]) -> int:
        """Metadata of a batch of catalog events (new titles get rows and content vectors); returns changes."""
        if not events:
            return 0
        t = self.items
        upserts = [e for e in events if isinstance(e, ItemUpsert)]
        t.grow([e.item_id for e in upserts])
        available, release, maturity = t.available.copy(), t.release_ts.copy(), t.maturity.copy()
        original, genre_matrix, content = t.is_original.copy(), t.genre_matrix.copy(), t.content.copy()
        genre_pos = {g: i for i, g in enumerate(t.genre_vocab)}
        new_rows: list[int] = []
        new_events: list[ItemUpsert] = []
        for event in events:
            row = t.index.get(event.item_id)
            if row is None:
                continue  # a removal of a title never seen
            if isinstance(event, ItemRemove):
                available[row] = False
                continue
            available[row] = event.available
            release[row] = event.release_ts
            maturity[row] = _MATURITY_POS.get(event.maturity_rating, len(MATURITY_ORDER) - 1)
            original[row] = event.is_original
            t.titles[row] = event.title
            t.genres[row] = list(event.genres)
            genre_matrix[row] = 0.0
            for g in event.genres:
                if g in genre_pos:
                    genre_matrix[row, genre_pos[g]] = 1.0
            if row >= self.n_bundle_items:  # bundle titles keep the content vector they were trained with
                new_rows.append(row)
                new_events.append(event)
        if new_events:
            content[new_rows] = self.content_model.embed(
                [e.title for e in new_events], [e.genres for e in new_events], [e.tags for e in new_events],
                [e.cast for e in new_events], [e.year or 0 for e in new_events])
        t.available, t.release_ts, t.maturity, t.is_original = available, release, maturity, original
        t.genre_matrix, t.content = genre_matrix, content
        # Unavailable titles stay in the indexes (a tombstone on item-vectors removes them): every
        # source and the similar-items answer filter by ``available``, so a title that comes back
        # needs no re-insert, and a vector that arrives before its metadata is not lost.
        self._refresh_retriever()
        self.applied_catalog += len(events)
        return len(events)

    def apply_vectors(self, records: Sequence[tuple[str, ItemVector | None]]) -> int:
        """``item-vectors`` records ``(item_id, vector or None = tombstone)``; another bundle's are ignored.

        A vector equal to the one indexed is skipped (the topic replays the bundle's own vectors on
        start). Returns how many changed the indexes.
        """
        latest: dict[str, ItemVector | None] = {}
        for item_id, record in records:
            if record is not None and (record.bundle != self.version or record.vector.size != self.dim):
                continue
            latest[item_id] = record  # last write wins within the batch
        if not latest:
            return 0
        t = self.items
        t.grow([i for i, r in latest.items() if r is not None and i not in t.index])
        add_rows, add_vecs, deleted = [], [], []
        for item_id, record in latest.items():
            row = t.index.get(item_id)
            if row is None:
                continue
            if record is None:
                deleted.append(row)
                continue
            live = row < len(self.cf_index.live) and self.cf_index.live[row]
            if live and np.array_equal(self.cf_index.vectors[row], record.vector):
                continue
            add_rows.append(row)
            add_vecs.append(record.vector)
        if deleted:
            self.cf_index.mark_deleted(deleted)
            self.neighbour_index.mark_deleted(deleted)
        if add_rows:
            vecs = np.stack(add_vecs).astype(np.float32)
            self.cf_index.add_items(add_rows, vecs)
            self.neighbour_index.add_items(add_rows, vecs)
        self._refresh_retriever()
        self.applied_vectors += len(latest)
        return len(add_rows) + len(deleted)

    def with_live_state(self, catalog: Sequence[ItemUpsert | ItemRemove],
                        vectors: Sequence[tuple[str, ItemVector | None]]) -> ServingModel:
        """Apply what the server has tailed so far (used on a freshly loaded model before the swap)."""
        self.apply_catalog(catalog)
        self.apply_vectors(vectors)
        return self

    @property
    def post(self) -> Any:
        return self.config.post

    def replace_post(self, **changes: Any) -> None:
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            self.config = dataclasses.replace(self.config, post=dataclasses.replace(self.config.post, **changes))
