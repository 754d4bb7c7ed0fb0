"""Online item learning: the written rule, exact integer sums under any batching and worker split,
the users' vectors at each engagement, which titles and events count, and the publish decision."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from models.online_user import OnlineUserModel, online_weight
from online_state.item_learning import SCALE, ItemSums, to_fixed, vector_bytes
from online_state.keys import KeyLayout
from schemas.events import Impression, InteractionEvent, Play, Rating, Skip
from streams.effects import Batch, BatchInfo
from streams.item_learning import (
    ItemLearner,
    ItemLearningEffect,
    OnlineItemPublisher,
    cosine_distance,
    learned_vector,
)

DIM = 8
N_BUNDLE = 30  # bundle items b0..b29; b0..b19 trained, b20..b29 cold (content-projected)


def _model() -> tuple[OnlineUserModel, dict[str, int], NDArray[np.bool_]]:
    rng = np.random.default_rng(0)
    vectors = (rng.standard_normal((N_BUNDLE, DIM)) * 0.4).astype(np.float32)
    trained = np.arange(N_BUNDLE) < 20
    return OnlineUserModel(vectors), {f"b{i}": i for i in range(N_BUNDLE)}, trained


def _initial(user: str) -> NDArray[np.float32] | None:
    # Half the users have a bundle vector; the others start from zeros.
    n = int(user[1:])
    return None if n % 2 else np.full(DIM, 0.1 * (n + 1), np.float32)


def _learner() -> ItemLearner:
    model, index, trained = _model()
    return ItemLearner(model, index, trained, initial=_initial)


def _random_log(n: int = 400, seed: int = 1) -> list[InteractionEvent]:
    rng = random.Random(seed)
    items = [f"b{i}" for i in range(N_BUNDLE)] + ["new1", "new2", "new3"]
    out: list[InteractionEvent] = []
    for k in range(n):
        user, item = f"u{rng.randrange(8)}", rng.choice(items)
        base = {"event_id": f"e{k}", "ts": 1000 + k, "schema_version": 1, "user_id": user}
        kind = rng.random()
        if kind < 0.6:
            out.append(Play(item_id=item, **base))
        elif kind < 0.75:
            out.append(Skip(item_id=item, **base))
        elif kind < 0.9:
            out.append(Rating(item_id=item, value=rng.choice([1.0, 2.5, 4.0, 5.0]), **base))
        else:
            out.append(Impression(item_ids=[item], request_id="r", **base))
    return out


def _apply(learner: ItemLearner, batches: list[list[InteractionEvent]]) -> dict[str, tuple[int, int, list[int]]]:
    """Apply batches like the worker: user vectors carried over between batches (as Redis would), sums added."""
    totals: dict[str, tuple[int, int, NDArray[np.int64]]] = {}
    stored: dict[str, NDArray[np.float32]] = {}
    for batch in batches:
        eng = learner.engagements(batch)
        start = learner.start_vectors(eng.users, [stored.get(u) for u in eng.users])
        for item, inc in learner.item_sums(eng, start).items():
            w, n, s = totals.get(item, (0, 0, np.zeros(DIM, np.int64)))
            totals[item] = (w + inc.w, n + inc.n, s + inc.s)
        # The user-vector effect's own write: every user's vector after the batch.
        users = list(dict.fromkeys(e.user_id for e in batch))
        for user in users:
            mine = [e for e in batch if e.user_id == user]
            stored[user] = _user_after(learner, stored.get(user), user, mine)
    return {item: (w, n, s.tolist()) for item, (w, n, s) in totals.items()}


def _user_after(learner: ItemLearner, vector: NDArray[np.float32] | None, user: str,
                events: list[InteractionEvent]) -> NDArray[np.float32]:
    """The user's vector after ``events`` by the one-event-at-a-time rule (OnlineUserModel.update)."""
    if vector is None:
        vector = learner.start_vectors([user], [None])[0]
    signals = [(learner.item_index[e.item_id], online_weight(str(type(e).__struct_config__.tag),
                                                             getattr(e, "value", 0.0)), e.ts)
               for e in events if getattr(e, "item_id", None) in learner.item_index]
    signals = [s for s in signals if s[1] != 0]
    return learner.model.update(vector, signals) if signals else vector


def test_the_rule_is_the_weighted_mean_with_the_content_prior() -> None:
    q0 = np.array([1.0, 0.0, 0.0], np.float32)
    p1, p2 = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 2.0])
    w = to_fixed(1.0) + to_fixed(2.0)
    s = to_fixed(1.0 * p1) + to_fixed(2.0 * p2)
    got = learned_vector(q0, int(w), s, prior=5.0)
    np.testing.assert_allclose(got, (5.0 * q0 + 1.0 * p1 + 2.0 * p2) / (5.0 + 3.0), rtol=1e-6)
    np.testing.assert_array_equal(learned_vector(q0, 0, np.zeros(3, np.int64)), q0)  # nothing learnt yet
    # Many engagements: the content prior fades and the vector tends to the users' weighted mean.
    many = learned_vector(q0, int(to_fixed(1000.0)), to_fixed(1000.0 * p1), prior=5.0)
    assert cosine_distance(many, p1) < 1e-4


@pytest.mark.parametrize("expand_limit", [16, 0])  # one expanded update_many call / the stepped fallback
def test_users_vectors_at_each_engagement_follow_their_earlier_events(expand_limit: int) -> None:
    learner = _learner()
    learner.expand_limit = expand_limit
    events = _random_log(200)
    eng = learner.engagements(events)
    got = learner.vectors_before(eng, learner.start_vectors(eng.users, [None] * len(eng.users)))
    assert len(eng.eng_item) > 10
    for j, pos in enumerate(eng.eng_pos.tolist()):
        user = eng.users[int(eng.eng_user[j])]
        earlier = [e for e in events[:pos] if e.user_id == user]
        np.testing.assert_array_equal(got[j], _user_after(learner, None, user, earlier), err_msg=f"engagement {j}")


def test_only_positive_engagements_on_content_projected_titles_count() -> None:
    learner = _learner()
    eng = learner.engagements(_random_log(400))
    assert set(eng.eng_item) <= {f"b{i}" for i in range(20, N_BUNDLE)} | {"new1", "new2", "new3"}
    assert {"new1", "b25"} <= set(eng.eng_item)
    assert np.all(eng.eng_weight > 0)
    base = {"ts": 5, "schema_version": 1, "user_id": "u0"}
    negatives = [Skip(event_id="a", item_id="new1", **base), Rating(event_id="b", item_id="new1", value=1.0, **base),
                 Play(event_id="c", item_id="b3", **base)]  # b3 is trained
    assert learner.engagements(negatives).eng_item == []


def test_users_with_no_vector_yet_are_left_out() -> None:
    learner = _learner()
    base = {"schema_version": 1, "user_id": "u1"}  # odd: no bundle vector, starts at zero
    first = [Play(event_id="a", ts=1, item_id="new1", **base)]
    assert learner.item_sums(learner.engagements(first), np.zeros((1, DIM), np.float32)) == {}
    # After a play of a trained title the user has a vector, and the next engagement counts it.
    second = [Play(event_id="b", ts=2, item_id="b3", **base), Play(event_id="c", ts=3, item_id="new1", **base)]
    eng = learner.engagements(second)
    sums = learner.item_sums(eng, learner.start_vectors(eng.users, [None]))
    assert list(sums) == ["new1"] and sums["new1"].n == 1 and sums["new1"].w == SCALE
    np.testing.assert_array_equal(sums["new1"].s, to_fixed(_user_after(learner, None, "u1", second[:1])))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sums_are_exact_under_any_batching_and_worker_split(seed: int) -> None:
    learner = _learner()
    events = _random_log(400, seed)
    once = _apply(learner, [events])
    assert once and sum(n for _, n, _ in once.values()) > 20
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(events)), 12))
    batched = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert _apply(learner, batched) == once
    # Two "partitions" (users split by parity), applied in interleaved batches: the same integers.
    parts = [[e for e in events if int(e.user_id[1:]) % 2 == k] for k in (0, 1)]
    interleaved = [parts[1][:50], parts[0][:120], parts[1][50:], parts[0][120:]]
    assert _apply(learner, interleaved) == once


def test_sums_double_if_the_log_is_applied_twice() -> None:
    """What the exactly-once test relies on: a replayed batch changes the sums (it would be caught)."""
    learner = _learner()
    events = _random_log(200)
    once = _apply(learner, [events])
    twice = _apply(learner, [events[:100], events[:100], events[100:]])
    assert twice != once


def _publisher(threshold: float = 0.05) -> OnlineItemPublisher:
    publisher = OnlineItemPublisher.__new__(OnlineItemPublisher)  # decide() needs no Redis nor Kafka
    publisher.dim, publisher.threshold, publisher.prior = 3, threshold, 5.0
    publisher.base = lambda item: np.array([1.0, 0.0, 0.0], np.float32) if item == "cold" else None
    return publisher


def test_publish_decision_follows_the_threshold() -> None:
    pub = _publisher()
    q0 = np.array([1.0, 0.0, 0.0], np.float32)
    small = ItemSums(int(to_fixed(0.1)), 1, to_fixed(np.array([0.0, 0.1, 0.0])), 0)
    large = ItemSums(int(to_fixed(5.0)), 5, to_fixed(np.array([0.0, 5.0, 0.0])), 0)
    assert cosine_distance(q0, learned_vector(q0, small.w, small.s)) < 0.05
    assert pub.decide("x", (small, vector_bytes(q0), False, None)) is None  # below the threshold
    moved = pub.decide("x", (large, vector_bytes(q0), False, None))
    assert moved is not None
    np.testing.assert_allclose(moved, [0.5, 0.5, 0.0], rtol=1e-6)
    assert pub.decide("x", (large, vector_bytes(q0), False, vector_bytes(moved))) is None  # already published
    assert pub.decide("x", (large, vector_bytes(q0), True, None)) is None  # removed
    assert pub.decide("x", (large, None, False, None)) is None  # no content vector known
    np.testing.assert_allclose(pub.decide("cold", (large, None, False, None)), [0.5, 0.5, 0.0], rtol=1e-6)


class _Pipe:
    """Records the commands an effect queues."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.commands.append(("HINCRBY", key, field, amount))

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def get(self, key: str) -> None:
        self.commands.append(("GET", key))

    def mget(self, keys: list[str]) -> None:
        self.commands.append(("MGET", *keys))


@pytest.mark.parametrize("bulk", [False, True])
def test_write_queues_the_batch_sums_per_title(bulk: bool) -> None:
    import msgspec

    learner = _learner()
    effect = ItemLearningEffect(learner, space=0, bulk=bulk)
    events = _random_log(300)
    users = effect.engagements(events).users
    want = {KeyLayout().item_learning(0, item): inc for item, inc in effect.sums(events, [None] * len(users)).items()}
    assert want
    pipe = _Pipe()
    batch = Batch(BatchInfo("interactions", 0, 0, len(events) - 1), events)
    read_pipe = _Pipe()
    reads = effect.read(read_pipe, batch)
    assert reads.queued == (1 if bulk else len(users)) and len(read_pipe.commands) == reads.queued
    reads.replies = [[None] * len(users)] if bulk else [None] * len(users)
    effect.write(pipe, batch, reads)
    got: dict[str, dict[str, int]] = {}
    if bulk:
        ((fcall, name, n, *rest),) = pipe.commands  # one command for the whole batch
        assert (fcall, name, n) == ("FCALL", "streamrec_hincr", len(want))
        keys, payload = rest[:n], msgspec.msgpack.decode(rest[n])
        for key, (fields, pops) in zip(keys, payload, strict=True):
            assert pops == []
            got[key] = {fields[j]: int(fields[j + 1]) for j in range(0, len(fields), 2)}
    else:
        for _, key, field, amount in pipe.commands:
            got.setdefault(key, {})[field] = amount
    assert got.keys() == want.keys()
    for key, inc in want.items():
        assert got[key].pop("w") == inc.w and got[key].pop("n") == inc.n
        s = np.zeros(DIM, np.int64)
        for field, amount in got[key].items():
            s[int(field[1:])] = amount
        np.testing.assert_array_equal(s, inc.s)
