"""Everything one model serves with: a bundle loaded (or a model just fitted), plus the titles since.

A :class:`RecommenderModel` is what :mod:`models.recommend.pipeline` reads; the server builds it off the
event loop and swaps it as one reference on a hot reload, so a request keeps the model it started with.
Item rows ``0 .. n_bundle-1`` are the bundle's titles (the labels of both HNSW indexes); titles first
seen on ``catalog`` or ``item-vectors`` get the next rows. The per-item arrays grow together and are
*replaced*, never written in place, so an in-flight request sees one consistent set. The features'
:class:`ItemStatic` stays the bundle's: a new title reads the feature defaults, as the ranker expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.ann import ItemIndex
from models.bundle import open_bundle
from models.candidates import Histories, ItemMask, exclusion
from models.catalog import Catalog, CatalogEvent, CatalogTable
from models.cf import CFModel
from models.config import TwoStageConfig, config_from_params
from models.content import ContentModel
from models.debias import chosen_in
from models.exposure import EXPOSURE_FILE
from models.features.batch import FeatureLayout
from models.features.spec import check_layout, feature_layout
from models.features.state import ItemStatic
from models.item_item import ITEM_NEIGHBOURS_FILE, ItemNeighbours
from models.item_vector_codec import ItemVector, space_id
from models.postprocess import PostConfig
from models.ranker.scorer import RankerSession
from models.sequence import ONNX_FILE as SEQUENCE_FILE
from models.sequence import SequenceScorer


@dataclass
class ItemTable:
    """Per-item arrays over every row (bundle titles first, then live ones), derived from one catalogue."""

    catalog: CatalogTable
    genre_vocab: list[str]  # the bundle's genres: the columns of ``genre_matrix``
    content: NDArray[np.float32]  # (n, d_content) L2-normalised content vectors, zero when unknown
    popularity: NDArray[np.float32]  # training-time popularity (the fallback of the trending source)
    available: NDArray[np.bool_] = field(init=False)
    release_ts: NDArray[np.int64] = field(init=False)
    new_since: NDArray[np.int64] = field(init=False)  # max(release, first seen): what "new" counts from
    maturity: NDArray[np.int8] = field(init=False)
    is_original: NDArray[np.bool_] = field(init=False)
    genre_matrix: NDArray[np.float32] = field(init=False)  # (n, G) multi-hot over the bundle's genres (MMR)
    ids: NDArray[np.object_] = field(init=False)  # item ids as an array: ids[rows] without a Python loop
    generation: int = 0  # bumped whenever the arrays are replaced (keys caches derived from them)

    def __post_init__(self) -> None:
        self._rebuild(range(len(self.catalog)))

    @property
    def item_ids(self) -> list[str]:
        return self.catalog.item_ids

    @property
    def index(self) -> dict[str, int]:
        return self.catalog.index

    @property
    def titles(self) -> list[str]:
        return self.catalog.titles

    def __len__(self) -> int:
        return len(self.catalog)

    def _rebuild(self, changed: Iterable[int]) -> None:
        """New arrays from the catalogue (one copy per array per applied batch, never in place);
        ``changed``: the rows whose genres may differ from the current matrix."""
        t = self.catalog
        n = len(t)
        old = getattr(self, "genre_matrix", np.zeros((0, max(1, len(self.genre_vocab))), np.float32))
        self.available = np.array(t.available, bool)
        self.release_ts = np.array(t.release_ts, np.int64)
        self.new_since = np.maximum(self.release_ts, np.array(t.first_seen_ts, np.int64))
        self.maturity = np.array(t.maturity, np.int8)
        self.is_original = np.array(t.is_original, bool)
        pos = {g: i for i, g in enumerate(self.genre_vocab)}
        matrix = np.zeros((n, old.shape[1]), np.float32)
        matrix[: len(old)] = old[:n]
        for row in changed:
            matrix[row] = 0.0
            matrix[row, [pos[g] for g in t.genres[row] if g in pos]] = 1.0
        self.genre_matrix = matrix
        self.ids = np.array(t.item_ids, dtype=object)
        if len(self.content) < n:
            self.content = np.vstack([self.content, np.zeros((n - len(self.content), self.content.shape[1]),
                                                             np.float32)])
        if len(self.popularity) < n:
            self.popularity = np.concatenate([self.popularity, np.zeros(n - len(self.popularity), np.float32)])
        self.generation += 1


@dataclass
class RecommenderModel:
    """One model, ready to recommend with (see the module docstring)."""

    version: str
    config: TwoStageConfig
    items: ItemTable
    n_bundle_items: int
    cf_index: ItemIndex  # "ip" over CF vectors: user -> items
    neighbour_index: ItemIndex  # "cosine" over the same vectors: item -> similar items
    static: ItemStatic  # the features' static table (bundle titles only)
    layout: FeatureLayout
    content_model: ContentModel
    ranker: RankerSession | None  # None while the ranker is being trained (its own training requests)
    user_index: dict[str, int]
    user_vectors: NDArray[np.float32]
    trained_users: NDArray[np.bool_]
    histories: Histories | None
    maturity_limit: NDArray[np.int8] | None  # per bundle user, -1 none
    space: int  # space_id of the bundle's CF item vectors (online user vectors must match it)
    dim: int
    applied_vectors: int = 0
    applied_catalog: int = 0
    item_neighbours: ItemNeighbours | None = None  # the EASE-style source's weights (bundles since spec 2)
    sequence: SequenceScorer | None = None  # the next-title model (bundles since spec 2)
    # log(1 + training users with a positive event) of each bundle title: the popularity correction of
    # stage 3 (PostConfig.popularity_correction); rows beyond it (live titles) count 0.
    log_audience: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    # Per bundle title: the exposure price learned at training (models.exposure), 0 beyond it.
    exposure_price: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path, version: str | None = None) -> RecommenderModel:
        """Open and load a bundle (blocking: call it in a thread). Raises ``BundleError`` without one."""
        bundle = open_bundle(root, version)
        config = config_from_params(bundle.manifest.get("params", {}))
        chosen = chosen_in(bundle.manifest.get("metrics", {}))
        if chosen is not None:  # stage 3 runs with the debiasing training chose; the params keep what it was given
            config = config.with_debiasing(*chosen)
        arrays = bundle.arrays("items")
        meta = bundle.json("catalog")
        cf = CFModel.load(bundle.file("cf.npz"))
        catalog = bundle.catalog_table()
        histories: Histories | None = None
        limits: NDArray[np.int8] | None = None
        if "histories.npz" in bundle.manifest["files"]:  # bundles trained before it existed lack it
            h = bundle.arrays("histories")
            histories = Histories(h["ptr"].astype(np.int64), h["items"].astype(np.int32),
                                  h["weights"].astype(np.float32), h["ts"].astype(np.int64))
            limits = h["maturity_limit"].astype(np.int8)
        layout = FeatureLayout.from_dict(bundle.manifest["feature_layout"])
        neighbours = (ItemNeighbours.load(bundle.file(ITEM_NEIGHBOURS_FILE).parent)
                      if ITEM_NEIGHBOURS_FILE in bundle.manifest["files"] else None)
        sequence = (SequenceScorer.load(bundle.file(SEQUENCE_FILE).parent)
                    if SEQUENCE_FILE in bundle.manifest["files"] else None)
        return cls.assemble(
            version=bundle.version, config=config, catalog=catalog, genre_vocab=list(meta["genre_vocab"]),
            content=arrays["content_vectors"], popularity=arrays["popularity"], cf=cf,
            cf_index=ItemIndex.load(bundle.file("hnsw_cf.bin")),
            neighbour_index=ItemIndex.load(bundle.file("hnsw_items.bin")),
            content_model=ContentModel.load(bundle.file("content.npz")), layout=layout,
            ranker=RankerSession(bundle.bytes("ranker.onnx"), intra_op_threads=1), user_ids=bundle.json("user_ids"),
            histories=histories, maturity_limit=limits, item_neighbours=neighbours, sequence=sequence,
            exposure_price=(bundle.array(EXPOSURE_FILE) if f"{EXPOSURE_FILE}.npy" in bundle.manifest["files"]
                            else None),
        )

    @classmethod
    def from_fit(cls, catalog: Catalog, user_ids: Sequence[str], *, config: TwoStageConfig, cf: CFModel,
                 content_model: ContentModel, content: NDArray[np.float32], popularity: NDArray[np.float32],
                 cf_index: ItemIndex, neighbour_index: ItemIndex, histories: Histories,
                 maturity_limit: NDArray[np.int8] | None, layout: FeatureLayout, ranker: RankerSession | None,
                 version: str = "in-memory", item_neighbours: ItemNeighbours | None = None,
                 sequence: SequenceScorer | None = None, exposure_price: NDArray[np.float32] | None = None
                 ) -> RecommenderModel:
        """A model just fitted (offline evaluation, the ranker's own training requests): what a bundle
        written from the same fit would load as."""
        return cls.assemble(
            version=version, config=config, catalog=CatalogTable.from_catalog(catalog),
            genre_vocab=list(catalog.genre_vocab), content=content, popularity=popularity, cf=cf, cf_index=cf_index,
            neighbour_index=neighbour_index, content_model=content_model, layout=layout, ranker=ranker,
            user_ids=user_ids, histories=histories, maturity_limit=maturity_limit, item_neighbours=item_neighbours,
            sequence=sequence, exposure_price=exposure_price,
        )

    @classmethod
    def assemble(cls, *, version: str, config: TwoStageConfig, catalog: CatalogTable, genre_vocab: list[str],
                 content: NDArray[np.floating], popularity: NDArray[np.floating], cf: CFModel, cf_index: ItemIndex,
                 neighbour_index: ItemIndex, content_model: ContentModel, layout: FeatureLayout,
                 ranker: RankerSession | None, user_ids: Sequence[str], histories: Histories | None,
                 maturity_limit: NDArray[np.int8] | None, item_neighbours: ItemNeighbours | None = None,
                 sequence: SequenceScorer | None = None, exposure_price: NDArray[np.floating] | None = None
                 ) -> RecommenderModel:
        n = len(catalog)
        items = ItemTable(catalog=catalog, genre_vocab=genre_vocab, content=np.asarray(content, np.float32),
                          popularity=np.asarray(popularity, np.float32))
        static = ItemStatic.from_table(catalog, genre_vocab)
        check_layout(layout, feature_layout(n, static.n_genres))
        return cls(
            version=version, config=config, items=items, n_bundle_items=n, cf_index=cf_index,
            neighbour_index=neighbour_index, static=static, layout=layout, content_model=content_model, ranker=ranker,
            user_index={u: k for k, u in enumerate(user_ids)}, user_vectors=cf.user_vectors.astype(np.float32),
            trained_users=cf.trained_users.astype(bool), histories=histories, maturity_limit=maturity_limit,
            space=space_id(cf.item_vectors), dim=int(cf.item_vectors.shape[1]), item_neighbours=item_neighbours,
            sequence=sequence, log_audience=log_audience(histories, n),
            exposure_price=np.asarray(exposure_price if exposure_price is not None else (), np.float32),
        )

    def audience_of(self, rows: NDArray[np.integer]) -> NDArray[np.float32]:
        """``log_audience`` of item rows (0 for live titles newer than the bundle)."""
        return _rows_of(self.log_audience, rows)

    def penalty_of(self, rows: NDArray[np.integer], post: PostConfig) -> NDArray[np.float32] | None:
        """What stage 3 takes off the ranker's scores of ``rows``: the popularity correction and the exposure
        prices; ``None`` when both are off."""
        penalty = None
        if post.popularity_correction:
            penalty = post.popularity_correction * self.audience_of(rows)
        if post.exposure_prices and len(self.exposure_price):
            prices = _rows_of(self.exposure_price, rows)
            penalty = prices if penalty is None else penalty + prices
        return penalty

    def exclusion(self, history_items: NDArray[np.integer], extra: ItemMask | None = None) -> ItemMask:
        """History, unavailable titles and ``extra``, as one mask over the current rows."""
        return exclusion(len(self.items), history_items, self.items.available, extra)

    # -- users --------------------------------------------------------------------------------------

    def user_row(self, user_id: str) -> int | None:
        return self.user_index.get(user_id)

    def bundle_vector(self, row: int | None) -> NDArray[np.float32] | None:
        if row is None or row >= len(self.trained_users) or not self.trained_users[row]:
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

    # -- live updates -------------------------------------------------------------------------------

    def apply_catalog(self, events: Sequence[CatalogEvent]) -> int:
        """A batch of catalogue events (:meth:`CatalogTable.apply`); new titles get content vectors."""
        if not events:
            return 0
        t = self.items
        change = t.catalog.apply(events)
        # Bundle titles keep the content vector they were trained with; later titles embed their metadata.
        fresh = [r for r in change.upserted if r >= self.n_bundle_items]
        t._rebuild(change.upserted)
        if fresh:
            c = t.catalog
            content = t.content.copy()
            content[fresh] = self.content_model.embed(
                [c.titles[r] for r in fresh], [c.genres[r] for r in fresh], [c.tags[r] for r in fresh],
                [c.cast[r] for r in fresh], [c.year[r] for r in fresh])
            t.content = content
        # Unavailable titles stay in the indexes (a tombstone on item-vectors removes them): every
        # source and the similar-items answer filter by ``available``, so a title that comes back
        # needs no re-insert, and a vector that arrives before its metadata is not lost.
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
        if t.catalog.add_placeholders([i for i, r in latest.items() if r is not None]):
            t._rebuild(())
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
        self.applied_vectors += len(latest)
        return len(add_rows) + len(deleted)

    def with_live_state(self, catalog: Sequence[CatalogEvent],
                        vectors: Sequence[tuple[str, ItemVector | None]]) -> RecommenderModel:
        """Apply what the server has tailed so far (used on a freshly loaded model before the swap)."""
        self.apply_catalog(catalog)
        self.apply_vectors(vectors)
        return self


def log_audience(histories: Histories | None, n_items: int) -> NDArray[np.float32]:
    """log(1 + distinct users whose net feedback on the title is positive), from the bundle's histories."""
    if histories is None or not len(histories.items):
        return np.zeros(n_items, np.float32)
    users = np.repeat(np.arange(len(histories.ptr) - 1, dtype=np.int64), np.diff(histories.ptr))
    key = users * n_items + histories.items.astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    net = np.bincount(inverse, weights=histories.weights.astype(np.float64), minlength=len(uniq))
    counts = np.bincount((uniq[net > 0] % n_items).astype(np.int64), minlength=n_items)[:n_items]
    return np.log1p(counts).astype(np.float32)


def _rows_of(values: NDArray[np.float32], rows: NDArray[np.integer]) -> NDArray[np.float32]:
    """``values[rows]`` with 0 for rows beyond ``values`` (live titles newer than the bundle)."""
    rows = np.asarray(rows)
    out = np.zeros(len(rows), np.float32)
    inside = np.flatnonzero(rows < len(values))
    out[inside] = values[rows[inside]]
    return out
