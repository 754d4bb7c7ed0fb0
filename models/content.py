"""Content vectors from catalogue metadata, and a learned map from content space into CF space.

Why both: a title nobody has watched yet has no CF vector, so CF retrieval can never surface it.
Its metadata (genres, tags, cast, decade, title words) is known the moment it is upserted, so
:class:`ContentModel` embeds it, and :class:`ContentProjection` (ridge regression fitted on the
titles that do have CF vectors) turns that into a usable CF-space vector.

The content vector of a title: one token per metadata value, prefixed by its field (``g:comedy``,
``t:heist``, ``c:tom hanks``, ``y:1990s``, ``w:toy``); binary term frequency × smoothed IDF × a
per-field weight; each row L2-normalised; reduced to ``dim`` dimensions by truncated SVD (LSA);
L2-normalised again. Everything needed to embed a *new* title (vocabulary, IDF, field weights,
SVD components) is a plain numpy array, so a model is one ``np.savez`` file and the server embeds
titles from ``item_upsert`` events without the training code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.linalg import svds

from models.catalog import Catalog
from models.cf import CFModel

FIELDS: Final[tuple[str, ...]] = ("g", "t", "c", "y", "w")  # genre, tag, cast, decade, title word
# Genres and tags say most about what a title *is*; cast links titles only through shared actors;
# decade and title words are weak hints, so they get less say. A prior, not a fit: on
# ml-latest-small the projection's held-out cosine moved by < 0.01 (noise) whether title words
# were dropped, decades doubled or tags halved.
DEFAULT_FIELD_WEIGHTS: Final[dict[str, float]] = {"g": 1.0, "t": 1.0, "c": 0.7, "y": 0.5, "w": 0.5}
_YEAR_SUFFIX: Final = re.compile(r"\s*\(\s*\d{4}(?:\s*[-–]\s*\d{0,4})?\s*\)\s*$")
_WORD: Final = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORD_TEXT: Final = (
    "a an and the of in on at to for from with by is it its as or be are was i ii iii my me you your "
    "his her he she we our their this that these those de la le les el los das der die und"
)
STOPWORDS: Final[frozenset[str]] = frozenset(_STOPWORD_TEXT.split(" "))
NO_GENRES: Final = "(no genres listed)"  # MovieLens' placeholder is the absence of a genre


def title_words(title: str) -> list[str]:
    """Lowercased word tokens of a title without its "(1995)" suffix and without stopwords."""
    stripped = _YEAR_SUFFIX.sub("", title).lower()
    return [w for w in _WORD.findall(stripped) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def title_tokens(title: str, genres: Sequence[str], tags: Sequence[str], cast: Sequence[str], year: int) -> set[str]:
    """The set of field-prefixed tokens of one title (binary term frequency: a set)."""
    tokens = {f"g:{g.strip().lower()}" for g in genres if g and g != NO_GENRES}
    tokens.update(f"t:{t.strip().lower()}" for t in tags if t.strip())
    tokens.update(f"c:{c.strip().lower()}" for c in cast if c.strip())
    if year > 0:
        tokens.add(f"y:{year // 10 * 10}s")
    tokens.update(f"w:{w}" for w in title_words(title))
    return tokens


def _l2_rows(x: NDArray[np.floating]) -> NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class ContentModel:
    """Vocabulary + IDF + SVD components, and the catalogue's own vectors (``vectors``)."""

    vocab: NDArray[np.str_]  # (V,) field-prefixed tokens
    idf: NDArray[np.float32]  # (V,) IDF × field weight, so embedding is one multiply
    components: NDArray[np.float32]  # (d, V) right singular vectors
    vectors: NDArray[np.float32]  # (n_items, d) of the catalogue the model was fitted on
    seconds: float = 0.0
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index = {str(t): i for i, t in enumerate(self.vocab)}

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def tfidf(
        self, titles: Sequence[str], genres: Sequence[Sequence[str]], tags: Sequence[Sequence[str]],
        cast: Sequence[Sequence[str]], year: Sequence[int] | NDArray[np.integer],
    ) -> sp.csr_matrix:
        """Row-normalised TF-IDF rows in the model's vocabulary (unknown tokens are dropped)."""
        return self._tfidf_rows(title_tokens(t, g, tg, c, int(y))
                                for t, g, tg, c, y in zip(titles, genres, tags, cast, year, strict=True))

    def _tfidf_rows(self, token_sets: Iterable[set[str]]) -> sp.csr_matrix:
        indptr = [0]
        indices: list[int] = []
        index = self._index
        for tokens in token_sets:
            indices.extend(sorted(j for tok in tokens if (j := index.get(tok)) is not None))
            indptr.append(len(indices))
        cols = np.array(indices, np.int64)
        data = self.idf[cols].astype(np.float32)
        m = sp.csr_matrix((data, cols, np.array(indptr, np.int64)), shape=(len(indptr) - 1, len(self.vocab)))
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m, dtype=np.float32)

    def embed(
        self, titles: Sequence[str], genres: Sequence[Sequence[str]], tags: Sequence[Sequence[str]],
        cast: Sequence[Sequence[str]], year: Sequence[int] | NDArray[np.integer],
    ) -> NDArray[np.float32]:
        """``(n, d)`` L2-normalised content vectors for titles given by metadata alone.

        A title none of whose tokens are in the vocabulary gets a zero vector (nothing is known).
        """
        x = self.tfidf(titles, genres, tags, cast, year)
        return _l2_rows(np.asarray(x @ self.components.T))

    def embed_catalog(self, catalog: Catalog) -> NDArray[np.float32]:
        return self.embed(catalog.titles, catalog.genres, catalog.tags, catalog.cast, catalog.year)

    def save(self, path: Path) -> None:
        np.savez(path, vocab=self.vocab, idf=self.idf, components=self.components, vectors=self.vectors,
                 seconds=np.array(self.seconds))

    @classmethod
    def load(cls, path: Path) -> ContentModel:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["vocab"], z["idf"], z["components"], z["vectors"], float(z["seconds"]))


def fit_content(
    catalog: Catalog, dim: int = 64, seed: int = 0, *, min_df: int = 2,
    field_weights: dict[str, float] | None = None,
) -> ContentModel:
    """Fit vocabulary, IDF and an SVD of ``dim`` components on a catalogue.

    ``min_df=2`` drops tokens carried by one title only: they cannot make two titles similar and
    would only add noise dimensions to the SVD (they also keep the vocabulary small).
    """
    started = time.perf_counter()
    weights = {**DEFAULT_FIELD_WEIGHTS, **(field_weights or {})}
    per_item = [title_tokens(*row) for row in zip(catalog.titles, catalog.genres, catalog.tags, catalog.cast,
                                                   catalog.year.tolist(), strict=True)]
    counts: dict[str, int] = {}
    for tokens in per_item:
        for tok in tokens:
            counts[tok] = counts.get(tok, 0) + 1
    vocab = np.array(sorted(t for t, n in counts.items() if n >= min_df), dtype=np.str_)
    df = np.array([counts[str(t)] for t in vocab], np.float64)
    n = max(catalog.n_items, 1)
    # Smoothed IDF (as scikit-learn's): never zero, so a token on every title still counts a little.
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    field_w = np.array([weights[str(t)[0]] for t in vocab], np.float64) if len(vocab) else np.zeros(0)
    model = ContentModel(vocab, (idf * field_w).astype(np.float32), np.zeros((0, len(vocab)), np.float32),
                         np.zeros((catalog.n_items, 0), np.float32))
    x = model._tfidf_rows(per_item)
    model.components = _top_components(x, dim, seed)
    model.vectors = _l2_rows(np.asarray(x @ model.components.T))
    model.seconds = time.perf_counter() - started
    return model


def _top_components(x: sp.csr_matrix, dim: int, seed: int) -> NDArray[np.float32]:
    """``dim`` right singular vectors of ``x`` (rows padded with zeros when ``x`` has fewer).

    ARPACK (``svds``) with a seeded start vector is deterministic (and ~50× faster than a dense
    SVD on a 1,000 × 1,000 catalogue); tiny matrices, where ARPACK needs ``k < min(shape)``, take
    a dense SVD. Each vector's sign is fixed (largest entry
    positive) so refits on the same data give the same vectors, not sign-flipped ones.
    """
    n, v = x.shape
    k = min(dim, n, v)
    if k == 0:
        return np.zeros((dim, v), np.float32)
    if min(n, v) <= 2 * k:  # ARPACK needs k < min(shape) and is slow near it; tiny: dense is cheap
        _, s, vt = np.linalg.svd(x.toarray().astype(np.float64), full_matrices=False)
        vt = vt[:k]
    else:
        rng = np.random.default_rng(seed)
        _, s, vt = svds(x.astype(np.float64), k=k, v0=rng.uniform(-1.0, 1.0, min(n, v)), solver="arpack")
        order = np.argsort(-s)
        vt = vt[order]
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    out = np.zeros((dim, v), np.float32)
    out[:k] = vt * signs[:, None]
    return out


@dataclass
class ContentProjection:
    """Ridge map content → CF space: ``project(c) = [c, 1] @ weights`` (an intercept row last)."""

    weights: NDArray[np.float32]  # (d_content + 1, d_cf)
    lam: float
    report: dict[str, float] = field(default_factory=dict)  # held-out quality, for the manifest

    def project(self, content_vectors: NDArray[np.floating]) -> NDArray[np.float32]:
        c = np.atleast_2d(np.asarray(content_vectors, np.float32))
        return (c @ self.weights[:-1] + self.weights[-1]).astype(np.float32)

    def save(self, path: Path) -> None:
        keys = sorted(self.report)
        np.savez(path, weights=self.weights, lam=np.array(self.lam), report_keys=np.array(keys, np.str_),
                 report_values=np.array([self.report[k] for k in keys], np.float64))

    @classmethod
    def load(cls, path: Path) -> ContentProjection:
        with np.load(path, allow_pickle=False) as z:
            report = {str(k): float(v) for k, v in zip(z["report_keys"], z["report_values"], strict=True)}
            return cls(z["weights"], float(z["lam"]), report)


LAMBDAS: Final[tuple[float, ...]] = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)


def _ridge(c: NDArray[np.float64], y: NDArray[np.float64], lam: float) -> NDArray[np.float64]:
    """Closed-form ridge with an unpenalised intercept: solve on centred data, then add the means."""
    c_mean, y_mean = c.mean(axis=0), y.mean(axis=0)
    cc, yc = c - c_mean, y - y_mean
    w = np.linalg.solve(cc.T @ cc + lam * np.eye(c.shape[1]), cc.T @ yc)
    return np.vstack([w, y_mean - c_mean @ w])


def _row_cosine(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def fit_projection(
    content_vectors: NDArray[np.floating], cf_vectors: NDArray[np.floating], trained: NDArray[np.bool_],
    *, seed: int = 0, holdout: float = 0.2, lambdas: Sequence[float] = LAMBDAS, k: int = 20,
) -> ContentProjection:
    """Fit the ridge map on the ``trained`` items; λ is the one whose held-out cosine is best.

    A random ``holdout`` share of the trained items is left out to pick λ and to measure quality
    (``report``: mean cosine projected-vs-true, and recall@k of retrieving the item's true CF
    neighbours with the projected vector, each beside a random-projection baseline); the final map
    is then refitted on all trained items.
    """
    c_all = np.asarray(content_vectors, np.float64)
    y_all = np.asarray(cf_vectors, np.float64)
    items = np.flatnonzero(trained)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(items)
    n_test = max(1, round(len(perm) * holdout)) if len(perm) > 4 else 0
    test, fit = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if n_test == 0 or len(fit) < 2:
        w = _ridge(c_all[items], y_all[items], lambdas[len(lambdas) // 2]) if len(items) else \
            np.zeros((c_all.shape[1] + 1, y_all.shape[1]))
        return ContentProjection(w.astype(np.float32), float(lambdas[len(lambdas) // 2]), {})
    scores = []
    for lam in lambdas:
        w = _ridge(c_all[fit], y_all[fit], lam)
        pred = c_all[test] @ w[:-1] + w[-1]
        scores.append(float(np.mean(_row_cosine(pred, y_all[test]))))
    best = int(np.argmax(scores))
    lam = float(lambdas[best])
    w = _ridge(c_all[fit], y_all[fit], lam)
    true_top = _neighbours(y_all[test], y_all[fit], k)  # shared by both reports below
    report = projection_quality(c_all[test] @ w[:-1] + w[-1], y_all, test, fit, k=k, true_top=true_top)
    report["lambda"] = lam
    # A random linear map with the same intercept: what "no information in the content" scores.
    w_rand = rng.standard_normal(w.shape) * np.std(w[:-1])
    w_rand[-1] = w[-1]
    rand = projection_quality(c_all[test] @ w_rand[:-1] + w_rand[-1], y_all, test, fit, k=k, true_top=true_top)
    report["cosine_random_projection"] = rand["cosine"]
    report[f"recall@{k}_random_projection"] = rand[f"recall@{k}"]
    w_final = _ridge(c_all[items], y_all[items], lam)
    return ContentProjection(w_final.astype(np.float32), lam, report)


def _neighbours(queries: NDArray[np.floating], pool: NDArray[np.floating], k: int) -> NDArray[np.int64]:
    """Positions in ``pool`` of each query's ``k`` nearest by cosine (unordered; float32 for speed)."""
    sims = _l2_rows(np.asarray(queries, np.float32)) @ _l2_rows(np.asarray(pool, np.float32)).T
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def projection_quality(
    predicted: NDArray[np.floating], cf_vectors: NDArray[np.floating], test: NDArray[np.int64],
    pool: NDArray[np.int64], *, k: int = 20, true_top: NDArray[np.int64] | None = None,
) -> dict[str, float]:
    """Held-out quality of projected vectors ``predicted`` (rows aligned with ``test`` items).

    - ``cosine``: mean cosine between projected and true CF vectors.
    - ``recall@k``: of the item's k nearest CF neighbours (cosine of the true vector, among
      ``pool``), the share that the k nearest to the projected vector recover;
      ``recall@k_random`` is the chance level k/|pool| of a random pick.
    """
    y = np.asarray(cf_vectors, np.float64)
    k = min(k, len(pool))
    if true_top is None:
        true_top = _neighbours(y[test], y[pool], k)
    got_top = _neighbours(predicted, y[pool], k)
    hits = (got_top[:, :, None] == true_top[:, None, :]).any(axis=2).sum(axis=1)
    return {
        "cosine": float(np.mean(_row_cosine(np.asarray(predicted, np.float64), y[test]))),
        f"recall@{k}": float(np.mean(hits / k)),
        f"recall@{k}_random": k / len(pool),
        "heldout_items": float(len(test)),
    }


def fill_cold_items(cf: CFModel, projection: ContentProjection, content_vectors: NDArray[np.floating]) -> CFModel:
    """``cf`` with every item that has no CF vector given its projected content vector instead.

    Items with no content either (zero content vector) keep a zero vector: the projection would
    only give them the intercept, the same "average title" for all of them.
    """
    content = np.asarray(content_vectors, np.float32)
    cold = np.flatnonzero(~cf.trained_items[: len(content)] & np.any(content != 0, axis=1))
    return cf.with_item_vectors(cold, projection.project(content[cold])) if len(cold) else cf
