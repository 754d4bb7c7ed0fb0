"""Evaluation systems backed by the trained models: ``mf`` (CF retrieval alone) and ``two_stage``.

Each is refitted on the split's training part with the parameters of the published bundle (when one
exists under ``--artifacts``), so that held-out events never leak into what is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.candidates import SOURCES
from models.cf import CFModel, fit_cf
from models.config import TwoStageConfig
from models.dataset import EventLog
from models.eval.protocol import EvalContext
from models.two_stage import TwoStageModel, TwoStageRecommender, fit_two_stage


@dataclass
class MFRecommender:
    cf: CFModel
    extra: dict[str, Any] = field(default_factory=dict)

    def scores(self, users: NDArray[np.int32]) -> NDArray[np.float32]:
        return (self.cf.user_vectors[users] @ self.cf.item_vectors.T).astype(np.float32)


def mf_system(config: TwoStageConfig) -> Any:
    def build(train: EventLog, ctx: EvalContext) -> MFRecommender:
        cf = fit_cf(train, dim=config.dim, seed=config.seed)
        return MFRecommender(cf, {"dim": config.dim, "algorithm": cf.algorithm})

    return build


class TwoStageSystem(TwoStageRecommender):
    """``TwoStageRecommender`` plus what the protocol reports: candidate lists and model metrics."""

    def __init__(self, model: TwoStageModel, log: EventLog) -> None:
        super().__init__(model, log)
        debias = model.metrics["ranker"].get("debias", {})
        self.extra = {"ranker_valid_ndcg@10": model.metrics["ranker"]["valid_ndcg@10"],
                      "ranker_rows": model.metrics["ranker"]["rows"],
                      "train_seconds": round(model.metrics["train_seconds"], 1),
                      # What this fit's stage 3 does against popularity (models.debias picks them per run):
                      # without them a report's top_title_share cannot be read.
                      "popularity_correction": float(debias.get("beta", model.config.post.popularity_correction)),
                      "exposure_cap": float(debias.get("cap", model.config.exposure_cap)),
                      "debias_tuned": bool(debias.get("tuned", False)),
                      "debias_grid": list(debias.get("grid", []))}  # every (β, cap) tried: the JSON only

    def candidates(self, users: NDArray[np.int32]) -> dict[str, list[NDArray[np.int32]]]:
        """Each source's candidates (after the merge's exclusions) and the merged set, per user."""
        out: dict[str, list[NDArray[np.int32]]] = {name: [] for name in (*SOURCES, "merged")}
        for cands in self.retrieve_all(users):
            for name, items in cands.by_source().items():
                out[name].append(items)
        return out


def two_stage_system(config: TwoStageConfig) -> Any:
    def build(train: EventLog, ctx: EvalContext) -> TwoStageSystem:
        model = fit_two_stage(train, config, progress=lambda message: ctx.progress(f"two_stage: {message}"))
        return TwoStageSystem(model, train)

    return build
