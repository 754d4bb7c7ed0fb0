"""The ranker's input for one set of (user, candidate) pairs: three aligned arrays.

Produced by the feature code (``models.features``) offline and online, consumed by the Wide & Deep
ranker (``models.ranker``) in PyTorch and ONNX Runtime. Row ``r`` of every array is candidate ``r``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class FeatureLayout:
    """Names and sizes of the columns; stored in the bundle so the server builds the same rows."""

    dense_names: tuple[str, ...]  # float features, already scaled to roughly unit range
    wide_names: tuple[str, ...]  # crossed sparse features, each hashed into [0, wide_buckets)
    wide_buckets: int
    cat_names: tuple[str, ...]  # categorical ids for the deep part's embeddings
    cat_cardinalities: tuple[int, ...]  # id range of each categorical column (0 = unknown)

    def to_dict(self) -> dict[str, object]:
        return {"dense_names": list(self.dense_names), "wide_names": list(self.wide_names),
                "wide_buckets": self.wide_buckets, "cat_names": list(self.cat_names),
                "cat_cardinalities": list(self.cat_cardinalities)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureLayout:
        return cls(tuple(data["dense_names"]), tuple(data["wide_names"]), int(data["wide_buckets"]),  # type: ignore[arg-type]
                   tuple(data["cat_names"]), tuple(data["cat_cardinalities"]))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    dense: NDArray[np.float32]  # (n, len(dense_names))
    wide: NDArray[np.int64]  # (n, len(wide_names)), values in [0, wide_buckets)
    cats: NDArray[np.int64]  # (n, len(cat_names)), column j in [0, cat_cardinalities[j])

    def __len__(self) -> int:
        return self.dense.shape[0]

    def take(self, rows: NDArray[np.int64]) -> FeatureBatch:
        return FeatureBatch(self.dense[rows], self.wide[rows], self.cats[rows])

    @staticmethod
    def concat(batches: list[FeatureBatch]) -> FeatureBatch:
        return FeatureBatch(np.concatenate([b.dense for b in batches]), np.concatenate([b.wide for b in batches]),
                            np.concatenate([b.cats for b in batches]))
