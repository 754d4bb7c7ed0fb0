"""Online item vectors for content-projected titles: engagement pulls them toward the users who engage.

Which titles learn
------------------
Only titles whose vector is *content-projected*: titles not in the bundle (released after training)
and bundle titles with no CF data at training time (``CFModel.trained_items`` false). Their vector is
a ridge projection of their metadata into CF space, a guess that ALS never corrected; every
engagement is evidence of where the title really sits. Trained titles keep their CF vectors until
the next retrain: ALS fitted them on every user's history, one user's stream is far too little to
improve them, and moving them would silently shift the space that every stored user vector and
the HNSW index were built in (the same reasons :mod:`models.online_user` keeps item factors fixed).

The rule
--------
For title ``i`` with content vector ``q0`` (prior strength ``n0`` = :data:`PRIOR_WEIGHT`)::

    q_i = (n0 · q0 + Σ_e w_e · p_e) / (n0 + Σ_e w_e)

over its engagements ``e``: ``w_e`` the event's positive online weight
(:func:`models.online_user.online_weights`; skips and low ratings do not count: "this user does not
like it" says nothing about where the title sits) and ``p_e`` the engaging user's online vector just
*before* the event (the value :class:`streams.user_vectors.UserVectorEffect` holds at that point of
the log, its update rule run step by step over the batch). Engagements by users whose vector is still
zero (no history at all) are left out: they would only shrink ``q_i``. A weighted mean of the
engaging users is the one-step ALS item solve with the users' Gram matrix taken as the identity:
cheap, and it moves the title toward the users who watch it, which is what retrieval needs.

Exactly once, several workers
-----------------------------
``Σ w_e`` and ``Σ w_e · p_e`` are kept as fixed-point integers (:data:`online_state.item_learning.SCALE` units
per 1.0), each
event's contribution rounded on its own, and added with ``HINCRBY`` inside the batch's MULTI. Integer
addition commutes, so workers of different partitions engaging one title in any order and any
batching give the same sums, and a re-delivered batch is skipped with the offset. ``p_e`` is a
float32 function of the user's events in log order (the user's partition), so it is batch-independent.

Redis layout
------------
One HASH per title and CF space (:meth:`~online_state.keys.KeyLayout.item_learning`; fields and codecs:
:mod:`online_state.item_learning`): the sums ``w``, ``n``, ``s{k}`` above, the content vector ``q0``, ``gone``
once removed, and ``pub``, the vector last published for the title.

Per batch: one read phase (the engaging users' online vectors, queued with the other effects'
reads: one ``MGET`` when the worker loaded its Redis Functions, else a ``GET`` each) and, in the write
phase, the ``HINCRBY``\\s of every engaged title (one ``FCALL streamrec_hincr`` for the batch, or the
plain commands); nothing per event.

Publishing
----------
After the batch commits, :class:`OnlineItemPublisher` (a background task of the worker) reads the
titles' committed sums (one pipelined read per batch, off the batch's path, together with the
partition's offset key: that it reached the batch's last offset is how it knows the EXEC landed) and
publishes ``q_i`` to the compacted ``item-vectors`` topic with ``source="online"`` when its cosine
distance to ``pub`` (or, never published online, to ``q0``: what the catalog effect / bundle seed put
there) exceeds the threshold. The record is at least once and always the committed state. A worker killed
between a commit and its publication leaves that move unpublished until a worker starts (each runs
:meth:`OnlineItemPublisher.catch_up` once: every learning title against its ``pub``) or the title is
engaged again. Known gap: two workers publishing one title at once may leave the older of two
committed states on the topic until its next engagement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter

from foundation.kafka_io import KeyedBatchSender
from foundation.logs import get_logger
from models.dataset import KIND
from models.item_vector_codec import ItemVector, encode_item_vector
from models.online_user import OnlineUserModel, online_weights
from online_state.item_learning import (
    SCALE,
    ItemSums,
    bytes_vector,
    increment_fields,
    parse_learning_state,
    state_fields,
    to_fixed,
    vector_bytes,
)
from online_state.keys import DEFAULT_KEYS, KeyLayout
from online_state.redis_functions import hincr_many
from online_state.user_vectors import unpack_user_vector
from schemas.events import InteractionEvent, Rating
from streams.effects import Batch, BatchInfo, Effect, Reads

log = get_logger(__name__)

PRIOR_WEIGHT: Final = 5.0  # n0: the content vector weighs as much as five plays
SOURCE: Final = "online"

PUBLISHED: Final = Counter("streamrec_worker_online_item_vectors_total",
                           "Online item vectors re-published to item-vectors (moved beyond the threshold).")


def learned_vector(q0: NDArray[np.floating], w: int, s: NDArray[np.integer],
                   prior: float = PRIOR_WEIGHT) -> NDArray[np.float32]:
    """``(n0 · q0 + S) / (n0 + W)`` from the fixed-point sums ``w`` (W) and ``s`` (S)."""
    num = prior * np.asarray(q0, np.float64) + np.asarray(s, np.float64) / SCALE
    return (num / (prior + w / SCALE)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Engagements:
    """The positive events of a batch on learnable titles, and what moves their users' vectors."""

    users: list[str]  # users with at least one engagement, first-seen order (the read order)
    eng_user: NDArray[np.int64]  # per engagement: row in ``users``
    eng_item: list[str]
    eng_weight: NDArray[np.float32]
    eng_ts: NDArray[np.int64]
    eng_pos: NDArray[np.int64]  # position in the batch
    sig_user: NDArray[np.int64]  # the engaging users' vector-moving events (UserVectorEffect's signals)
    sig_item: NDArray[np.int64]
    sig_weight: NDArray[np.float32]
    sig_pos: NDArray[np.int64]


class ItemLearner:
    """The pure part: which events count, the users' vectors at each engagement, the per-title sums.

    ``model``, ``item_index`` and ``initial`` must be the online user-vector effect's (see
    :func:`streams.user_vectors.make_effect`): they define ``p_e``.
    """

    def __init__(self, model: OnlineUserModel, item_index: Mapping[str, int], trained: NDArray[np.bool_], *,
                 initial: Callable[[str], NDArray[np.floating] | None] | None = None) -> None:
        self.model = model
        self.item_index = item_index
        self.trained = np.asarray(trained, bool)
        self.initial = initial
        self.expand_limit = 16  # see vectors_before
        # event type -> KIND code, for the types that carry one item's feedback (the per-event loop's lookup)
        self._codes: dict[type, int] = {}

    def learnable(self, item_id: str) -> bool:
        row = self.item_index.get(item_id)
        return row is None or not bool(self.trained[row])

    def engagements(self, events: Sequence[InteractionEvent]) -> Engagements:
        user_of: dict[str, int] = {}
        owner: list[int] = []
        item_ids: list[str] = []
        kinds: list[int] = []
        values: list[float] = []
        positions: list[int] = []
        ts: list[int] = []
        codes = self._codes
        for pos, event in enumerate(events):
            kind = type(event)
            code = codes.get(kind)
            if code is None:
                code = codes[kind] = self._code(kind)
            if code < 0:
                continue  # impressions and profile upserts carry no single-item feedback
            user = event.user_id
            owner.append(user_of.setdefault(user, len(user_of)))
            item_ids.append(event.item_id)  # type: ignore[union-attr]
            kinds.append(code)
            values.append(event.value if kind is Rating else 0.0)  # type: ignore[union-attr]
            positions.append(pos)
            ts.append(event.ts)
        weights = online_weights(np.array(kinds, np.int8), np.array(values, np.float32))
        owner_a, pos_a = np.array(owner, np.int64), np.array(positions, np.int64)
        rows = np.array([self.item_index.get(i, -1) for i in item_ids], np.int64)
        learnable = (rows < 0) | ~self.trained[np.maximum(rows, 0)] if rows.size else np.zeros(0, bool)
        engage = learnable & (weights > 0)
        # Renumber users to the engaging ones; signals of the others are irrelevant here.
        engaging = list(dict.fromkeys(owner_a[engage].tolist()))
        remap = np.full(len(user_of), -1, np.int64)
        remap[engaging] = np.arange(len(engaging))
        names = list(user_of)
        signal = (rows >= 0) & (weights != 0) & (remap[owner_a] >= 0) if rows.size else np.zeros(0, bool)
        return Engagements(
            users=[names[u] for u in engaging], eng_user=remap[owner_a[engage]],
            eng_item=[item_ids[j] for j in np.flatnonzero(engage)], eng_weight=weights[engage],
            eng_ts=np.array(ts, np.int64)[engage] if ts else np.zeros(0, np.int64), eng_pos=pos_a[engage],
            sig_user=remap[owner_a[signal]], sig_item=rows[signal], sig_weight=weights[signal],
            sig_pos=pos_a[signal],
        )

    @staticmethod
    def _code(kind: type) -> int:
        """The KIND code of an event type that names one item, else -1."""
        if "item_id" not in getattr(kind, "__struct_fields__", ()):
            return -1
        return KIND.get(str(kind.__struct_config__.tag), -1)  # type: ignore[attr-defined]

    def start_vectors(self, users: Sequence[str], stored: Sequence[NDArray[np.float32] | None]) -> NDArray[np.float32]:
        """Each user's vector at the batch start: stored, else ``initial`` (bundle), else the model's start."""
        out = np.empty((len(users), self.model.dim), np.float32)
        for j, (user, vector) in enumerate(zip(users, stored, strict=True)):
            if vector is None and self.initial is not None:
                vector = self.initial(user)
            out[j] = self.model.start if vector is None else vector
        return out

    def vectors_before(self, eng: Engagements, start: NDArray[np.float32]) -> NDArray[np.float32]:
        """``p_e`` of every engagement: its user's vector after the user's signals that precede it.

        One :meth:`OnlineUserModel.update_many` call: every engagement is a row of its own that starts
        from its user's vector and takes the user's signals before it, in order; the rule is sequential
        per row, so each row ends exactly (bit for bit) where the user was at that point. That repeats
        a user's early signals once per later engagement; when that would exceed
        :attr:`expand_limit` times the batch's signals, the user rule is stepped instead: step ``k``
        applies every user's ``k``-th signal (one call per step), the engagements preceded by exactly
        ``k`` signals taking their user's vector before it.
        """
        out = np.zeros((len(eng.eng_item), self.model.dim), np.float32)
        if not eng.eng_item:
            return out
        span = int(max(eng.eng_pos.max(), eng.sig_pos.max() if eng.sig_pos.size else 0)) + 1
        sig_key = eng.sig_user * span + eng.sig_pos
        order = np.argsort(sig_key, kind="stable")
        sig_key = sig_key[order]
        sig_user, sig_item, sig_weight = eng.sig_user[order], eng.sig_item[order], eng.sig_weight[order]
        first = np.searchsorted(sig_key, eng.eng_user * span)  # the engaging user's first signal
        before = np.searchsorted(sig_key, eng.eng_user * span + eng.eng_pos) - first  # signals preceding it
        total = int(before.sum())
        if total <= self.expand_limit * max(len(sig_key), len(eng.eng_item)):
            rows = np.repeat(np.arange(len(before)), before)
            idx = np.repeat(first, before) + np.arange(total) - np.repeat(np.cumsum(before) - before, before)
            return self.model.update_many(start[eng.eng_user], rows, sig_item[idx], sig_weight[idx])
        step = np.arange(sig_key.size) - np.searchsorted(sig_key, sig_user * span)
        u = np.array(start, np.float32, copy=True)
        last = int(before.max())
        for k in range(last + 1):
            now = before == k
            out[now] = u[eng.eng_user[now]]
            sel = step == k
            if k < last and sel.any():
                u = self.model.update_many(u, sig_user[sel], sig_item[sel], sig_weight[sel])
        return out

    def item_sums(self, eng: Engagements, start: NDArray[np.float32]) -> dict[str, ItemSums]:
        """Per engaged title (first-seen order), the batch's fixed-point increments."""
        p = self.vectors_before(eng, start)
        live = np.any(p != 0, axis=1)  # users with no vector at all say nothing about the title
        if not live.any():
            return {}
        items = [i for i, keep in zip(eng.eng_item, live, strict=True) if keep]
        w, p, ts = eng.eng_weight[live], p[live], eng.eng_ts[live]
        index = {item: j for j, item in enumerate(dict.fromkeys(items))}
        inv = np.fromiter((index[i] for i in items), np.int64, len(items))
        contrib = to_fixed(p.astype(np.float64) * w.astype(np.float64)[:, None])
        sums = np.zeros((len(index), p.shape[1]), np.int64)
        np.add.at(sums, inv, contrib)
        wsum = np.zeros(len(index), np.int64)
        np.add.at(wsum, inv, to_fixed(w))
        count = np.bincount(inv, minlength=len(index))
        newest = np.full(len(index), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(newest, inv, ts)
        return {item: ItemSums(int(wsum[j]), int(count[j]), sums[j], int(newest[j])) for item, j in index.items()}


def cosine_distance(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    return 1.0 - float(np.dot(a, b)) / (na * nb)


@dataclass
class _Pending:
    topic: str
    partition: int
    last_offset: int
    items: dict[str, int]  # item -> newest engagement ts
    since: float


class OnlineItemPublisher:
    """Publishes learnt vectors after their batch committed (see the module docstring).

    ``base(item_id)`` gives the content vector when Redis has no ``q0`` (bundle titles without CF data:
    their bundle row). :meth:`note` is called from the effect's write phase; a task started on demand
    drains the pending titles and exits when none are left (so nothing lingers after the worker stops).
    """

    def __init__(self, redis: Any, producer: Any, *, topic: str, bundle_version: str, dim: int, space: int,
                 base: Callable[[str], NDArray[np.float32] | None], keys: KeyLayout = DEFAULT_KEYS,
                 threshold: float = 0.05, prior: float = PRIOR_WEIGHT, give_up_s: float = 60.0) -> None:
        self.redis = redis
        self.sender = KeyedBatchSender(producer)
        self.topic = topic
        self.bundle_version = bundle_version
        self.dim = dim
        self.space = space
        self.base = base
        self.keys = keys
        self.threshold = threshold
        self.prior = prior
        self.give_up_s = give_up_s
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None
        self._catch_up: asyncio.Task[None] | None = None
        # The drain task and the start-up catch-up both publish through ``sender``: one at a time,
        # so that each flush waits for the acks of its own records before marking them published.
        self._publishing = asyncio.Lock()

    def note(self, info: BatchInfo, items: Mapping[str, int]) -> None:
        """Titles of a batch whose MULTI is being queued: publish them once it committed."""
        if not items:
            return
        loop = asyncio.get_running_loop()
        self._pending.append(_Pending(info.topic, info.partition, info.last_offset, dict(items), loop.time()))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())

    def start_catch_up(self) -> None:
        """Run :meth:`catch_up` in the background (the worker's factories are synchronous)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a tool building the effect for its pure parts): nothing to publish from

        async def run() -> None:
            try:
                await self.catch_up()
            except Exception as exc:  # publishing later engagements does not depend on it
                log.warning("item_learning.catch_up_failed", error=repr(exc))

        self._catch_up = loop.create_task(run())

    async def idle(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) until nothing is pending: for tests and orderly shutdowns."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)

    async def _drain(self) -> None:
        delay = 0.005
        while self._pending:
            await asyncio.sleep(delay)  # lets the EXEC that queued them go first
            try:
                await self.publish_committed()
            except Exception as exc:  # Redis/Kafka trouble: keep the titles, retry
                log.warning("item_learning.publish_failed", error=repr(exc))
            delay = min(delay * 2, 0.5)

    async def publish_committed(self) -> int:
        """One pass: the pending titles whose batch committed are published if they moved; returns how many."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        partitions = list(dict.fromkeys((p.topic, p.partition) for p in pending))
        items: dict[str, int] = {}
        for p in pending:
            for item, ts in p.items.items():
                items[item] = max(items.get(item, ts), ts)
        fields = state_fields(self.dim)
        pipe = self.redis.pipeline(transaction=False)
        for topic, partition in partitions:
            pipe.get(self.keys.offset(topic, partition))
        for item in items:
            pipe.hmget(self.keys.item_learning(self.space, item), fields)
        replies = await pipe.execute()
        stored = {tp: int(raw) if raw is not None else -1 for tp, raw in zip(partitions, replies, strict=False)}
        states = dict(zip(items, replies[len(partitions):], strict=True))
        now = asyncio.get_running_loop().time()
        ready: dict[str, int] = {}
        for p in pending:
            if stored[(p.topic, p.partition)] >= p.last_offset:
                for item, ts in p.items.items():
                    ready[item] = max(ready.get(item, ts), ts)
            elif now - p.since < self.give_up_s:
                self._pending.append(p)  # not committed yet (or being redone): look again later
            else:
                log.warning("item_learning.never_committed", topic=p.topic, partition=p.partition,
                            last_offset=p.last_offset, items=len(p.items))
        return await self._publish({item: (ts, states[item]) for item, ts in ready.items()})

    async def _publish(self, states: Mapping[str, tuple[int, Sequence[Any]]]) -> int:
        """Publish the titles (``{item: (ts, HMGET reply)}``) that moved; mark them published; returns how many."""
        async with self._publishing:
            return await self._publish_locked(states)

    async def _publish_locked(self, states: Mapping[str, tuple[int, Sequence[Any]]]) -> int:
        published: dict[str, NDArray[np.float32]] = {}
        for item, (ts, raw) in states.items():
            vector = self.decide(item, parse_learning_state(raw, self.dim))
            if vector is not None:
                key, value = encode_item_vector(ItemVector(item, vector, self.bundle_version, SOURCE, ts))
                await self.sender.add(self.topic, key, value)
                published[item] = vector
        if published:
            await self.sender.flush()
            marks = self.redis.pipeline(transaction=False)
            for item, vector in published.items():
                marks.hset(self.keys.item_learning(self.space, item), "pub", vector_bytes(vector))
            await marks.execute()
            PUBLISHED.inc(len(published))
            log.debug("item_learning.published", items=len(published))
        return len(published)

    async def catch_up(self, chunk: int = 500) -> int:
        """Publish every learning title whose committed vector moved beyond the threshold from ``pub``;
        returns how many. Run once at start-up: it closes the gap a worker killed between a commit and
        its publication leaves (any worker may run it; a repeat is harmless on the compacted topic). The
        records carry ``ts`` 0: the newest engagement's time is not kept in Redis."""
        fields = state_fields(self.dim)
        marker = self.keys.item_learning_space(self.space)
        keys = [key async for key in self.redis.scan_iter(match=f"{marker}*", count=1000)]
        done = 0
        for start in range(0, len(keys), chunk):
            part = [k.decode() if isinstance(k, bytes) else k for k in keys[start:start + chunk]]
            pipe = self.redis.pipeline(transaction=False)
            for key in part:
                pipe.hmget(key, fields)
            replies = await pipe.execute()
            done += await self._publish({key[len(marker):]: (0, raw) for key, raw in zip(part, replies, strict=True)})
        log.info("item_learning.catch_up", titles=len(keys), published=done)
        return done

    def decide(self, item_id: str, state: tuple[ItemSums, bytes | None, bool, bytes | None]
               ) -> NDArray[np.float32] | None:
        """The vector to publish for a title's committed state, or ``None`` (not moved enough, removed,
        no content vector known, nothing learnt yet)."""
        sums, q0_raw, gone, pub_raw = state
        if gone or sums.n == 0:
            return None
        q0 = bytes_vector(q0_raw, self.dim)
        if q0 is None:
            q0 = self.base(item_id)
        if q0 is None:
            return None
        vector = learned_vector(q0, sums.w, sums.s, self.prior)
        if not np.any(vector):
            return None
        last = bytes_vector(pub_raw, self.dim)
        last = q0 if last is None else last
        return vector if cosine_distance(last, vector) > self.threshold else None


class ItemLearningEffect(Effect[InteractionEvent]):
    """The worker effect: reads the engaging users' vectors, ``HINCRBY``\\s the titles' sums."""

    name = "item_learning"

    def __init__(self, learner: ItemLearner, *, space: int, keys: KeyLayout = DEFAULT_KEYS,
                 publisher: OnlineItemPublisher | None = None, bulk: bool = False) -> None:
        self.learner = learner
        self.space = space
        self.keys = keys
        self.publisher = publisher
        self.bulk = bulk  # one FCALL for all increments (online_state.redis_functions, loaded)

    def engagements(self, events: Sequence[InteractionEvent]) -> Engagements:
        return self.learner.engagements(events)

    def read(self, pipe: Any, batch: Batch[InteractionEvent]) -> Reads[Engagements]:
        # write() needs the same engagements: computed once per batch, handed over in the Reads.
        eng = self.engagements(batch.events)
        users = eng.users
        if self.bulk:  # one MGET instead of a GET per user: a pipelined command costs the client ~20 µs
            if users:
                pipe.mget([self.keys.user_vector(user) for user in users])
            return Reads(queued=1 if users else 0, state=eng)
        for user in users:
            pipe.get(self.keys.user_vector(user))
        return Reads(queued=len(users), state=eng)

    def sums(self, events: Sequence[InteractionEvent], replies: list[Any],
             eng: Engagements | None = None) -> dict[str, ItemSums]:
        """The batch's per-title increments given the stored user vectors, one per engaging user (pure);
        ``eng``: the batch's :meth:`engagements`, when known already."""
        eng = self.engagements(events) if eng is None else eng
        if len(replies) != len(eng.users):
            raise ValueError(f"item_learning: {len(eng.users)} reads queued but {len(replies)} replies")
        stored = [unpack_user_vector(r, space=self.space, dim=self.learner.model.dim)[0] for r in replies]
        return self.learner.item_sums(eng, self.learner.start_vectors(eng.users, stored))

    def write(self, pipe: Any, batch: Batch[InteractionEvent], reads: Reads[Engagements]) -> None:
        replies = reads.replies
        if self.bulk:
            replies = replies[0] if replies else []  # the one MGET's values
        sums = self.sums(batch.events, replies, reads.state)
        increments = {self.keys.item_learning(self.space, item): increment_fields(inc)
                      for item, inc in sums.items()}
        if self.bulk:
            # Amounts as decimal strings: HINCRBY parses them exactly (no Lua number rounding).
            hincr_many(pipe, list(increments), [([str(x) for x in fields], []) for fields in increments.values()])
        else:
            for key, fields in increments.items():
                for j in range(0, len(fields), 2):
                    pipe.hincrby(key, fields[j], fields[j + 1])
        if self.publisher is not None:
            self.publisher.note(batch.info, {item: inc.ts for item, inc in sums.items()})


def catalog_learning_writes(pipe: Any, item_id: str, content_vector: NDArray[np.floating] | None,
                            removed: bool, keys: KeyLayout = DEFAULT_KEYS, space: int = 0) -> None:
    """The catalog effect's part: a learnable title's content vector (``q0``), or its removal."""
    key = keys.item_learning(space, item_id)
    if removed:
        pipe.hset(key, "gone", "1")
    elif content_vector is not None:
        pipe.hset(key, "q0", vector_bytes(content_vector))
        pipe.hdel(key, "gone")
