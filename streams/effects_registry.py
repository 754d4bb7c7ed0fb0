"""The worker's effects, listed explicitly and in order: what a batch of each topic changes in the online state.

Each entry names an effect and its factory (``make_effect(ctx) -> Effect | None``; ``None``: it does not apply
in this deployment, e.g. the vectors without a bundle). A module that fails to import fails this module's
import, and a factory that raises stops the worker's start-up with :class:`EffectBuildError` naming the effect:
an effect is never silently left out. To add one, write it (:mod:`streams.effects`) and list it here; the
contract suite (``tests/unit/test_effect_contract.py``) then checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from streams import experiments, features, item_vectors, session, trending, user_vectors
from streams.effects import Effect, EffectContext, EffectFactory


@dataclass(frozen=True, slots=True)
class NamedFactory:
    name: str
    build: EffectFactory
    # Effects whose state this one reads (its results depend on them running in the same worker).
    reads_state_of: tuple[str, ...] = ()


# Interaction batches; their writes are queued into the MULTI in this order.
INTERACTION_EFFECTS: Final[tuple[NamedFactory, ...]] = (
    NamedFactory("features", features.make_effect),
    NamedFactory("trending", trending.make_effect),
    NamedFactory("session", session.make_effect),
    NamedFactory("user_vectors", user_vectors.make_effect),
    NamedFactory("item_learning", item_vectors.make_effect, reads_state_of=("user_vectors",)),
    NamedFactory("experiments", experiments.make_effect),
)
# ``streamrec worker --features-only``.
FEATURES_ONLY: Final = INTERACTION_EFFECTS[:1]

# Catalogue batches (of the partitions this worker owns: once per record cluster-wide).
CATALOG_EFFECTS: Final[tuple[NamedFactory, ...]] = (
    NamedFactory("new_releases", trending.make_catalog_effect),
    NamedFactory("item_vectors", item_vectors.make_catalog_effect),
)


class EffectBuildError(RuntimeError):
    """An effect's factory failed: the worker does not start without it."""


def build_effects(factories: Sequence[NamedFactory], ctx: EffectContext) -> list[Effect[Any]]:
    """Every effect of ``factories`` that applies in ``ctx``, in order; :class:`EffectBuildError` when one
    fails to build."""
    effects: list[Effect[Any]] = []
    for factory in factories:
        try:
            effect = factory.build(ctx)
        except Exception as exc:
            raise EffectBuildError(f"the worker's effect {factory.name!r} failed to build: {exc!r}") from exc
        if effect is not None:
            effects.append(effect)
    return effects
