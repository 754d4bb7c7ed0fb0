"""The Wide & Deep ranker: PyTorch model and training, ONNX export, ONNX Runtime scoring.

``RankerSession`` (serving) needs only onnxruntime and numpy. The PyTorch side (``WideAndDeep``,
``train_ranker``, ``export_onnx``, ...) needs the ``train`` extra; it is imported on first use so
that ``from models.ranker import RankerSession`` works on a server without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.ranker.scorer import RankerSession, session_options

if TYPE_CHECKING:
    from models.ranker.export import OPSET, export_onnx, parity_max_abs_diff, read_layout
    from models.ranker.model import WideAndDeep, batch_tensors, torch_scores
    from models.ranker.train import (
        EpochStats,
        TrainHistory,
        grouped_ndcg,
        synthetic_examples,
        synthetic_layout,
        train_ranker,
    )

_LAZY: dict[str, str] = {
    "WideAndDeep": "models.ranker.model", "batch_tensors": "models.ranker.model", "torch_scores": "models.ranker.model",
    "OPSET": "models.ranker.export", "export_onnx": "models.ranker.export", "read_layout": "models.ranker.export",
    "parity_max_abs_diff": "models.ranker.export",
    "train_ranker": "models.ranker.train", "TrainHistory": "models.ranker.train", "EpochStats": "models.ranker.train",
    "grouped_ndcg": "models.ranker.train", "synthetic_layout": "models.ranker.train",
    "synthetic_examples": "models.ranker.train",
}

__all__ = ["OPSET", "EpochStats", "RankerSession", "TrainHistory", "WideAndDeep", "batch_tensors", "export_onnx",
           "grouped_ndcg", "parity_max_abs_diff", "read_layout", "session_options", "synthetic_examples",
           "synthetic_layout", "torch_scores", "train_ranker"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
