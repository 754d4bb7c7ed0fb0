"""The sequence model: learns an order, exports to ONNX with parity, round-trips, serves as a source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from models.candidates import as_mask
from models.sequence import (
    PAD,
    SequenceModel,
    SequenceScorer,
    sequence_next,
    train_sequence_model,
    training_windows,
)

N_ITEMS = 40
MAX_LEN = 10


def ordered_world(n_users: int, seed: int) -> list[np.ndarray]:
    """Users watch consecutive titles: k is always followed by k + 1 (mod N_ITEMS), from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, N_ITEMS, n_users)
    lengths = rng.integers(4, 25, n_users)
    return [(s + np.arange(n)) % N_ITEMS for s, n in zip(starts, lengths, strict=True)]


def train(seed: int = 0, epochs: int = 8) -> SequenceModel:
    return train_sequence_model(ordered_world(150, seed=1), N_ITEMS, dim=32, max_len=MAX_LEN, epochs=epochs,
                                seed=seed, lr=5e-3, negatives=32, threads=1)


@pytest.fixture(scope="module")
def model() -> SequenceModel:
    return train()


@pytest.fixture(scope="module")
def scorer(model: SequenceModel) -> SequenceScorer:
    return model.to_scorer()


def test_windows_cover_every_transition_once() -> None:
    seqs = [np.arange(7), np.array([3]), np.arange(10, 13)]
    w = training_windows(seqs, max_len=3)
    inputs, targets = w[:, :-1], w[:, 1:]
    pairs = sorted(zip(inputs[inputs >= 0].tolist(), targets[inputs >= 0].tolist(), strict=True))
    assert pairs == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (10, 11), (11, 12)]
    # Cut from the end, left-padded: the newest transitions get the fullest context.
    assert w.tolist() == [[3, 4, 5, 6], [0, 1, 2, 3], [PAD, 10, 11, 12]]


def test_learns_the_order(scorer: SequenceScorer) -> None:
    held_out = ordered_world(100, seed=2)  # users the model never saw
    hits = []
    for seq in held_out:
        items, _ = sequence_next(scorer, seq[:-1], budget=5)
        hits.append(seq[-1] in items)
    chance = 5 / N_ITEMS
    assert np.mean(hits) >= 0.9 > 5 * chance


def test_onnx_matches_pytorch_with_padding(model: SequenceModel, scorer: SequenceScorer) -> None:
    rng = np.random.default_rng(3)
    seqs = rng.integers(0, N_ITEMS, (64, MAX_LEN))
    pad = rng.integers(0, MAX_LEN + 1, 64)  # 0 (full) .. MAX_LEN (all padding)
    seqs[np.arange(MAX_LEN)[None, :] < pad[:, None]] = PAD
    seqs[0, -1] = N_ITEMS + 5  # a title added after training reads as padding
    expected = model.user_states(seqs)
    got = scorer.user_states(seqs)
    assert got.shape == (64, 32)
    assert np.isfinite(got).all()
    assert np.max(np.abs(got - expected)) <= 1e-5


def test_same_seed_same_model() -> None:
    first = train(epochs=2)
    assert np.array_equal(train(epochs=2).item_embeddings, first.item_embeddings)
    assert not np.array_equal(train(seed=1, epochs=2).item_embeddings, first.item_embeddings)


def test_save_load_round_trip(scorer: SequenceScorer, tmp_path: Path) -> None:
    loaded = SequenceScorer.load(scorer.save(tmp_path / "seq"))
    for recent in (np.array([1, 2, 3]), np.arange(30) % N_ITEMS, np.array([7])):
        assert np.array_equal(loaded.scores(recent), scorer.scores(recent))


def test_source_excludes_and_keeps_contract(scorer: SequenceScorer) -> None:
    recent = np.array([5, 6, 7])
    items, scores = sequence_next(scorer, recent, budget=10)
    assert items.dtype == np.int32 and scores.dtype == np.float32
    assert len(items) == 10 and np.all(np.diff(scores) <= 0)
    exclude = as_mask(items[:3], N_ITEMS)
    items2, _ = sequence_next(scorer, recent, budget=10, exclude=exclude)
    assert len(items2) == 10
    assert not np.isin(items2, items[:3]).any()
    assert np.array_equal(items2[:7], items[3:])
    empty, _ = sequence_next(scorer, np.array([PAD, N_ITEMS + 1]), budget=10)  # nothing the model knows
    assert len(empty) == 0


def test_a_position_never_sees_later_titles(model: SequenceModel) -> None:
    import torch

    rng = np.random.default_rng(4)
    seqs = rng.integers(0, N_ITEMS, (8, MAX_LEN))
    changed = seqs.copy()
    changed[:, 6:] = rng.integers(0, N_ITEMS, (8, MAX_LEN - 6))
    with torch.no_grad():
        before = model.network.hidden(torch.as_tensor(seqs))
        after = model.network.hidden(torch.as_tensor(changed))
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.equal(before[:, 6:], after[:, 6:])
