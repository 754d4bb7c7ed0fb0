"""The simulation loop: N users of a generated world, each a task, against the HTTP API for M minutes of wall time.

Clocks. Every user has a simulated clock (epoch ms on the world's time line, starting just after the log's last
event): it moves by the user's own think, browse and watch times only, so a seed gives the same timestamps whatever
the machine's speed. The wall clock paces it: simulated time runs ``time_scale`` times faster than the wall, and a
user sleeps until the wall catches up with their clock (a user who watched a two-hour film is away for two hours of
simulated time). Requests carry the user's clock as ``now``, events as ``ts``.

Load. A semaphore bounds the requests in flight (``concurrency``); each user waits at least ``min_gap_s`` between
two lists, and after a failed call (the client has already retried 429/503 after their ``Retry-After``) backs off
exponentially: the simulator never hammers a server that sheds load.

Determinism. Each user draws from a stream of its own (``SeedSequence(seed)`` spawned per user), and its taste
drifts from another; for the same answers the same seed gives the same decisions and events, whatever the order in
which asyncio runs the users. Event ids are ``sim-{run}-{user}-{n}``: ``run`` is new per run (unless given) so that
the workers' exactly-once (per ``event_id``) never drops a rerun's events as duplicates.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

from foundation.logs import get_logger
from streamrec.client import ApiError, AsyncClient
from tools.simulate.api import Tries, make_client
from tools.simulate.behaviour import Behaviour, decide, id_maker, next_step_delay_ms, satiated, step_events
from tools.simulate.stats import Tally, summarise
from tools.simulate.truth import GroundTruth

log = get_logger(__name__)
T = TypeVar("T")

_MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    url: str
    api_key: str | None = None
    users: int = 100
    minutes: float = 1.0
    seed: int = 0
    concurrency: int = 16
    k: int = 10
    time_scale: float = 600.0  # simulated ms per wall ms
    min_gap_s: float = 0.1  # a user's shortest wall pause between two lists
    # A user's reaction: wall seconds between seeing a list and sending what they did with it. Real users take
    # seconds; without a pause a simulated one could beat the server's exposure (sent every exposure_flush_ms) to
    # Kafka, and its outcome would reach the worker before the exposure it belongs to.
    react_s: float = 0.3
    timeout_s: float = 5.0
    run_id: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)


@dataclass(slots=True)
class SimUser:
    index: int  # in the world's users
    user_id: str
    rng: np.random.Generator
    taste_rng: np.random.Generator
    clock_ms: int
    new_id: Callable[[], str]
    session: int = -1
    device: str = "tv"
    failures: int = 0
    played: set[str] = field(default_factory=set)  # titles started in this simulation (see Behaviour.rewatch)
    activity: float = 1.0  # the world's activity of the user over the simulated users' mean


def make_users(truth: GroundTruth, config: SimulationConfig, run_id: str) -> list[SimUser]:
    """The simulated users, each with its streams and a first list a think time after the log's end."""
    seq = np.random.SeedSequence(config.seed % (1 << 64))
    picker, *streams = seq.spawn(1 + 2 * min(config.users, truth.users.n))
    chosen = truth.pick_users(config.users, np.random.default_rng(picker))
    activity = truth.users.activity[chosen] / max(float(truth.users.activity[chosen].mean()), 1e-9)
    users = []
    for n, u in enumerate(chosen.tolist()):
        rng = np.random.default_rng(streams[2 * n])
        user_id = truth.users.ids[u]
        # Staggered starts: the first list after one think time, so users do not all arrive at once.
        first = truth.origin_ts + int(rng.exponential(config.behaviour.think_mean_s) * 1000)
        users.append(SimUser(u, user_id, rng, np.random.default_rng(streams[2 * n + 1]), first,
                             id_maker(f"sim-{run_id}-{user_id}-"), activity=float(activity[n])))
    return users


class Simulation:
    def __init__(self, truth: GroundTruth, config: SimulationConfig, api: AsyncClient, tries: Tries,
                 progress: Callable[[int], None] | None = None) -> None:
        self.truth, self.config, self.api, self.tries = truth, config, api, tries
        self.progress = progress
        self.tally = Tally()
        self.run_id = config.run_id or uuid.uuid4().hex[:10]
        self.gate = asyncio.Semaphore(config.concurrency)
        self.wall0 = 0.0
        self.deadline = 0.0
        self.max_clock = truth.origin_ts

    def _sim_now(self) -> int:
        """The simulated time the wall clock has reached."""
        return self.truth.origin_ts + int((time.monotonic() - self.wall0) * 1000 * self.config.time_scale)

    def _wall_due(self, clock_ms: int) -> float:
        return self.wall0 + (clock_ms - self.truth.origin_ts) / 1000 / self.config.time_scale

    async def run(self) -> dict[str, Any]:
        users = make_users(self.truth, self.config, self.run_id)
        if len(users) < self.config.users:
            log.warning("simulate.users_capped", asked=self.config.users, world_users=len(users))
        log.info("simulate.start", users=len(users), url=self.config.url, minutes=self.config.minutes,
                 concurrency=self.config.concurrency, seed=self.config.seed, run_id=self.run_id,
                 origin_ts=self.truth.origin_ts, time_scale=self.config.time_scale)
        self.wall0 = time.monotonic()
        self.deadline = self.wall0 + self.config.minutes * 60.0
        await asyncio.gather(*(self._user_loop(user) for user in users))
        wall_s = time.monotonic() - self.wall0
        summary = summarise(self.tally, self.tries, users=len(users), wall_s=wall_s,
                            sim_span_ms=self.max_clock - self.truth.origin_ts)
        log.info("simulate.done", **{k: v for k, v in summary.items() if not isinstance(v, dict)})
        return summary

    async def _user_loop(self, user: SimUser) -> None:
        taste = self.truth.taste_model(user.taste_rng)
        me = np.array([user.index])
        last_wall = -float("inf")
        new_session = True
        while True:
            now = time.monotonic()
            due = max(self._wall_due(user.clock_ms), last_wall + self.config.min_gap_s)
            if due >= self.deadline:
                return
            if due > now:
                await asyncio.sleep(due - now)
            last_wall = time.monotonic()
            if user.clock_ms > int(self.truth.users.last_ms[user.index]):
                taste.advance(self.truth.users, me, user.clock_ms)  # tastes drift as the generator's
            if new_session:
                user.session += 1
                user.device = self.truth.device(user.index, user.rng)
            played, ok = await self._step(user)
            if not ok:
                # The client already honoured Retry-After on 429/503; a call that still failed means the server is
                # in trouble: this user backs off (exponentially), and its clock follows the wall meanwhile.
                user.failures += 1
                backoff = min(_MAX_BACKOFF_S, 0.5 * 2 ** user.failures)
                last_wall = time.monotonic() + backoff - self.config.min_gap_s
                user.clock_ms = max(user.clock_ms, self._sim_now()) + int(backoff * 1000 * self.config.time_scale)
                new_session = False
                continue
            user.failures = 0
            delay, new_session = next_step_delay_ms(played, user.rng, self.config.behaviour, user.activity)
            user.clock_ms += delay
            if self.progress is not None:
                self.progress(1)

    async def _call(self, tally: Tally, what: str, user: SimUser, call: Awaitable[T]) -> T | None:
        """One API call within the concurrency bound; a failure is counted and logged, and gives ``None``."""
        try:
            async with self.gate:
                return await call
        except ApiError as error:
            tally.failures[f"{what} {error.status}"] += 1
            log.warning(f"simulate.{what}_failed", status=error.status, field=error.field, user=user.user_id)
        except httpx.HTTPError as error:
            tally.failures[f"{what} transport"] += 1
            log.warning(f"simulate.{what}_failed", error=type(error).__name__, user=user.user_id)
        return None

    async def _step(self, user: SimUser) -> tuple[bool, bool]:
        """One list: fetch, decide, post. Returns (anything played, the calls succeeded)."""
        truth, tally, clock = self.truth, self.tally, user.clock_ms
        context = {"device": user.device, "country": truth.country(user.index),
                   "local_hour": truth.local_hour(user.index, clock),
                   "session_id": f"sim-{self.run_id}-{user.user_id}-s{user.session}"}
        recs = await self._call(tally, "recommendations", user, self.api.recommendations(
            user.user_id, k=self.config.k, now_ms=clock, device=context["device"], country=context["country"],
            hour=context["local_hour"]))
        if recs is None:
            return False, False
        tally.requests += 1
        tally.degraded += recs.degraded
        tally.users_active.add(user.user_id)
        tally.experiments(user.user_id, recs.experiments)
        item_ids = [item.item_id for item in recs.items]
        if not item_ids:
            tally.steps_without_list += 1
            return False, True
        idx = truth.items(item_ids)
        q = truth.affinity(user.index, idx)
        q = satiated(q, item_ids, user.played, self.config.behaviour)  # what they played is seldom restarted
        decisions = decide(q, user.rng, self.config.behaviour)
        user.played.update(item for item, played in zip(item_ids, decisions.play.tolist(), strict=True) if played)
        tally.shown(q, decisions.play)
        durations = np.where(idx >= 0, truth.catalog.duration[np.maximum(idx, 0)], 0.0)
        # The server logs the exposure itself for answers in an experiment; for the others the client does.
        step = step_events(user_id=user.user_id, item_ids=item_ids, durations=durations, decisions=decisions,
                           start_ts=clock, request_id=recs.request_id, context=context, new_id=user.new_id,
                           impression=not recs.experiments)
        user.clock_ms = step.end_ts
        self.max_clock = max(self.max_clock, step.end_ts)
        played = bool(decisions.play.any())
        if played:
            tally.users_played.add(user.user_id)
        if not step.events:
            return played, True
        await asyncio.sleep(self.config.react_s)
        accepted = await self._call(tally, "events", user, self.api.send_events(step.events))
        if accepted is None:
            return played, False
        tally.event_batches += 1
        tally.events_posted += accepted.accepted
        tally.events_refused += len(accepted.refused)
        tally.outcomes.update(step.counts)
        return played, True


async def simulate(truth: GroundTruth, config: SimulationConfig, progress: Callable[[int], None] | None = None,
                   transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Run the simulation (see the module docstring); returns the summary. ``transport``: what carries the requests
    (default: real connections)."""
    tries = Tries()
    async with make_client(config.url, config.api_key, tries, config.concurrency, config.timeout_s,
                           transport) as api:
        return await Simulation(truth, config, api, tries, progress).run()
