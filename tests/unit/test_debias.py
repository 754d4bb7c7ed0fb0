"""Where training's debiasing choice lives: not in the config it was given, but in the fit's result and the
bundle manifest (``metrics.ranker.debias``), from which the loader applies it; bundles from before the choice
(and with parameters since dropped) still load as they were trained."""

from __future__ import annotations

import dataclasses

from models.config import TwoStageConfig, config_from_params
from models.debias import DebiasChoice, chosen_in


def test_the_manifest_record_of_a_choice_reads_back() -> None:
    choice = DebiasChoice(beta=0.1, cap=0.15, prices=None, table=[{"beta": 0.1, "cap": 0.15, "ndcg@10": 0.2,
                                                                  "top_share": 0.3}])
    record = choice.report(tuned=True, tolerance=0.1)
    assert record == {"tuned": True, "tolerance": 0.1, "beta": 0.1, "cap": 0.15, "grid": choice.table}
    assert chosen_in({"ranker": {"debias": record}}) == (0.1, 0.15)
    # Bundles trained before the per-run choice: stage 3 runs with their params as they are.
    assert chosen_in({}) is None
    assert chosen_in({"ranker": {"valid_ndcg@10": 0.2}}) is None


def test_with_debiasing_changes_only_the_two_chosen_values() -> None:
    given = TwoStageConfig(dim=8)
    applied = given.with_debiasing(0.35, 0.2)
    assert applied.post.popularity_correction == 0.35 and applied.exposure_cap == 0.2
    assert given.post.popularity_correction == 0.2 and given.exposure_cap == 0.15, "the given config is kept"
    assert dataclasses.replace(applied, exposure_cap=given.exposure_cap, post=given.post) == given


def test_params_of_older_bundles_still_load() -> None:
    # ranker_requests_per_user was a training parameter until it was dropped (it only ever ran at 1).
    params = {**dataclasses.asdict(TwoStageConfig(dim=8)), "ranker_requests_per_user": 1}
    assert config_from_params(params) == TwoStageConfig(dim=8)
