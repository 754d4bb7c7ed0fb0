"""A next-title model from the order of a user's recent positive titles: training, ONNX export, serving.

Input: the user's last ``max_len`` distinct positive titles (item indices, most recent last, left-padded
with :data:`PAD`), i.e. what :func:`models.candidates.recent_positives` returns and what the workers keep
in ``UserStates.recent_item`` as item hashes (``spec.RECENT_ITEMS`` = 20, hence the default ``max_len``). Output of the
exported graph: ``user_state`` float32 (batch, dim), the sequence's last hidden state. A title's score is
``user_state · item_embeddings[title]``, done in numpy over the catalogue (:class:`SequenceScorer`), so the
graph stays small and the scoring table is an array the caller can slice or grow.

Architecture: SASRec-style (item embedding + learned positions + causal pre-LayerNorm transformer blocks,
output table tied to the input embedding) rather than a GRU. At serving time both cost about one ONNX
Runtime call for 20 steps of width 64, but the transformer is a handful of batched MatMul/Softmax nodes with
no step-by-step recurrence, and training computes every position at once instead of backpropagating
through 20 dependent GRU steps of tiny matrices, which is what is slow on CPU (not measured here).
Unknown titles (``< 0`` or ``>= n_items``, e.g. added to the catalogue after training) are read as padding
inside the graph, so a grown catalogue never breaks a request.

Loss: sampled softmax over the true next title and ``negatives`` titles shared by the mini-batch, drawn
``∝ count ** neg_power`` (``count``: how often a title is a training target). Softmax rather than BCE with a
few negatives: it ranks the next title against many at once, which is the retrieval task, and BCE with few
negatives is known to over-rank popular titles. With the log-Q correction (``logq=True``, default) ``log q``
is subtracted from every logit, so the loss estimates the full softmax over the catalogue and the score is
the next-title logit. With ``logq=False`` the learned score is that logit *minus* ``≈ neg_power · log
count``: popular titles, sampled as negatives more often, are pushed down (a popularity correction, issue
13 item 3). On ml-latest-small the corrected default retrieves more (candidate recall@200 0.26 vs 0.17,
``benchmarks/bench_sequence.py``), so the debiased variant is left to the ranker's features to weigh.

Training is deterministic on CPU for the same data, seed and ``threads`` (torch RNG forked, numpy
generator seeded). torch is imported on first use only: the serving half (:class:`SequenceScorer`,
:func:`sequence_next`) needs onnxruntime and numpy, like :class:`models.ranker.RankerSession`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.candidates import Histories, ItemMask, recent_positives, top_k
from models.ranker.scorer import session_options

if TYPE_CHECKING:
    import torch

PAD: Final = -1  # left padding of ``item_seq`` (any index outside [0, n_items) is read the same way)
OPSET: Final = 20  # as the ranker: pinned so a torch upgrade cannot silently change the served graph
INPUT_NAME: Final = "item_seq"
OUTPUT_NAME: Final = "user_state"
ONNX_FILE: Final = "sequence.onnx"
ARRAYS_FILE: Final = "sequence.npz"
META_CONFIG: Final = "streamrec.sequence_config"


@dataclass(frozen=True, slots=True)
class SequenceEpoch:
    epoch: int  # 1-based
    loss: float  # mean sampled-softmax loss over the epoch's mini-batches
    positions: int  # next-title predictions trained on this epoch
    seconds: float


# --- training data ---------------------------------------------------------------------------------


def positive_sequences(histories: Histories) -> list[NDArray[np.int32]]:
    """Every user's distinct positive titles, oldest first, as ``recent_positives`` orders them at serving."""
    return [recent_positives(*histories.of(u))[0] for u in range(len(histories.ptr) - 1)]


def training_windows(sequences: Sequence[NDArray[np.integer]], max_len: int) -> NDArray[np.int64]:
    """(windows, max_len + 1) slices of the sequences, left-padded with ``PAD``; inputs ``[:, :-1]``, targets
    ``[:, 1:]``. Windows are cut from the end of each sequence every ``max_len`` titles, so every transition
    is a target exactly once and the most recent ones see the longest context."""
    lens = np.array([len(s) for s in sequences], np.int64)
    flat = (np.concatenate([np.asarray(s, np.int64) for s in sequences]) if len(sequences)
            else np.zeros(0, np.int64))
    starts = np.cumsum(lens) - lens
    per_user = np.where(lens >= 2, -(-(lens - 1) // max_len), 0)
    user = np.repeat(np.arange(len(lens)), per_user)
    k = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    end = starts[user] + lens[user] - k * max_len  # exclusive end of the window in ``flat``
    idx = end[:, None] - (max_len + 1) + np.arange(max_len + 1)[None, :]
    inside = idx >= starts[user][:, None]
    return np.where(inside, flat[np.clip(idx, 0, None)] if len(flat) else PAD, PAD).astype(np.int64)


# --- the network (torch, imported on first use) -------------------------------------------------------


@cache
def _network_class() -> type:
    """The torch module class, defined on first use so that importing this module needs no torch."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, dropout: float) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
            self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, n, d / heads)
            att = (q @ k.transpose(-1, -2)) * (d // self.heads) ** -0.5
            att = torch.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1)
            x = x + self.drop(self.out((self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)))
            return x + self.drop(self.ffn(self.norm2(x)))

    class SASRec(nn.Module):
        def __init__(self, n_items: int, dim: int, max_len: int, blocks: int, heads: int, dropout: float) -> None:
            super().__init__()
            self.n_items, self.dim, self.max_len = n_items, dim, max_len
            self.items = nn.Embedding(n_items + 1, dim, padding_idx=n_items)  # the last row: padding
            self.positions = nn.Embedding(max_len, dim)
            nn.init.normal_(self.items.weight, std=dim ** -0.5)
            with torch.no_grad():
                self.items.weight[n_items].zero_()
            self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
            self.norm = nn.LayerNorm(dim)
            self.drop = nn.Dropout(dropout)
            self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)), persistent=False)
            self.register_buffer("diagonal", torch.eye(max_len, dtype=torch.bool), persistent=False)
            self.register_buffer("position_ids", torch.arange(max_len), persistent=False)

        def hidden(self, seq: torch.Tensor) -> torch.Tensor:
            """(batch, max_len, dim) hidden states; position j sees titles 0..j."""
            valid = (seq >= 0) & (seq < self.n_items)
            idx = torch.where(valid, seq, torch.full_like(seq, self.n_items))
            keep = valid.unsqueeze(-1).to(torch.float32)
            x = self.drop(self.items(idx) * self.dim ** 0.5 + self.positions(self.position_ids)) * keep
            # Padded keys are hidden; every position may see itself, so no row is all -inf (no NaN).
            allowed = (self.causal & valid[:, None, None, :]) | self.diagonal
            for block in self.blocks:
                x = block(x, allowed) * keep
            return self.norm(x)

        def forward(self, seq: torch.Tensor) -> torch.Tensor:
            return self.hidden(seq)[:, -1]

    return SASRec


# --- the trained model ----------------------------------------------------------------------------


@dataclass
class SequenceModel:
    """A trained network (eval mode) and what the scorer needs beside it."""

    network: Any  # the torch module of ``_network_class()``
    known: NDArray[np.bool_]  # titles that were a training target (the others score -inf)
    config: dict[str, Any]
    history: list[SequenceEpoch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def item_embeddings(self) -> NDArray[np.float32]:
        return self.network.items.weight.detach()[: self.network.n_items].numpy().astype(np.float32, copy=True)

    def user_states(self, item_seq: NDArray[np.integer]) -> NDArray[np.float32]:
        """PyTorch's ``user_state`` for (batch, max_len) sequences: the reference the export is checked against."""
        import torch

        self.network.eval()
        with torch.no_grad():
            return self.network(torch.as_tensor(np.asarray(item_seq, np.int64))).numpy()

    def to_scorer(self, *, dynamo: bool = True) -> SequenceScorer:
        return SequenceScorer(export_onnx(self, dynamo=dynamo), self.item_embeddings, self.known)


def train_sequence_model(
    histories: Histories | Sequence[NDArray[np.integer]],
    n_items: int,
    *,
    dim: int = 64,
    max_len: int = 20,
    epochs: int = 40,
    seed: int = 0,
    progress: Callable[[SequenceEpoch], None] | None = None,
    blocks: int = 2,
    heads: int = 1,
    dropout: float = 0.2,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    negatives: int = 256,
    neg_power: float = 0.75,
    logq: bool = True,
    threads: int = 1,
) -> SequenceModel:
    """Train on next-title prediction over ``histories`` (a :class:`Histories`, read through
    :func:`positive_sequences`, or per-user title sequences, oldest first). ``batch_size`` counts windows of
    ``max_len`` titles; see the module docstring for the loss and its knobs. ``threads``: torch intra-op
    threads while training (restored after); 1 by default because on the shared 2-core box a second
    thread made an epoch 10x slower whenever another process held a core (its OpenMP workers wait on
    each other), for at most 2x when the box is idle."""
    import torch
    import torch.nn.functional as F

    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    started = time.perf_counter()
    sequences = positive_sequences(histories) if isinstance(histories, Histories) else list(histories)
    windows = training_windows(sequences, max_len)
    if not len(windows):
        raise ValueError("train_sequence_model: no user has two positive titles")
    targets_all = windows[:, 1:]
    counts = np.bincount(targets_all[windows[:, :-1] >= 0], minlength=n_items)[:n_items].astype(np.float64)
    q = counts ** neg_power * (counts > 0)
    q /= q.sum()
    log_q = torch.from_numpy(np.log(np.maximum(q, 1e-30)).astype(np.float32))
    config = {"n_items": n_items, "dim": dim, "max_len": max_len, "blocks": blocks, "heads": heads,
              "dropout": dropout, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
              "negatives": negatives, "neg_power": neg_power, "logq": logq, "seed": seed}
    rng = np.random.default_rng(seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    history: list[SequenceEpoch] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _network_class()(n_items, dim, max_len, blocks, heads, dropout)
            optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
            windows_t = torch.from_numpy(windows)
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                network.train()
                order = torch.from_numpy(rng.permutation(len(windows)))
                total, n_batches, n_positions = 0.0, 0, 0
                for lo in range(0, len(order), batch_size):
                    batch = windows_t[order[lo:lo + batch_size]]
                    inputs, targets = batch[:, :-1], batch[:, 1:]
                    trained = inputs >= 0  # a target with an empty context is not a prediction
                    h = network.hidden(inputs)[trained]
                    tgt = targets[trained]
                    neg = torch.from_numpy(rng.choice(n_items, size=negatives, p=q))
                    table = network.items.weight
                    pos_logit = (h * table[tgt]).sum(-1, keepdim=True)
                    neg_logit = (h @ table[neg].T).masked_fill(neg[None, :] == tgt[:, None], float("-inf"))
                    if logq:
                        pos_logit = pos_logit - log_q[tgt][:, None]
                        neg_logit = neg_logit - log_q[neg][None, :]
                    logits = torch.cat([pos_logit, neg_logit], dim=1)
                    loss = F.cross_entropy(logits, torch.zeros(len(tgt), dtype=torch.int64))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach())
                    n_batches += 1
                    n_positions += len(tgt)
                stats = SequenceEpoch(epoch, total / max(n_batches, 1), n_positions, time.perf_counter() - t0)
                history.append(stats)
                if progress is not None:
                    progress(stats)
    finally:
        torch.set_num_threads(previous_threads)
    network.eval()
    return SequenceModel(network, counts > 0, config, history, time.perf_counter() - started)


# --- export --------------------------------------------------------------------------------------


def _export_raw(network: Any, example: tuple[torch.Tensor, ...], dynamo: bool) -> Any:
    import onnx
    import torch

    with tempfile.TemporaryDirectory(prefix=".sequence-export-") as tmp, warnings.catch_warnings():
        # Exporter notices that say nothing about this model (the tests run with warnings as errors).
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*", category=UserWarning)
        # The TorchScript tracer's notices (e.g. a tensor's truth value read while tracing the padding mask):
        # under warnings-as-errors they abort the trace; the parity check judges the exported graph instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        raw = Path(tmp) / "raw.onnx"
        if dynamo:
            torch.onnx.export(network, example, str(raw), dynamo=True, external_data=False, verbose=False,
                              opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={"seq": {0: "batch"}})
        else:
            torch.onnx.export(network, example, str(raw), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return onnx.load(str(raw), load_external_data=True)  # inlines a side .onnx.data if one was written


def export_onnx(model: SequenceModel, *, dynamo: bool = True) -> bytes:
    """The network as one self-contained ONNX model (``item_seq`` int64 (batch, max_len) → ``user_state``
    float32 (batch, dim), batch dynamic), made as :func:`models.ranker.export.export_onnx` makes the ranker's."""
    import onnx
    import torch

    network = model.network
    network.eval()
    # batch 3, not 1: torch.export specialises dimensions of size 0 and 1, which would pin the batch.
    example = (torch.full((3, network.max_len), PAD, dtype=torch.int64),)
    # As the ranker's export: the dynamo exporter and its optimiser log (logging, not warnings) about
    # torchvision ops and every graph pass; irrelevant here, so quiet them for the duration.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        proto = _export_raw(network, example, dynamo)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    del proto.metadata_props[:]
    for key, value in ((META_CONFIG, json.dumps(model.config)), ("streamrec.opset", str(OPSET)),
                       ("streamrec.exporter", f"torch {torch.__version__} {'dynamo' if dynamo else 'torchscript'}")):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def sequence_parity(model: SequenceModel, scorer: SequenceScorer, histories: Histories | None = None,
                    n_users: int = 256) -> float:
    """max |PyTorch - ONNX Runtime| of ``user_state`` over (up to) ``n_users`` users' real inputs (their last
    ``max_len`` positive titles), padding-only rows included: the export check training records."""
    max_len = scorer.max_len
    rows = [np.full(max_len, PAD, np.int64)]
    if histories is not None:
        rows += [scorer.encode(seq)[0] for seq in positive_sequences(histories)[:n_users]]
    batch = np.stack(rows)
    expected = model.user_states(batch).astype(np.float64)
    return float(np.max(np.abs(expected - scorer.user_states(batch).astype(np.float64)), initial=0.0))


# --- serving -------------------------------------------------------------------------------------


class SequenceScorer:
    """An exported sequence model and its item table; ``scores(recent_items)`` over the catalogue.

    One ONNX Runtime session with the ranker's options (one thread, no spinning: see
    :mod:`models.ranker.scorer`), then one (n_items, dim) × (dim,) product in numpy.
    """

    def __init__(self, onnx_model: bytes, item_embeddings: NDArray[np.floating], known: NDArray[np.bool_],
                 intra_op_threads: int = 1) -> None:
        self.onnx_model = onnx_model
        self.session = ort.InferenceSession(onnx_model, sess_options=session_options(intra_op_threads, 1),
                                            providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ValueError("not a streamrec sequence model")
        self.max_len = int(inputs[0].shape[1])
        self.item_embeddings = np.ascontiguousarray(item_embeddings, np.float32)
        self.known = np.asarray(known, bool)
        if self.known.shape != (len(self.item_embeddings),):
            raise ValueError("known must have one flag per row of item_embeddings")
        self._unknown = np.flatnonzero(~self.known)
        self._output = [OUTPUT_NAME]

    @property
    def n_items(self) -> int:
        return len(self.item_embeddings)

    def encode(self, recent_items: NDArray[np.integer]) -> NDArray[np.int64]:
        """(1, max_len) input: the last ``max_len`` titles, left-padded with ``PAD``."""
        seq = np.full((1, self.max_len), PAD, np.int64)
        tail = np.asarray(recent_items, np.int64).ravel()[-self.max_len:]
        if len(tail):
            seq[0, -len(tail):] = tail
        return seq

    def user_states(self, item_seq: NDArray[np.integer]) -> NDArray[np.float32]:
        """ONNX Runtime's ``user_state`` for (batch, max_len) sequences."""
        return self.session.run(self._output, {INPUT_NAME: np.ascontiguousarray(item_seq, np.int64)})[0]

    def scores(self, recent_items: NDArray[np.integer]) -> NDArray[np.float32]:
        """float32 (n_items,) next-title scores; titles never trained on score -inf."""
        out = self.item_embeddings @ self.user_states(self.encode(recent_items))[0]
        out[self._unknown] = -np.inf
        return out

    def save(self, folder: str | os.PathLike[str]) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ONNX_FILE).write_bytes(self.onnx_model)
        np.savez(folder / ARRAYS_FILE, item_embeddings=self.item_embeddings, known=self.known)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], intra_op_threads: int = 1) -> SequenceScorer:
        folder = Path(folder)
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as arrays:
            return cls((folder / ONNX_FILE).read_bytes(), arrays["item_embeddings"], arrays["known"],
                       intra_op_threads)


def sequence_next(scorer: SequenceScorer, recent_items: NDArray[np.integer], budget: int,
                  exclude: ItemMask | None = None) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Candidate source: the ``budget`` likeliest next titles after ``recent_items`` (most recent last),
    best first, skipping ``exclude``; empty for a user with no title the model knows."""
    scores = sequence_scores(scorer, recent_items) if budget > 0 else None
    if scores is None:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return top_k(scores, budget, exclude)


def sequence_scores(scorer: SequenceScorer, recent_items: NDArray[np.integer]) -> NDArray[np.float32] | None:
    """Next-title scores over the catalogue after ``recent_items`` (most recent last; the last
    ``max_len`` count); ``None`` when no title of it is one the model knows (nothing to go on)."""
    recent = np.asarray(recent_items, np.int64).ravel()
    inside = recent[(recent >= 0) & (recent < scorer.n_items)]
    if not scorer.known[inside].any():
        return None
    return scorer.scores(recent)
