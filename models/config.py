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
    # Negatives kept per request and epoch (models.ranker.train); 0: every candidate (best on validation: the
    # listwise loss learns the order among the hard negatives retrieval brings, not just against random ones).
    ranker_negatives: int = 0
    item_item_lambda: float = 1000.0  # EASE's λ of the item-to-item source (models.item_item)
    item_item_top_k: int = 400  # neighbours kept per title
    item_item_max_items: int = 6000  # titles the dense solve covers (the most interacted); 0: no such source
    sequence_epochs: int = 40  # the next-title sequence model (models.sequence); 0: no such model
    sequence_dim: int = 64
    sequence_max_len: int = 20  # its input: the user's last N distinct positive titles
    # The largest share of the training requests' top 10s any one title may take (models.exposure); 0: no cap.
    exposure_cap: float = 0.15
    # Training picks post.popularity_correction and exposure_cap itself (models.debias): the strongest pair
    # whose validation NDCG@10 is within this share of the best; None: use the two as given. The config keeps
    # the values given either way; the choice is the fit's result (``TwoStageModel.debias``, the manifest's
    # ``metrics.ranker.debias``), applied by :meth:`with_debiasing` where stage 3 runs.
    debias_tolerance: float | None = 0.1
    post: PostConfig = field(default_factory=PostConfig)

    def with_debiasing(self, beta: float, cap: float) -> TwoStageConfig:
        """This config as stage 3 runs it once training chose the popularity correction ``beta`` and the
        exposure ``cap`` (the prices that enforce the cap travel apart, in the bundle's exposure file)."""
        return dataclasses.replace(self, exposure_cap=cap,
                                   post=dataclasses.replace(self.post, popularity_correction=beta))


def config_from_params(params: dict[str, Any]) -> TwoStageConfig:
    fields = {f.name for f in dataclasses.fields(TwoStageConfig)}
    values = {k: v for k, v in params.items() if k in fields}
    if isinstance(values.get("candidates"), dict):
        values["candidates"] = CandidateConfig(**values["candidates"])
    if isinstance(values.get("post"), dict):
        values["post"] = PostConfig(**values["post"])
    return TwoStageConfig(**values)
