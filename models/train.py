"""`streamrec train`: event log in, one published model bundle out.

The bundle holds everything the workers and servers load (see ``models.bundle`` for the layout):

=======================  ======================================================================
file                     what
=======================  ======================================================================
item_ids.json            catalogue ids, row order of every item array
user_ids.json            user ids, row order of ``cf.npz`` user vectors
cf.npz                   CF user and item vectors (items without CF data: content-projected)
content.npz              content model (vocabulary, idf, SVD components, catalogue vectors)
projection.npz           ridge map content space -> CF space (cold titles get CF vectors)
hnsw_cf.bin(.meta.npz)   HNSW over CF item vectors, inner product (user -> items)
hnsw_items.bin(.meta…)   HNSW over CF item vectors, cosine (item -> similar items)
items.npz                popularity, release/first-seen time, availability, maturity, originals,
                         genre matrix: the static item columns of the features
catalog.json             titles and genres (for reasons and the similar-items endpoint)
histories.npz            every user's item events at training time, CSR (ptr, items, weights, ts) in
                         ``user_ids`` order, plus ``maturity_limit`` per user (-1 none): the server's
                         exclusions, content profile and because-you-watched seeds for known users
ranker.onnx              the Wide & Deep ranker, one self-contained file
item_neighbours.npz      the EASE-style item-to-item weights, top-k per title, CSR (models.item_item)
sequence.onnx, .npz      the next-title sequence model and its item table (models.sequence)
exposure_prices.npy      per title, the exposure price stage 3 takes off its score (models.exposure)
=======================  ======================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import BundleError, BundleWriter, fingerprint_files, open_bundle
from models.candidates import user_histories
from models.config import TwoStageConfig, config_from_params
from models.dataset import EventLog, load_log
from models.exposure import EXPOSURE_FILE
from models.features.spec import FEATURE_SPEC_VERSION
from models.item_item import ITEM_NEIGHBOURS_FILE
from models.sequence import ONNX_FILE as SEQUENCE_FILE
from models.two_stage import TwoStageModel, fit_two_stage


def config_from_bundle(artifacts: Path | None) -> TwoStageConfig:
    """The parameters the published bundle was trained with (defaults when there is none)."""
    if artifacts is None:
        return TwoStageConfig()
    try:
        params = open_bundle(artifacts, verify=False).manifest.get("params", {})
    except BundleError:
        return TwoStageConfig()
    return config_from_params(params)


def write_bundle(writer: BundleWriter, log: EventLog, model: TwoStageModel) -> None:
    retrieval = model.retrieval
    catalog = log.catalog
    writer.save_json("item_ids", catalog.item_ids)
    writer.save_json("user_ids", log.user_ids)
    retrieval.cf.save(writer.path("cf.npz"))
    retrieval.content.save(writer.path("content.npz"))
    retrieval.projection.save(writer.path("projection.npz"))
    retrieval.cf_index.save(writer.path("hnsw_cf.bin"))
    retrieval.neighbour_index.save(writer.path("hnsw_items.bin"))
    writer.save_arrays(
        "items", popularity=retrieval.popularity, release_ts=catalog.release_ts, first_seen_ts=catalog.first_seen_ts,
        available=catalog.available, maturity=catalog.maturity, is_original=catalog.is_original,
        year=catalog.year, genre_matrix=catalog.genre_matrix, content_vectors=retrieval.content_vectors,
    )
    writer.save_json("catalog", {"titles": catalog.titles, "genres": catalog.genres,
                                 "genre_vocab": catalog.genre_vocab})
    writer.save_bytes("ranker.onnx", model.ranker_onnx)
    if retrieval.item_neighbours is not None:
        retrieval.item_neighbours.save(writer.path(ITEM_NEIGHBOURS_FILE).parent)
    if model.exposure_prices is not None:
        writer.save_array(EXPOSURE_FILE, model.exposure_prices)
    if retrieval.sequence is not None:
        retrieval.sequence.save(writer.path(SEQUENCE_FILE).parent)
    histories = user_histories(log)
    limits = log.user_maturity_limit if len(log.user_maturity_limit) == log.n_users else \
        np.full(log.n_users, -1, np.int8)
    writer.save_arrays("histories", ptr=histories.ptr, items=histories.items, weights=histories.weights,
                       ts=histories.ts, maturity_limit=limits.astype(np.int8))


def train_bundle(
    data: Path, artifacts: Path, config: TwoStageConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train on ``data`` (catalog.jsonl + events.jsonl) and publish a bundle under ``artifacts``."""
    say = progress or (lambda _m: None)
    say("reading the event log")
    files = [data / "catalog.jsonl", data / "events.jsonl"]
    log = load_log(data)
    return train_log_bundle(log, artifacts, fingerprint_files(files), config, progress)


def train_log_bundle(
    log: EventLog, artifacts: Path, data_fingerprint: str, config: TwoStageConfig | None = None,
    progress: Callable[[str], None] | None = None, *, make_latest: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Train on an event log already in memory and publish its bundle; ``make_latest=False`` leaves ``latest``
    where it is (a retraining candidate, published only if the gate passes: see ``streamrec retrain``)."""
    config = config or TwoStageConfig()
    say = progress or (lambda _m: None)
    model = fit_two_stage(log, config, progress=progress)
    say("writing the bundle")
    params = dataclasses.asdict(config)
    metrics = {**model.metrics, "data": {"users": log.n_users, "items": log.catalog.n_items,
                                         "events": log.n_events, "rejected_lines": log.rejected}}
    with BundleWriter(artifacts, data_fingerprint, FEATURE_SPEC_VERSION, params=params, metrics=metrics,
                      extra={"feature_layout": model.layout.to_dict()}) as writer:
        write_bundle(writer, log, model)
        path = writer.publish(make_latest=make_latest)
    return path, metrics
