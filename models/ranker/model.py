"""The Wide & Deep ranker (PyTorch): one logit per (user, candidate) row of a ``FeatureBatch``.

- Wide: a learned weight per hashed crossed-feature bucket (user×genre, item×context, co-watch
  "watched X also watched Y", ...), summed over the ``w`` wide columns. Written as
  ``nn.Embedding(wide_buckets, 1)`` gathered and summed rather than ``nn.EmbeddingBag`` because a
  plain gather + ReduceSum is what every ONNX exporter and ONNX Runtime handle cleanly.
- Deep: a ``nn.Embedding(card_j, emb_dim)`` per categorical column, concatenated with the dense
  features, through an MLP (Linear → ReLU → Dropout per hidden layer) to one logit.
- Output: ``wide + deep + bias``, shape ``(n,)``, float32. The score *is* the logit: ranking only needs
  a monotone score, so no sigmoid is exported. After ``loss="pointwise"`` training ``sigmoid(score)``
  estimates the engagement label; after ``loss="listwise"`` only differences of scores within one
  request mean anything (the softmax is shift-invariant).

Ids out of range (negative, or ``>= wide_buckets`` / ``>= cat_cardinalities[j]``) are mapped to id 0
inside the graph (the layout's "unknown" id for categorical columns; an arbitrary but fixed bucket for
wide columns). The feature code promises the range, but doing it in-graph means a bad id can never
make ONNX Runtime fail a Gather on the serving path: it costs two compares and a Where per input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from models.features.batch import FeatureBatch, FeatureLayout

INPUT_NAMES: tuple[str, str, str] = ("dense", "wide", "cats")
OUTPUT_NAME = "score"


def _in_range_or_zero(ids: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``ids`` where ``0 <= ids < upper`` (broadcast per column), else 0; keeps every Gather in bounds."""
    ok = (ids >= 0) & (ids < upper)
    return torch.where(ok, ids, 0)  # scalar 0: no Shape/Expand in the graph


class WideAndDeep(nn.Module):
    """Wide & Deep over a ``FeatureLayout``; ``forward(dense, wide, cats) -> (n,)`` logits."""

    def __init__(self, layout: FeatureLayout, emb_dim: int = 16, hidden: Sequence[int] = (128, 64),
                 dropout: float = 0.1) -> None:
        super().__init__()
        if len(layout.cat_names) != len(layout.cat_cardinalities):
            raise ValueError("layout: cat_names and cat_cardinalities differ in length")
        if layout.wide_buckets < 1 or any(c < 1 for c in layout.cat_cardinalities):
            raise ValueError("layout: wide_buckets and every cat cardinality must be >= 1")
        if not layout.dense_names and not layout.cat_names:
            raise ValueError("layout: the deep part needs at least one dense or categorical column")
        self.layout = layout
        self.emb_dim = emb_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = dropout
        self.n_dense = len(layout.dense_names)
        self.n_wide = len(layout.wide_names)
        self.n_cats = len(layout.cat_names)

        # Zero-initialised so that at step 0 the wide part adds nothing and the buckets a batch never
        # touches stay exactly 0 (they only move by weight decay, which leaves 0 at 0).
        self.wide = nn.Embedding(layout.wide_buckets, 1)
        nn.init.zeros_(self.wide.weight)
        self.embeddings = nn.ModuleList(nn.Embedding(card, emb_dim) for card in layout.cat_cardinalities)
        for emb in self.embeddings:
            # Small init (the torch default N(0, 1) makes the first layer's input huge next to the
            # unit-range dense features and slows the start of training).
            nn.init.normal_(emb.weight, std=0.05)

        layers: list[nn.Module] = []
        width = self.n_cats * emb_dim + self.n_dense
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(1))

        # Upper bounds for the in-graph id guard; buffers so they travel with the state dict and
        # become ONNX initialisers (int64, one per column, broadcast over rows).
        self.register_buffer("wide_upper", torch.tensor([layout.wide_buckets], dtype=torch.int64), persistent=False)
        self.register_buffer("cat_upper", torch.tensor(list(layout.cat_cardinalities) or [1], dtype=torch.int64),
                             persistent=False)

    def forward(self, dense: torch.Tensor, wide: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        # The column counts are fixed at construction, so these Python branches are resolved at
        # export time and leave no control flow in the graph.
        if self.n_wide:
            wide_ids = _in_range_or_zero(wide, self.wide_upper)
            wide_logit = self.wide(wide_ids).sum(dim=(1, 2))  # (n, w, 1) -> (n,)
        else:
            wide_logit = torch.zeros(dense.shape[0], dtype=dense.dtype, device=dense.device)
        parts: list[torch.Tensor] = []
        if self.n_cats:
            cat_ids = _in_range_or_zero(cats, self.cat_upper)
            parts += [emb(cat_ids[:, j]) for j, emb in enumerate(self.embeddings)]
        if self.n_dense:
            parts.append(dense)
        deep_logit = self.mlp(torch.cat(parts, dim=1)).squeeze(1)
        return wide_logit + deep_logit + self.bias

    def config(self) -> dict[str, object]:
        """What it takes to rebuild this module (beside the layout): stored next to the weights."""
        return {"emb_dim": self.emb_dim, "hidden": list(self.hidden), "dropout": self.dropout}


def batch_tensors(batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three model inputs as tensors sharing memory with the batch where dtypes already match."""
    return (torch.from_numpy(np.ascontiguousarray(batch.dense, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(batch.wide, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(batch.cats, dtype=np.int64)))


@torch.no_grad()
def torch_scores(model: WideAndDeep, batch: FeatureBatch) -> NDArray[np.float32]:
    """Eval-mode scores in PyTorch (the reference the ONNX parity test compares against)."""
    was_training = model.training
    model.eval()
    try:
        return model(*batch_tensors(batch)).numpy().astype(np.float32, copy=False)
    finally:
        model.train(was_training)
