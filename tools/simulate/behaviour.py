"""What a simulated user does with a list of titles, and the events that report it.

A position-biased cascade: the user looks at slot ``p`` with probability ``examine_top * examine_decay ** p`` (the
position bias every logged list has: lower slots are seen less), clicks a title they looked at with probability
``click_scale * q`` (``q``: their true affinity for it, :mod:`~tools.simulate.truth`), starts most of what they
click, then skips, completes or abandons it as the generator's users do (skip ``0.05 + 0.45 (1 - q)``, complete
``0.3 + 0.6 q`` of the rest). Every random number of a list is drawn whatever the outcomes, in one fixed order, so a
seed gives the same decisions for the same lists, and the draws for a batch of lists are one numpy call each.

Time (the simulated clock, epoch ms): the user browses 5 to 90 s before each title they click, plays it a second
later and watches ``watched`` seconds; the next list comes after a think time, or, after a list with nothing played,
the session may end and the user comes back hours later with a new session.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

SESSION_GAP_MS: Final = 15 * 60_000  # as the generator: a user's activity after a longer pause is a new session


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The knobs of the behaviour model (defaults: a list of 10 gets about one play in three for a liked title)."""

    examine_top: float = 0.95
    examine_decay: float = 0.8
    click_scale: float = 0.6
    play_given_click: float = 0.9
    max_plays: int = 3  # titles started from one list at most (the first clicked ones)
    # A title the user already played in this simulation is clicked this much less (people rarely start a film
    # they watched an hour ago): what makes "the system remembers what you just watched" measurable.
    rewatch: float = 0.1
    browse_s: tuple[float, float] = (5.0, 90.0)
    think_mean_s: float = 120.0  # simulated seconds between two lists of one session
    leave_prob: float = 0.3  # after a list with nothing played, the session ends with this probability
    away_mean_s: float = 3 * 3600.0  # simulated seconds until the next session


@dataclass(frozen=True, slots=True)
class Decisions:
    """Per slot of each list (the last axis is the position): what the user did."""

    examined: NDArray[np.bool_]
    click: NDArray[np.bool_]
    play: NDArray[np.bool_]
    skip: NDArray[np.bool_]
    complete: NDArray[np.bool_]
    watched_frac: NDArray[np.float64]  # share of the title watched, where played
    browse_s: NDArray[np.float64]  # seconds spent looking before clicking, where clicked


def decide(q: NDArray[np.float64], rng: np.random.Generator, behaviour: Behaviour = Behaviour()) -> Decisions:
    """Decisions for lists of true affinities ``q`` (shape ``(..., k)``; NaN: a title the user cannot judge, never
    clicked)."""
    b = behaviour
    shape = q.shape
    qz = np.nan_to_num(np.asarray(q, dtype=np.float64), nan=0.0)
    position = np.arange(shape[-1])
    # One draw per slot and decision, all made up front: the same seed gives the same numbers however lists end.
    u_exam, u_click, u_play, u_skip, u_done, u_frac, u_browse = rng.random((7, *shape))
    examined = u_exam < b.examine_top * b.examine_decay ** position
    click = examined & (u_click < b.click_scale * qz)
    click &= np.cumsum(click, axis=-1) <= b.max_plays
    play = click & (u_play < b.play_given_click)
    skip = play & (u_skip < 0.05 + 0.45 * (1.0 - qz))
    complete = play & ~skip & (u_done < 0.3 + 0.6 * qz)
    frac = np.where(skip, 0.01 + 0.09 * u_frac, np.where(complete, 0.92 + 0.08 * u_frac, 0.15 + 0.7 * u_frac))
    browse = b.browse_s[0] + (b.browse_s[1] - b.browse_s[0]) * u_browse
    return Decisions(examined, click, play, skip, complete, np.where(play, frac, 0.0), np.where(click, browse, 0.0))


@dataclass(slots=True)
class Step:
    """One list's outcome for one user: the events to post and where the user's clock ends up."""

    events: list[dict[str, Any]]
    end_ts: int  # the last event's ts (the start when nothing happened)
    counts: dict[str, int] = field(default_factory=dict)


def step_events(
    *, user_id: str, item_ids: list[str], durations: NDArray[np.float64], decisions: Decisions, start_ts: int,
    request_id: str, context: dict[str, Any], new_id: Callable[[], str], impression: bool,
) -> Step:
    """The events of one list (1-D ``decisions``): an ``impression`` when the server did not log the exposure itself
    (``impression``), then per clicked title in slot order ``click``, and per started one ``play`` and ``skip``,
    ``complete`` or (abandoned) ``progress``, each carrying the answer's ``request_id``, on the simulated clock."""
    events: list[dict[str, Any]] = []
    counts = dict.fromkeys(("impression", "click", "play", "skip", "complete", "progress"), 0)

    def add(kind: str, ts: int, **fields: Any) -> None:
        events.append({"type": kind, "event_id": new_id(), "ts": ts, "schema_version": 1, "user_id": user_id,
                       "request_id": request_id, "context": context, **fields})
        counts[kind] += 1

    if impression and item_ids:
        add("impression", start_ts, item_ids=item_ids)
    t = start_ts
    for slot in np.flatnonzero(decisions.click).tolist():
        item = item_ids[slot]
        t += int(decisions.browse_s[slot] * 1000)
        add("click", t, item_id=item, position=slot)
        if not decisions.play[slot]:
            continue
        t += 1000
        add("play", t, item_id=item)
        duration = float(durations[slot])
        watched = round(duration * float(decisions.watched_frac[slot]), 1)
        t += int(watched * 1000)
        if decisions.skip[slot]:
            add("skip", t, item_id=item, watched_seconds=watched)
        elif decisions.complete[slot]:
            add("complete", t, item_id=item, watched_seconds=watched, duration_seconds=duration)
        else:  # abandoned part-way: the last heartbeat says where (what "continue watching" needs)
            add("progress", t, item_id=item, watched_seconds=watched, duration_seconds=duration)
    return Step(events, t, counts)


def satiated(q: NDArray[np.float64], item_ids: list[str], played: set[str], behaviour: Behaviour = Behaviour()
             ) -> NDArray[np.float64]:
    """The affinities of a list after satiation: a title the user already played counts ``rewatch`` times less."""
    if not played:
        return q
    again = np.fromiter((i in played for i in item_ids), bool, len(item_ids))
    return np.where(again, q * behaviour.rewatch, q)


def next_step_delay_ms(played: bool, rng: np.random.Generator, behaviour: Behaviour = Behaviour(),
                       activity: float = 1.0) -> tuple[int, bool]:
    """Simulated ms until the user's next list, and whether it starts a new session. ``activity``: the user's
    activity relative to the simulated users' mean (the generator's lognormal ``activity``): as in the world, a
    heavy viewer comes back sooner, so a user's past engagement predicts their engagement now (what CUPED uses)."""
    u_leave, u_think, u_away = rng.random(3)
    if not played and u_leave < behaviour.leave_prob:
        away_s = behaviour.away_mean_s / max(activity, 1e-3)
        return int(-np.log1p(-u_away) * away_s * 1000) + SESSION_GAP_MS, True
    return int(-np.log1p(-u_think) * behaviour.think_mean_s * 1000), False


def id_maker(prefix: str) -> Callable[[], str]:
    """Event ids ``{prefix}{n}``: unique within a run (the prefix names the run and the user)."""
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter)}"
