"""The registry of systems the ``eval`` command knows: name -> factory(train log, context) -> fitted recommender.

Other systems (matrix factorisation, the two-stage recommender) plug in by adding a factory with
the same signature; see ``streamrec.commands.evaluate.system_factories``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from models.dataset import EventLog
from models.eval.baselines import EASE, EASE_LAMBDAS, ItemKNN, Popularity, RandomScores, select_ease_lambda
from models.eval.protocol import EvalContext, Recommender, SystemFactory

DEFAULT_SYSTEMS: Final[tuple[str, ...]] = ("popularity", "itemknn", "ease")


def popularity(train: EventLog, context: EvalContext) -> Recommender:
    return Popularity().fit(train)


def itemknn(train: EventLog, context: EvalContext) -> Recommender:
    return ItemKNN(neighbours=100).fit(train)


def random_scores(train: EventLog, context: EvalContext) -> Recommender:
    return RandomScores(seed=context.seed).fit(train)


def ease_factory(lambdas: Sequence[float] = EASE_LAMBDAS) -> SystemFactory:
    """EASE with λ chosen by validation NDCG@10 on the training part (one λ: no search)."""

    def ease(train: EventLog, context: EvalContext) -> Recommender:
        if len(lambdas) == 1:
            return EASE(lambdas[0]).fit(train)
        best, by_lambda = select_ease_lambda(context.validation(), lambdas, progress=context.progress)
        model = EASE(best).fit(train)
        model.extra["validation_ndcg@10"] = by_lambda
        return model

    return ease


BASELINES: Final[dict[str, SystemFactory]] = {
    "popularity": popularity,
    "itemknn": itemknn,
    "ease": ease_factory(),
    "random": random_scores,  # not in DEFAULT_SYSTEMS: a floor for sanity checks
}
