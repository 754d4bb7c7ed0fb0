"""The contract of every online feature store backend, written once and run on each (memory, Redis, Redis with
its Functions, the server's scripted read): after the same event batches, the same reads.

A test class subclasses :class:`StoreContract` (its name starting with ``Test``) and defines the fixture
``make_store``: ``make_store(static)`` returns a fresh, empty store over that catalogue. The reference each
answer is compared with is a :class:`~online_state.memory_store.MemoryFeatureStore` that applied the same events
as ONE batch, so a backend must not depend on how the log was cut into batches either.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np

from models.features.state import ITEM_COUNT_NAMES, NO_ITEM_HASH, EventBatch, ItemStatic, UserStates
from online_state.feature_reads import same_snapshot
from online_state.feature_store import OnlineFeatureStore, StateSnapshot
from online_state.memory_store import MemoryFeatureStore
from schemas.events import (
    AddToList,
    Click,
    Complete,
    Context,
    Impression,
    InteractionEvent,
    Play,
    Progress,
    Rating,
    Skip,
    UserUpsert,
)

DAY: Final = 86_400_000
T0: Final = 1_767_225_600_000
ITEMS: Final = [f"i{k}" for k in range(12)]
UNKNOWN_ITEMS: Final = ["released-later", "never-seen"]  # not in the catalogue (the first gets events)
USERS: Final = [f"u{k}" for k in range(7)]

MakeStore = Callable[[ItemStatic], OnlineFeatureStore]


def catalogue() -> ItemStatic:
    genres = [["Drama"], ["Comedy", "Drama"], ["Action"], [], ["Comedy"], ["Horror", "Action"]]
    release = T0 - np.arange(len(ITEMS), dtype=np.int64) * 30 * DAY
    return ItemStatic.build(ITEMS, [genres[k % len(genres)] for k in range(len(ITEMS))], release, release,
                            np.zeros(len(ITEMS), np.int8), np.arange(len(ITEMS)) % 4 == 0)


def events(seed: int = 3, n: int = 900, days: int = 70) -> list[InteractionEvent]:
    """Every kind of interaction, over ``days`` (several popularity epochs of both half-lives), in time order."""
    rng = random.Random(seed)
    contexts = [None, Context(device="tv", country="NL", local_hour=21), Context(device="mobile"),
                Context(country="US", session_id="s1")]
    out: list[InteractionEvent] = []
    for k, ts in enumerate(sorted(T0 + rng.randrange(days * DAY) for _ in range(n))):
        user, item = rng.choice(USERS), rng.choice([*ITEMS, UNKNOWN_ITEMS[0]])
        base: dict[str, Any] = {"event_id": f"e{k}", "ts": ts, "schema_version": 1, "user_id": user}
        ctx = rng.choice(contexts)
        kind = rng.randrange(10)
        if kind == 0:
            out.append(Impression(**base, item_ids=rng.sample(ITEMS, 4), request_id=f"q{k}", context=ctx))
        elif kind == 1:
            out.append(UserUpsert(**base, country="FR"))
        else:
            one: dict[str, Any] = {**base, "item_id": item, "context": ctx}
            out.append([Play(**one), Progress(**one, watched_seconds=60.0), Complete(**one, watched_seconds=5400.0),
                        Skip(**one), Rating(**one, value=rng.choice([1.0, 3.5, 5.0])), Click(**one),
                        AddToList(**one), Play(**one)][kind - 2])
    return out


def batches(log: Sequence[InteractionEvent], seed: int) -> list[Sequence[InteractionEvent]]:
    """``log`` cut into batches of 1 to 150 events."""
    rng = random.Random(seed)
    out, start = [], 0
    while start < len(log):
        size = rng.randint(1, 150)
        out.append(log[start:start + size])
        start += size
    return out


def assert_same(got: StateSnapshot, want: StateSnapshot, what: str) -> None:
    assert same_snapshot(got, want), what


class StoreContract:
    """The checks every backend passes (see the module docstring)."""

    async def test_same_reads_as_the_reference_after_the_same_batches(self, make_store: MakeStore) -> None:
        static = catalogue()
        log = events()
        store = make_store(static)
        for batch in batches(log, seed=1):
            await store.apply_events(batch)
        reference = MemoryFeatureStore(static)
        await reference.apply_events(log)
        last = log[-1].ts
        candidates = [*ITEMS, *UNKNOWN_ITEMS, "i3", "i0"]  # unknown ids and repeats too
        for now in (last + 1, last + 9 * DAY, last + 60 * DAY):  # the next popularity epochs of each half-life
            for user in [*USERS, "nobody"]:
                want = await reference.read(user, candidates, now)
                assert_same(await store.read(user, candidates, now), want, f"{user} at {now}")
        busy = await reference.read(USERS[0], candidates, last + 1)
        # Real state was compared, not only the empty defaults.
        assert busy.user.counts.sum() > 0 and busy.items.counts.sum() > 0 and busy.items.pop.sum() > 0
        assert (busy.user.recent_item != NO_ITEM_HASH).any()

    async def test_unknown_users_and_items_read_as_empty(self, make_store: MakeStore) -> None:
        static = catalogue()
        store = make_store(static)
        ids = ["i0", "released-later", "i0"]
        snap = await store.read("nobody", ids, T0)
        empty = UserStates.empty(1, static.n_genres)
        assert all(np.array_equal(getattr(snap.user, f), getattr(empty, f)) for f in empty.__dataclass_fields__)
        assert snap.items.counts.shape == (3, len(ITEM_COUNT_NAMES)) and not snap.items.counts.any()
        assert not snap.items.pop.any()
        want = static.rows(*static.lookup(ids))
        assert all(np.array_equal(getattr(snap.static, f), getattr(want, f)) for f in want.__dataclass_fields__)
        assert (await store.read("nobody", [], T0)).items.counts.shape == (0, len(ITEM_COUNT_NAMES))

    async def test_an_empty_batch_changes_nothing(self, make_store: MakeStore) -> None:
        static = catalogue()
        store = make_store(static)
        log = events(seed=5, n=120)
        await store.apply_events(log)
        before = [await store.read(user, ITEMS, log[-1].ts + 1) for user in USERS]
        await store.apply(EventBatch.from_events([], static))
        after = [await store.read(user, ITEMS, log[-1].ts + 1) for user in USERS]
        for user, a, b in zip(USERS, before, after, strict=True):
            assert_same(b, a, user)

    async def test_reads_follow_the_requested_order(self, make_store: MakeStore) -> None:
        static = catalogue()
        store = make_store(static)
        log = events(seed=7, n=300)
        await store.apply_events(log)
        now = log[-1].ts + 1
        ids = [*ITEMS, UNKNOWN_ITEMS[0]]
        forward = await store.read(USERS[1], ids, now)
        backward = await store.read(USERS[1], ids[::-1], now)
        np.testing.assert_array_equal(backward.items.counts, forward.items.counts[::-1])
        np.testing.assert_array_equal(backward.items.pop, forward.items.pop[::-1])
        np.testing.assert_array_equal(backward.static.item_hash, forward.static.item_hash[::-1])

    async def test_item_counts_are_the_events_counted(self, make_store: MakeStore) -> None:
        """A hand-counted case, so that a backend agreeing with a broken reference still fails."""
        static = catalogue()
        store = make_store(static)
        one = {"user_id": "u0", "item_id": "i1", "schema_version": 1}
        log: list[InteractionEvent] = [
            Play(event_id="a", ts=T0, **one), Play(event_id="b", ts=T0 + 1, **one),
            Complete(event_id="c", ts=T0 + 2, watched_seconds=5000.0, **one),
            Rating(event_id="d", ts=T0 + 3, value=4.5, **one), Skip(event_id="e", ts=T0 + 4, **one),
            Click(event_id="f", ts=T0 + 5, **one), AddToList(event_id="g", ts=T0 + 6, **one),
            Impression(event_id="h", ts=T0 + 7, user_id="u0", item_ids=["i1", "i2"], request_id="q",
                       schema_version=1),
        ]
        await store.apply_events(log[:3])
        await store.apply_events(log[3:])
        counts = dict(zip(ITEM_COUNT_NAMES, (await store.read("u0", ["i1"], T0 + 8)).items.counts[0].tolist(),
                          strict=True))
        assert counts == {"play": 2, "comp": 1, "skip": 1, "rate": 1, "rsum": 4500, "imp": 1, "click": 1, "add": 1}
