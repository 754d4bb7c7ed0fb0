"""The effect contract (:mod:`streams.effect_contract`) on the test stack's redis-server, with the Redis Functions
loaded: every effect writes as the worker does (one ``MGET`` / ``FCALL`` per kind and batch).

The world, the contexts and the cases are the unit suite's (``tests/unit/test_effect_contract.py``, one
definition of the effects' test parameters), loaded by path: the test folders are not packages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from suite_loader import load_test_module

from online_state.keys import KeyLayout
from online_state.redis_functions import functions_available
from online_state.slot_markers import load_slot_functions
from streams.effect_contract import CHECKS
from streams.effects_registry import CATALOG_EFFECTS, INTERACTION_EFFECTS

UNIT = load_test_module(Path(__file__).resolve().parents[1] / "unit" / "test_effect_contract.py",
                        "effect_contract_cases")
NAMES = [f.name for f in (*INTERACTION_EFFECTS, *CATALOG_EFFECTS)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return UNIT.make_world(tmp_path_factory.mktemp("effect-contract-redis"))


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize("name", NAMES)
async def test_effect_contract_on_redis(world: Any, redis_client: aioredis.Redis, name: str,
                                        check: Callable[..., Any]) -> None:
    assert await functions_available(redis_client)
    (case,) = [c for c in UNIT.contract_cases(world, redis_client, bulk=True) if c.name == name]
    await check(case, redis_client, KeyLayout("contract"))


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize("name", NAMES)
async def test_effect_contract_through_per_slot_units(world: Any, redis_client: aioredis.Redis, name: str,
                                                      check: Callable[..., Any]) -> None:
    """The same checks through the per-slot protocol (streams.slot_protocol) the worker runs on Redis Cluster and,
    by default, on one redis-server: the effects write one command per key, grouped into gated slot units."""
    await load_slot_functions(redis_client)
    (case,) = [dataclasses.replace(c, protocol="slots") for c in UNIT.contract_cases(world, redis_client, bulk=False)
               if c.name == name]
    await check(case, redis_client, KeyLayout("contract-slots"))
