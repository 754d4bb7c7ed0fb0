"""Content vectors (embed new titles from metadata alone) and the content → CF projection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from models.cf import fit_cf
from models.content import (
    ContentModel,
    ContentProjection,
    fill_cold_items,
    fit_content,
    fit_projection,
    title_tokens,
    title_words,
)
from models.dataset import EventLog, load_log
from tools.datasets.world import WorldConfig, run_world
from tools.datasets.world_users import WorldModel


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    folder = tmp_path_factory.mktemp("content-world")
    frozen = WorldModel(regime_shifts=0.0, walk_sd=0.0, style_walk_sd=0.0)
    run_world(folder, WorldConfig(users=300, items=1000, events=30_000, seed=5, days=14.0, model=frozen))
    return load_log(folder)


@pytest.fixture(scope="module")
def model(log: EventLog) -> ContentModel:
    return fit_content(log.catalog, dim=32)


def test_title_words_drop_year_and_stopwords() -> None:
    assert title_words("American President, The (1995)") == ["american", "president"]
    assert title_words("Star Wars: Episode IV - A New Hope (1977)") == ["star", "wars", "episode", "iv", "new", "hope"]
    assert title_words("Ocean's 11 (2001)") == ["ocean", "11"]
    assert title_words("Mother (Madeo) (2009)") == ["mother", "madeo"]
    tokens = title_tokens("Heat (1995)", ["Action", "(no genres listed)"], ["Heist "], ["Al Pacino"], 1995)
    assert tokens == {"g:action", "t:heist", "c:al pacino", "y:1990s", "w:heat"}
    assert "y:0s" not in title_tokens("X", [], [], [], 0)


def test_embedding_an_existing_title_gives_its_stored_vector(log: EventLog, model: ContentModel) -> None:
    cat = log.catalog
    assert model.vectors.shape == (cat.n_items, 32) and model.vectors.dtype == np.float32
    rows = [0, 5, 17, cat.n_items - 1]
    again = model.embed([cat.titles[i] for i in rows], [cat.genres[i] for i in rows], [cat.tags[i] for i in rows],
                        [cat.cast[i] for i in rows], cat.year[rows])
    np.testing.assert_allclose(again, model.vectors[rows], atol=1e-6)
    norms = np.linalg.norm(model.vectors, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-5)


def test_a_new_title_lands_near_titles_with_the_same_metadata(log: EventLog, model: ContentModel) -> None:
    cat = log.catalog
    i = int(np.argmax([len(g) + len(t) for g, t in zip(cat.genres, cat.tags, strict=True)]))
    new = model.embed(["A Title Nobody Has Seen"], [cat.genres[i]], [cat.tags[i]], [cat.cast[i]], [cat.year[i]])[0]
    sims = model.vectors @ new
    assert sims[i] > 0.8
    assert np.argsort(-sims)[:5].tolist().count(i) == 1
    # Nothing known: a zero vector, not a random direction.
    assert not model.embed(["Zzqx"], [["NoSuchGenre"]], [[]], [[]], [0]).any()


def test_fit_is_deterministic_and_save_load_round_trips(tmp_path: Path, log: EventLog, model: ContentModel) -> None:
    again = fit_content(log.catalog, dim=32)
    np.testing.assert_allclose(again.vectors, model.vectors, atol=1e-5)
    model.save(tmp_path / "content.npz")
    back = ContentModel.load(tmp_path / "content.npz")
    cat = log.catalog
    np.testing.assert_array_equal(back.vocab, model.vocab)
    np.testing.assert_allclose(back.embed(cat.titles[:3], cat.genres[:3], cat.tags[:3], cat.cast[:3], cat.year[:3]),
                               model.vectors[:3], atol=1e-6)


def test_tiny_catalog_pads_the_dimension(log: EventLog) -> None:
    cat = log.catalog
    n = 12
    tiny = dataclasses.replace(cat, item_ids=cat.item_ids[:n], titles=cat.titles[:n], genres=cat.genres[:n],
                               tags=cat.tags[:n], cast=cat.cast[:n], year=cat.year[:n])
    small = fit_content(tiny, dim=64, min_df=1)  # more dims than titles: dense SVD, zero padding
    assert small.vectors.shape == (n, 64) and small.components.shape[0] == 64
    assert not small.components[n:].any()
    np.testing.assert_allclose(np.linalg.norm(small.vectors, axis=1), 1.0, atol=1e-5)


def test_projection_beats_a_random_projection_on_held_out_items(
    tmp_path: Path, log: EventLog, model: ContentModel
) -> None:
    cf = fit_cf(log, dim=32)
    proj = fit_projection(model.vectors, cf.item_vectors, cf.trained_items, seed=0)
    r = proj.report
    assert r["cosine"] > r["cosine_random_projection"] + 0.05, r
    assert r["recall@20"] > 2 * r["recall@20_random_projection"], r
    assert r["recall@20"] > 2 * r["recall@20_random"], r
    assert r["lambda"] == proj.lam
    out = proj.project(model.vectors[:3])
    assert out.shape == (3, 32) and out.dtype == np.float32
    proj.save(tmp_path / "proj.npz")
    back = ContentProjection.load(tmp_path / "proj.npz")
    np.testing.assert_array_equal(back.project(model.vectors[:3]), out)
    assert back.report == proj.report
    # Cold items can now be given CF-space vectors.
    cold = np.flatnonzero(~cf.trained_items)
    filled = fill_cold_items(cf, proj, model.vectors)
    assert len(cold) and filled.item_vectors[cold].any(axis=1).all()
    np.testing.assert_array_equal(filled.item_vectors[cold], proj.project(model.vectors[cold]))
    np.testing.assert_array_equal(filled.item_vectors[cf.trained_items], cf.item_vectors[cf.trained_items])
