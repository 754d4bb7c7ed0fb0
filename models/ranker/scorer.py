"""Serving-side scoring of an exported ranker with ONNX Runtime.

Session options are chosen for a server that shares 2 cores with its event loop and other replicas:
- ``intra_op_num_threads=1``, ``inter_op_num_threads=1``, sequential execution: for ~1,000 rows the
  graph is a few small Gathers and three GEMMs; a thread pool's hand-offs cost more than they save,
  and extra threads would compete with the asyncio loop for the same two cores.
- ``session.intra_op.allow_spinning=0`` (and the inter-op one): idle pool threads sleep instead of
  busy-waiting, so a replica between requests does not burn a core that another replica needs.
- graph optimisation level ALL: constant folding and the Gemm/Relu fusions, done once at load.
- CPU provider only, named explicitly (some wheels list others, e.g. Azure, first).

``score`` calls ``InferenceSession.run`` with the batch's arrays as they are (zero-copy when dtypes
and layout already match). IO binding was not worth it: with 1,000 rows the inputs are ~100 KB and
``run`` wraps numpy arrays without copying; see ``benchmarks/bench_ranker.py`` for the overhead of
``score`` over the raw ``run`` floor.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.features.batch import FeatureBatch, FeatureLayout

_INPUTS = ("dense", "wide", "cats")
_OUTPUT = "score"
_META_LAYOUT = "streamrec.layout"  # same key as models.ranker.export.META_LAYOUT (not imported: no torch here)


def session_options(intra_op_threads: int = 1, inter_op_threads: int = 1) -> ort.SessionOptions:
    """The SessionOptions ``RankerSession`` uses (exposed so benchmarks measure the same thing)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: ORT's warnings would go to the server's stderr per load
    return opts


class RankerSession:
    """An exported ranker loaded for scoring; ``score(batch) -> float32 (n,)`` (higher ranks first).

    ``path`` is a ``.onnx`` file written by ``export_onnx`` or its bytes. The ``FeatureLayout`` stored in
    the file is checked against every batch's column counts, so a server built against a different
    feature layout fails loudly instead of scoring garbage.
    """

    def __init__(self, path: str | os.PathLike[str] | bytes, intra_op_threads: int = 1,
                 inter_op_threads: int = 1) -> None:
        source: str | bytes = path if isinstance(path, bytes) else os.fspath(path)
        self.session = ort.InferenceSession(source, sess_options=session_options(intra_op_threads, inter_op_threads),
                                            providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in self.session.get_inputs())
        if names != _INPUTS or [o.name for o in self.session.get_outputs()] != [_OUTPUT]:
            raise ValueError(f"not a streamrec ranker: inputs {names}, outputs "
                             f"{[o.name for o in self.session.get_outputs()]}")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        self.layout: FeatureLayout | None = (FeatureLayout.from_dict(json.loads(meta[_META_LAYOUT]))
                                             if _META_LAYOUT in meta else None)
        self._widths = (None if self.layout is None else
                        (len(self.layout.dense_names), len(self.layout.wide_names), len(self.layout.cat_names)))
        self._output = [_OUTPUT]

    def score(self, batch: FeatureBatch) -> NDArray[np.float32]:
        """One score per row of ``batch``, float32 (n,)."""
        n = len(batch)
        if n == 0:
            return np.zeros(0, np.float32)
        dense = np.ascontiguousarray(batch.dense, dtype=np.float32)
        wide = np.ascontiguousarray(batch.wide, dtype=np.int64)
        cats = np.ascontiguousarray(batch.cats, dtype=np.int64)
        if self._widths is not None and (dense.shape[1], wide.shape[1], cats.shape[1]) != self._widths:
            raise ValueError(f"batch columns (dense, wide, cats) = {(dense.shape[1], wide.shape[1], cats.shape[1])}, "
                             f"the ranker's layout has {self._widths}")
        if wide.shape[0] != n or cats.shape[0] != n:
            raise ValueError("batch arrays differ in row count")
        out = self.session.run(self._output, {"dense": dense, "wide": wide, "cats": cats})[0]
        return out.reshape(n)
