"""Online user vectors: the update rule, River equivalence, determinism, cold start, drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from models.cf import fit_cf
from models.dataset import KIND, EventLog, load_log
from models.item_vector_codec import ItemVector, decode_item_vector, encode_item_vector, space_id, tombstone
from models.online_user import OnlineUserModel, RiverOnlineUser, drift_hit_rates, online_weight, online_weights
from online_state.user_vectors import pack_user_vector, unpack_user_vector
from tools.datasets.world import generate_world


def clustered_items(n_genres: int = 4, per_genre: int = 50, dim: int = 16, seed: int = 0) -> NDArray[np.float32]:
    """Items of genre g point along a genre direction plus noise (rows g*per_genre..)."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:n_genres]
    rows = np.repeat(centres, per_genre, axis=0) + 0.15 * rng.standard_normal((n_genres * per_genre, dim))
    return (0.8 * rows).astype(np.float32)


def test_one_step_matches_the_written_rule() -> None:
    v = clustered_items()
    m = OnlineUserModel(v, lr=0.3, reg=0.05)
    u0 = np.random.default_rng(1).standard_normal(v.shape[1]).astype(np.float32) * 0.1
    for item, weight in ((3, 1.0), (7, -1.0), (9, 2.0), (11, 5.0)):
        x = v[item].astype(np.float64)
        y = 1.0 if weight > 0 else 0.0
        eta = min(0.3 * min(abs(weight), 2.0), 1.0 / float(x @ x))
        expected = u0 + eta * ((y - u0 @ x) * x - 0.05 * u0)
        np.testing.assert_allclose(m.update(u0, [(item, weight, 0)]), expected, rtol=1e-5, atol=1e-6)


def test_zero_weight_and_unknown_items_change_nothing() -> None:
    m = OnlineUserModel(clustered_items())
    u0 = np.ones(16, np.float32) * 0.1
    np.testing.assert_array_equal(m.update(u0, [(0, 0.0, 0), (-1, 1.0, 0), (10_000, 1.0, 0)]), u0)
    np.testing.assert_array_equal(m.update(None, []), np.zeros(16, np.float32))


def test_step_never_overshoots_the_target() -> None:
    v = clustered_items()
    m = OnlineUserModel(v, lr=100.0, reg=0.0)  # absurd lr: the 1/‖v‖² cap must hold it
    u = m.update(None, [(5, 2.0, 0)])
    assert float(u @ v[5]) == pytest.approx(1.0, abs=1e-5)


def test_river_learn_one_gives_the_same_vector() -> None:
    rng = np.random.default_rng(2)
    v = clustered_items()
    m = OnlineUserModel(v)
    events = [(int(rng.integers(len(v))), float(rng.choice([1.0, 2.0, -1.0, 0.25, 0.0])), i) for i in range(300)]
    start = rng.standard_normal(16).astype(np.float32) * 0.1
    np.testing.assert_allclose(RiverOnlineUser(m).learn("u", start, events), m.update(start, events), atol=1e-5)


def test_deterministic_and_independent_of_batching() -> None:
    rng = np.random.default_rng(3)
    v = clustered_items()
    m = OnlineUserModel(v)
    n, e = 40, 600
    owner = rng.integers(n, size=e)
    items = rng.integers(len(v), size=e)
    weights = rng.choice(np.array([1.0, 2.0, -1.0, 0.25], np.float32), size=e)
    start = np.zeros((n, 16), np.float32)
    batch = m.update_many(start, owner, items, weights)
    np.testing.assert_array_equal(batch, m.update_many(start, owner, items, weights))
    # Split in two batches with the state carried over: bit-identical (all arithmetic is float32).
    half = e // 2
    mid = m.update_many(start, owner[:half], items[:half], weights[:half])
    np.testing.assert_array_equal(batch, m.update_many(mid, owner[half:], items[half:], weights[half:]))
    for user in range(5):
        sel = owner == user
        alone = m.update(None, [(int(i), float(w), 0) for i, w in zip(items[sel], weights[sel], strict=True)])
        np.testing.assert_array_equal(alone, batch[user])


def test_new_user_neighbours_follow_the_genre_watched() -> None:
    v = clustered_items(n_genres=4, per_genre=50)
    m = OnlineUserModel(v)
    watched = [(2 * 50 + j, 1.0 if j % 2 else 2.0, j) for j in range(5)]  # five genre-2 titles
    u = m.update(None, watched)
    top = np.argsort(-(v @ u))[:20]
    assert np.mean(top // 50 == 2) >= 0.9


def test_online_follows_a_taste_change() -> None:
    """Trained on genre 0, now watching genre 3: online ranks genre 3 up, frozen cannot."""
    v = clustered_items()
    m = OnlineUserModel(v)
    frozen = m.update(None, [(j, 2.0, j) for j in range(30)])  # "training" history: genre 0
    online = m.update(frozen, [(150 + j, 2.0, 100 + j) for j in range(12)])
    share = {name: float(np.mean(np.argsort(-(v @ u))[:20] // 50 == 3)) for name, u in
             (("frozen", frozen), ("online", online))}
    assert share["frozen"] == 0.0
    assert share["online"] >= 0.5


def test_online_weights_signs() -> None:
    assert online_weight("play") == 1.0 and online_weight("complete") == 2.0
    assert online_weight("skip") == -1.0 and online_weight("impression") == 0.0
    assert online_weight("rating", 5.0) == pytest.approx(2.0) and online_weight("rating", 0.5) == pytest.approx(-2.0)
    assert online_weight("rating", 4.0) > 0 > online_weight("rating", 2.0)
    kinds = np.array([KIND["progress"], KIND["add_to_list"]], np.int8)
    np.testing.assert_allclose(online_weights(kinds, np.zeros(2, np.float32)), [0.0, 1.5])


def test_user_value_round_trip_and_space_check() -> None:
    v = clustered_items()
    vec = np.arange(16, dtype=np.float32)
    value = pack_user_vector(vec, 7, space_id(v))
    assert len(value) == 8 + 4 * 16
    got, version = unpack_user_vector(value, space=space_id(v), dim=16)
    assert version == 7 and got is not None
    np.testing.assert_array_equal(got, vec)
    assert unpack_user_vector(value, space=space_id(v * 2)) == (None, 0)
    assert unpack_user_vector(value, dim=32) == (None, 0)
    assert unpack_user_vector(None) == (None, 0) and unpack_user_vector(b"abc") == (None, 0)


def test_item_vector_codec_round_trip() -> None:
    item = ItemVector("m1", np.linspace(-1, 1, 16, dtype=np.float32), "v1", "content", 123)
    key, value = encode_item_vector(item)
    got = decode_item_vector(key, value)
    assert got is not None and (got.item_id, got.bundle, got.source, got.ts) == ("m1", "v1", "content", 123)
    np.testing.assert_array_equal(got.vector, item.vector)
    assert decode_item_vector(*tombstone("m1")) is None
    with pytest.raises(ValueError):
        decode_item_vector(b"m2", value)  # key and item id disagree
    with pytest.raises(ValueError):
        decode_item_vector(b"m1", b"{not json")


@pytest.fixture(scope="module")
def drifting_log(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    out = tmp_path_factory.mktemp("drift")
    generate_world(Path(out), users=200, items=800, events=40_000, seed=2, days=30)
    return load_log(Path(out))


def test_drift_online_vs_frozen_hr20(drifting_log: EventLog) -> None:
    """Next-item HR@20 over the second half of a drifting world, CF trained on the first half.

    The gain is small and seed-dependent (benchmarks/bench_online_user.py: +1 point on average
    over seeds 2-4, one seed slightly below frozen), so this asserts no more than "not worse
    beyond noise" and prints the figures.
    """
    log = drifting_log
    split = int(log.ts.min() + (log.ts.max() - log.ts.min()) // 2)
    cf = fit_cf(log.select(log.ts < split), dim=16, seed=0)
    res = drift_hit_rates(log, cf.item_vectors, cf.user_vectors, split, OnlineUserModel(cf.item_vectors))
    print(f"drift HR@20: {res}")
    assert res["targets"] > 500
    assert res["online"] >= res["frozen"] - 0.02
