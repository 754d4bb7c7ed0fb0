"""The parameters of the two-stage model (retrieval budgets, ranker training, post-processing).

Kept apart from the code that fits and serves the model so that training, the bundle loader and the
recommend pipeline can all read them without importing one another.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from models.candidates import CandidateConfig
from models.postprocess import PostConfig


@dataclass(frozen=True)
class TwoStageConfig:
    dim: int = 64
    seed: int = 0
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rank_users: int = 2000  # users whose split point becomes a ranker training request (at most)
    valid_share: float = 0.15  # of those requests, held out for early stopping
    ranker_epochs: int = 12
    ranker_loss: str = "listwise"
    post: PostConfig = field(default_factory=PostConfig)


def config_from_params(params: dict[str, Any]) -> TwoStageConfig:
    fields = {f.name for f in dataclasses.fields(TwoStageConfig)}
    values = {k: v for k, v in params.items() if k in fields}
    if isinstance(values.get("candidates"), dict):
        values["candidates"] = CandidateConfig(**values["candidates"])
    if isinstance(values.get("post"), dict):
        values["post"] = PostConfig(**values["post"])
    return TwoStageConfig(**values)
