"""What ``streamrec experiments report`` reads: the experiment's configuration and its counts, from Redis.

The kind and the variants' weights (what the SRM check expects) come from the experiments document the servers
follow (:mod:`online_state.experiment_config`); the counts from the worker's exactly-once state
(:mod:`online_state.experiments`); the catalogue's size (for coverage) from the latest bundle.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from foundation.redis_io import redis_client
from foundation.settings import Settings
from models.bundle import open_bundle
from models.experiments.config import HOLDOUT_EXPERIMENT
from models.experiments.data import ExperimentData
from online_state.experiment_config import read_config
from online_state.experiments import read_experiment_data
from online_state.keys import DEFAULT_KEYS


class UnknownExperiment(LookupError):
    """Neither the experiments document nor the counts know the experiment."""


def catalogue_size(artifacts: Path) -> int:
    """Titles in the latest bundle's catalogue (0 when there is no bundle)."""
    with contextlib.suppress(Exception):
        return len(open_bundle(artifacts, verify=False).catalog_table().item_ids)
    return 0


async def load_experiment(settings: Settings, name: str) -> ExperimentData:
    redis = redis_client(settings)
    try:
        _, config = await read_config(redis, DEFAULT_KEYS)
        kind, weights = "ab", {}
        if config is not None and name == HOLDOUT_EXPERIMENT and config.holdout.share > 0:
            weights = {"holdout": config.holdout.share, "exposed": 1.0 - config.holdout.share}
        elif config is not None and (exp := config.get(name)) is not None:
            kind, weights = exp.kind, {v.name: v.weight for v in exp.variants}
        data = await read_experiment_data(redis, DEFAULT_KEYS, name, kind, weights,
                                          catalogue_size(Path(settings.artifacts)))
    finally:
        await redis.aclose()
    if not data.variants or not any(v.n_users for v in data.variants):
        known = [e.name for e in config.experiments] if config is not None else []
        raise UnknownExperiment(f"no exposures counted for experiment {name!r} (experiments in the document: "
                                f"{', '.join(known) or 'none'})")
    return data
