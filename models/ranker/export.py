"""Export a ``WideAndDeep`` to ONE self-contained ``.onnx`` file with a dynamic batch dimension.

Exporter choice (torch 2.13, measured on the 2-core dev box, model of ``tests/unit/test_ranker.py``):

- ``dynamo=True`` (the default here and torch's default since 2.9; needs ``onnxscript``): traces with
  ``torch.export``, writes opset 20 and, left to itself, puts the weights in a side ``.onnx.data``
  file. ~1.3 s per export once warm, ~12 s for the first export in a process (imports and op
  registration). Chosen because the TorchScript exporter is deprecated in 2.13 and slated for removal.
- ``dynamo=False`` (legacy TorchScript exporter): ~0.3 s, single file; kept as a fallback for
  environments without ``onnxscript``. Both give the same graph shape and pass the same parity test.

Either way the file is made self-contained the same way: export into a private temporary directory,
``onnx.load(..., load_external_data=True)`` (a no-op when everything is inline), add the metadata,
``onnx.checker.check_model(full_check=True)``, ``onnx.save(..., save_as_external_data=False)`` and
an atomic rename onto ``path``. Nothing is ever written beside ``path``. (Models over 2 GiB could not
be inlined, but this one is a few MB.)

The file carries, in ``metadata_props``, everything the server needs beside it: the ``FeatureLayout``
(``streamrec.layout``, JSON), the module config, the opset and what the output means.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import torch

from models.features.batch import FeatureBatch, FeatureLayout
from models.ranker.model import INPUT_NAMES, OUTPUT_NAME, WideAndDeep, torch_scores
from models.ranker.scorer import RankerSession

OPSET: Final[int] = 20  # pinned so a torch upgrade cannot silently change the served graph
META_LAYOUT: Final[str] = "streamrec.layout"
META_CONFIG: Final[str] = "streamrec.model_config"
META_SCORE: Final[str] = "streamrec.score"
META_OPSET: Final[str] = "streamrec.opset"
META_EXPORTER: Final[str] = "streamrec.exporter"
SCORE_MEANING: Final[str] = ("logit of the Wide & Deep ranker, float32 (n,); higher ranks first; no sigmoid applied "
                             "(monotone, so the order is the same)")


def _example_inputs(layout: FeatureLayout, n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # n = 3, not 1: torch.export specialises dimensions of size 0 and 1, which would pin the batch.
    return (torch.zeros(n, len(layout.dense_names), dtype=torch.float32),
            torch.zeros(n, len(layout.wide_names), dtype=torch.int64),
            torch.zeros(n, len(layout.cat_names), dtype=torch.int64))


def _export_raw(model: WideAndDeep, layout: FeatureLayout, out: Path, dynamo: bool) -> None:
    args = _example_inputs(layout)
    # The dynamo exporter logs (logging, not warnings) that optional torchvision ops are not
    # registered, and its graph optimiser (onnxscript, onnx_ir) logs every pass at INFO ("Removed 45
    # unused nodes", a dozen lines per export in the demo's output); irrelevant here, so quiet those
    # loggers for the duration of the export.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        _export_quietly(model, args, out, dynamo)
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.setLevel(level)


def _export_quietly(model: WideAndDeep, args: tuple[torch.Tensor, ...], out: Path, dynamo: bool) -> None:
    with warnings.catch_warnings():
        # Exporter-internal notices that say nothing about this model (and that the test suite's
        # "warnings are errors" setting would otherwise turn into failures).
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*The feature will be removed.*", category=DeprecationWarning)
        if dynamo:
            batch_dim = {0: "batch"}
            torch.onnx.export(model, args, str(out), dynamo=True, external_data=False, verbose=False,
                              opset_version=OPSET, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_shapes={name: batch_dim for name in INPUT_NAMES})
        else:
            torch.onnx.export(model, args, str(out), dynamo=False, opset_version=OPSET,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)})


def export_onnx(model: WideAndDeep, layout: FeatureLayout, path: str | os.PathLike[str], *,
                dynamo: bool = True) -> Path:
    """Write ``model`` (in eval mode) to the single file ``path``; returns ``path``.

    Inputs ``dense`` float32 (batch, d), ``wide`` int64 (batch, w), ``cats`` int64 (batch, c); output
    ``score`` float32 (batch,). The batch dimension is dynamic (``"batch"``).
    """
    if layout != model.layout:
        raise ValueError("export_onnx: the layout differs from the one the model was built for")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()  # dropout off; the exported graph is the inference graph
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ranker-export-") as tmp:
            raw = Path(tmp) / "model.onnx"
            _export_raw(model, layout, raw, dynamo)
            proto = onnx.load(str(raw), load_external_data=True)  # inlines a side .onnx.data if one was written
            del proto.metadata_props[:]
            for key, value in ((META_LAYOUT, json.dumps(layout.to_dict())), (META_CONFIG, json.dumps(model.config())),
                               (META_SCORE, SCORE_MEANING), (META_OPSET, str(OPSET)),
                               (META_EXPORTER, f"torch {torch.__version__} {'dynamo' if dynamo else 'torchscript'}")):
                proto.metadata_props.add(key=key, value=value)
            onnx.checker.check_model(proto, full_check=True)
            final = Path(tmp) / "final.onnx"
            onnx.save(proto, str(final), save_as_external_data=False)
            os.replace(final, path)  # same filesystem (tmp is under path.parent): atomic
    finally:
        model.train(was_training)
    return path


def read_layout(path_or_bytes: str | os.PathLike[str] | bytes) -> FeatureLayout:
    """The ``FeatureLayout`` stored in an exported ranker (reads the protobuf; no ORT session)."""
    proto = (onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, bytes)
             else onnx.load(str(path_or_bytes), load_external_data=False))
    meta = {p.key: p.value for p in proto.metadata_props}
    return FeatureLayout.from_dict(json.loads(meta[META_LAYOUT]))


def parity_max_abs_diff(model: WideAndDeep, path_or_bytes: str | os.PathLike[str] | bytes,
                        batch: FeatureBatch) -> float:
    """max |torch - onnxruntime| over ``batch``: the export check the bundle writer and tests run."""

    expected = torch_scores(model, batch)
    got = RankerSession(path_or_bytes).score(batch)
    return float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64)), initial=0.0))
