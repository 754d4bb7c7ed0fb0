"""The effect contract (:mod:`streams.effect_contract`), run on every effect of the worker's list on fakeredis.

Parametrised over :data:`~streams.effects_registry.INTERACTION_EFFECTS` and
:data:`~streams.effects_registry.CATALOG_EFFECTS`: an effect added to the list gets every check. Each effect is
built by its own factory from one cheap context: a small generated world, a bundle-like folder with CF, content
and projection models fitted on the first half of its log (so that titles first engaged later are
content-projected and learn online), the world's catalogue. The effects write one command per key here
(fakeredis runs no Redis Functions); ``tests/integration/test_effect_contract_redis.py`` runs the same checks
on a real redis-server with the Functions the worker uses.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import msgspec
import numpy as np
import pytest

from foundation.settings import Settings
from models.cf import fit_cf
from models.content import fill_cold_items, fit_content, fit_projection
from models.dataset import load_log
from online_state.keys import KeyLayout
from schemas.decoder import catalog_decoder, interaction_decoder
from schemas.events import (
    AddToList,
    Click,
    Complete,
    Context,
    ExposureTag,
    Impression,
    ItemRemove,
    ItemUpsert,
    Play,
    Rating,
    Skip,
    UserUpsert,
)
from streams.catalogue import LiveCatalogue
from streams.effect_contract import CHECKS, ContractCase
from streams.effects import Effect, EffectContext
from streams.effects_registry import CATALOG_EFFECTS, INTERACTION_EFFECTS, NamedFactory
from streams.experiments import ExperimentEffect
from tools.datasets.world import generate_world

T0 = 1_767_225_600_000


@dataclass(frozen=True)
class TinyBundle:
    """What the effect factories read of a bundle (``file``, ``json``, ``version``), in a folder."""

    root: Path
    version: str = "contract-test"

    def file(self, name: str) -> Path:
        return self.root / name

    def json(self, name: str) -> Any:
        return json.loads((self.root / f"{name}.json").read_text())


@dataclass(frozen=True)
class World:
    bundle: TinyBundle
    catalogue: LiveCatalogue
    events: list[Any]
    catalog: list[Any]


def make_world(root: Path) -> World:
    generate_world(root / "world", users=20, items=40, events=400, seed=3, days=0.25)  # sessions span batches
    events = [interaction_decoder.decode(line) for line in (root / "world" / "events.jsonl").read_bytes().splitlines()]
    catalog = [catalog_decoder.decode(line) for line in (root / "world" / "catalog.jsonl").read_bytes().splitlines()]
    first = root / "first-half"
    first.mkdir()
    (first / "catalog.jsonl").write_bytes((root / "world" / "catalog.jsonl").read_bytes())
    lines = (root / "world" / "events.jsonl").read_bytes().splitlines()
    (first / "events.jsonl").write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    log = load_log(first)
    cf = fit_cf(log, dim=8, seed=0)
    content = fit_content(log.catalog, dim=8, seed=0, min_df=1)
    vectors = content.embed_catalog(log.catalog)
    projection = fit_projection(vectors, cf.item_vectors, cf.trained_items, seed=0, k=5)
    bundle = TinyBundle(root / "bundle")
    bundle.root.mkdir()
    fill_cold_items(cf, projection, vectors).save(bundle.file("cf.npz"))
    content.save(bundle.file("content.npz"))
    projection.save(bundle.file("projection.npz"))
    (bundle.root / "item_ids.json").write_text(json.dumps(list(log.catalog.item_ids)))
    (bundle.root / "user_ids.json").write_text(json.dumps(list(log.user_ids)))
    catalogue = LiveCatalogue()
    catalogue.apply(catalog)
    return World(bundle, catalogue, events, catalog)


def unknown_interactions() -> list[Any]:
    """Users and titles nobody has seen (nor the bundle, nor the catalogue), of every kind."""
    base = {"schema_version": 1, "user_id": "stranger", "item_id": "nowhere"}
    ctx = Context(country="NZ", device="tv", local_hour=3, session_id="s-1")
    return [
        UserUpsert(event_id="x0", ts=T0, schema_version=1, user_id="stranger", country="NZ"),
        Play(event_id="x1", ts=T0 + 1, context=ctx, **base),
        Rating(event_id="x2", ts=T0 + 2, value=4.5, **base),
        Click(event_id="x3", ts=T0 + 3, **base),
        Skip(event_id="x4", ts=T0 + 4, **base),
        Complete(event_id="x5", ts=T0 + 5, watched_seconds=60, **base),
        Impression(event_id="x6", ts=T0 + 6, schema_version=1, user_id="stranger", item_ids=["nowhere", "else"],
                   request_id="r"),
        Play(event_id="x7", ts=T0 + 7, schema_version=1, user_id="stranger-2", item_id="nowhere-2"),
    ]


def with_experiments(events: Sequence[Any]) -> list[Any]:
    """The events with every impression an exposure of an A/B test (variant by user) and of an interleaving one
    (teams alternating by position), as the server tags them; every other positive engagement after one names
    the user's last answer (``request_id``), the rest are attributed by title and time (the experiments effect)."""
    out: list[Any] = []
    last: dict[str, str] = {}
    for k, event in enumerate(events):
        if isinstance(event, Impression):
            arm = "a" if zlib.crc32(event.user_id.encode()) % 2 else "b"
            teams = [("a", "b")[(p + k) % 2] for p in range(len(event.item_ids))]
            event = msgspec.structs.replace(
                event, experiments=[ExposureTag(name="ranker", variant=arm),
                                    ExposureTag(name="draft", variant="interleaved", teams=teams)],
                server_ms=float(k % 300), degraded=k % 7 == 0)
            last[event.user_id] = event.request_id
        elif isinstance(event, Play | Click | Complete | Rating | AddToList) and k % 2 and event.user_id in last:
            event = msgspec.structs.replace(event, request_id=last[event.user_id])
        out.append(event)
    return out


def unknown_catalog(world: World) -> list[Any]:
    """A title the bundle never saw, then removed; a removal of a title nobody ever saw."""
    known = world.catalog[0].item_id
    return [
        ItemUpsert(event_id="c1", ts=T0, schema_version=1, item_id="brand-new", title="Brand New Drama",
                   genres=["Drama", "Uncharted"], release_ts=T0, tags=["space"]),
        ItemRemove(event_id="c2", ts=T0 + 1, schema_version=1, item_id="never-seen"),
        ItemRemove(event_id="c3", ts=T0 + 2, schema_version=1, item_id=known),
        ItemRemove(event_id="c4", ts=T0 + 3, schema_version=1, item_id="brand-new"),
    ]


class _Batch:
    def __init__(self) -> None:
        self.n = 0

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any) -> object | None:
        self.n += 1
        return object()

    def record_count(self) -> int:
        return self.n


class FakeProducer:
    """Accepts what the catalogue effects publish (item vectors) and acknowledges it at once."""

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def contract_cases(world: World, redis: Any, *, bulk: bool) -> list[ContractCase]:
    """Every effect of the worker's lists, built by its factory, with its test events."""
    settings = Settings()

    def builder(factory: NamedFactory, producer: Any) -> Callable[[KeyLayout], Effect[Any]]:
        def build(keys: KeyLayout) -> Effect[Any]:
            ctx = EffectContext(settings=settings, redis=redis, bundle=world.bundle, keys=keys,
                                catalog=world.catalogue, producer=producer, bulk=bulk)
            effect = factory.build(ctx)
            assert effect is not None, f"{factory.name} does not apply in the contract's context"
            return effect

        return build

    def companions(factory: NamedFactory, factories: Sequence[NamedFactory],
                   producer: Any) -> Callable[[KeyLayout], list[Effect[Any]]]:
        builds = [builder(f, producer) for f in factories if f.name in factory.reads_state_of]
        return lambda keys: [build(keys) for build in builds]

    # The interaction effects get no producer: the online item publisher sends (and marks ``pub``) in the
    # background after commits, at least once, outside what a batch commits.
    # The experiments effect gets the world's impressions tagged as exposures (the generated world has none).
    cases = [ContractCase(f.name, builder(f, None), settings.topic_interactions,
                          with_experiments(world.events) if f.name == "experiments" else world.events,
                          with_experiments(unknown_interactions()) if f.name == "experiments"
                          else unknown_interactions(), companions(f, INTERACTION_EFFECTS, None))
             for f in INTERACTION_EFFECTS]
    producer = FakeProducer()
    cases += [ContractCase(f.name, builder(f, producer), settings.topic_catalog, world.catalog,
                           unknown_catalog(world), companions(f, CATALOG_EFFECTS, producer)) for f in CATALOG_EFFECTS]
    return cases


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("effect-contract"))


NAMES = [f.name for f in (*INTERACTION_EFFECTS, *CATALOG_EFFECTS)]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize("name", NAMES)
async def test_effect_contract(world: World, name: str, check: Callable[..., Any]) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    (case,) = [c for c in contract_cases(world, redis, bulk=False) if c.name == name]
    await check(case, redis, KeyLayout("contract"))


def test_the_world_exercises_the_effects(world: World) -> None:
    """The test events reach every effect's interesting path: known and cold titles are engaged."""
    item_ids: Sequence[str] = world.bundle.json("item_ids")
    with np.load(world.bundle.file("cf.npz")) as z:
        trained = z["trained_items"]
    engaged = {e.item_id for e in world.events if isinstance(e, Play | Complete | Rating)}
    assert engaged & {i for i, t in zip(item_ids, trained, strict=True) if t}
    assert engaged & {i for i, t in zip(item_ids, trained, strict=True) if not t}  # cold titles learn online


def test_the_world_exercises_the_experiments(world: World) -> None:
    """The experiments' test events reach every path: exposures, outcomes attributed by request id and by title,
    unattributed ones, interleaving credit to both teams, click-through by position."""
    events = with_experiments(world.events)
    effect = ExperimentEffect(keys=KeyLayout("contract"))
    users, positive = effect.relevant(events)
    out = effect.apply(events, [None] * len(users), _state(users, positive))
    assert out.exposures > 10 and out.attributed > 10 and out.unattributed > 0
    credit = {team for blob in out.blobs.values() if "draft" in blob.exp for team in blob.exp["draft"].credit}
    assert credit == {"a", "b"}
    assert any(f.startswith(("a:clicks:", "b:clicks:")) for f in out.counts[effect.keys.experiment_counts("ranker")])
    assert any(getattr(e, "request_id", None) is not None for e in events if not isinstance(e, Impression))


def _state(users: list[str], positive: list[bool]) -> Any:
    from streams.experiments import _State
    return _State(users, positive)
