"""The users of the synthetic world: static profiles plus a taste that drifts over the log.

A user's taste over genres is ``regime + bias + walk`` (logits, one per genre):

* ``regime`` puts high logits on two or three favourite genres. At random times (a Poisson process
  with :attr:`WorldModel.regime_shifts` expected shifts per user over the span) the favourites are
  redrawn, steering away from the old ones: the user "gets into" different genres. These jumps
  are what makes a model trained on the past go stale, and an online learner worth having.
* ``walk`` is an Ornstein-Uhlenbeck random walk (slow drift that never runs away);
* ``bias`` is static: kids' profiles shun adult genres.

Besides genres a user has a style vector (anchor + its own slow random walk) that meets the
titles' style vectors, so choices inside a genre depend on taste too.

State is advanced lazily, only for users about to have a session, so the cost is per session and
memory is O(users), whatever the number of events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from schemas.events import DEVICES, MATURITY_ORDER, UserUpsert
from tools.datasets.world_catalog import _GENRE_SHARE, ADULT_GENRES, GENRES, KID_GENRES, STYLE_DIMS

COUNTRIES: Final[tuple[str, ...]] = (
    "US", "GB", "CA", "DE", "FR", "ES", "NL", "SE", "BR", "MX", "IN", "JP", "KR", "AU",
)
_COUNTRY_SHARE: Final = np.array([34, 8, 5, 7, 6, 4, 2, 1, 8, 5, 8, 5, 3, 4], dtype=np.float64)
# One UTC offset per country (hours) is enough for local_hour patterns.
COUNTRY_TZ: Final = np.array([-5, 0, -5, 1, 1, 1, 1, 1, -3, -6, 5, 9, 9, 10], dtype=np.int64)

HOUR_TYPES: Final[tuple[str, ...]] = ("evening", "night_owl", "daytime", "commuter", "kids")
_KIDS_TYPE: Final = HOUR_TYPES.index("kids")
_COMMUTER_TYPE: Final = HOUR_TYPES.index("commuter")


def _hour_profile(peaks: tuple[tuple[float, float, float], ...]) -> NDArray[np.float64]:
    """Relative session rate per local hour: a floor plus Gaussian bumps (peak hour, width, height)."""
    h = np.arange(24, dtype=np.float64)
    rate = np.full(24, 0.04)
    for peak, width, height in peaks:
        d = np.minimum(np.abs(h - peak), 24 - np.abs(h - peak))
        rate += height * np.exp(-0.5 * (d / width) ** 2)
    return rate / rate.sum()


HOUR_PROFILES: Final = np.stack([
    _hour_profile(((20.5, 1.5, 1.0), (13.0, 1.5, 0.2))),  # evening
    _hour_profile(((23.5, 1.8, 1.0), (1.5, 1.2, 0.5))),  # night_owl
    _hour_profile(((13.5, 2.5, 1.0), (10.0, 1.0, 0.3))),  # daytime
    _hour_profile(((8.0, 1.0, 0.8), (18.0, 1.0, 0.8), (21.0, 1.5, 0.4))),  # commuter
    _hour_profile(((16.5, 1.5, 1.0), (8.0, 1.0, 0.3), (19.0, 1.0, 0.5))),  # kids
])
_ADULT_TYPE_SHARE: Final = np.array([0.45, 0.20, 0.15, 0.20])
# Primary-device distributions over DEVICES = tv, mobile, tablet, web, console, other.
_DEVICE_COMMUTER: Final = np.array([0.15, 0.60, 0.10, 0.10, 0.03, 0.02])
_DEVICE_KIDS: Final = np.array([0.40, 0.10, 0.45, 0.0, 0.05, 0.0])
_DEVICE_OTHER: Final = np.array([0.50, 0.17, 0.08, 0.13, 0.09, 0.03])


@dataclass(frozen=True, slots=True)
class WorldModel:
    """Knobs of the behaviour model; the defaults are what ``streamrec generate`` uses."""

    regime_shifts: float = 4.0  # expected favourite-genre switches per user over the span
    favourite_logits: tuple[float, ...] = (3.5, 2.8, 2.1)
    walk_sd: float = 0.6  # stationary sd of the genre random walk
    walk_tau: float = 0.3  # its correlation time, as a share of the span
    style_sd: float = 0.35  # per-dimension sd of the user's style vector
    style_walk_sd: float = 0.2
    style_beta: float = 1.0  # weight of style·style in the choice softmax


@dataclass(slots=True)
class Users:
    ids: list[str]
    country: NDArray[np.int64]
    tz: NDArray[np.int64]
    limit: NDArray[np.int8]  # maturity rank a profile may watch, index into MATURITY_ORDER
    age: NDArray[np.int64]
    kid: NDArray[np.bool_]
    group: NDArray[np.int64]  # country * len(HOUR_TYPES) + hour type
    activity: NDArray[np.float64]
    device1: NDArray[np.int64]
    device2: NDArray[np.int64]
    regime: NDArray[np.float32]  # (users, genres)
    bias: NDArray[np.float32]
    walk: NDArray[np.float32]
    style_anchor: NDArray[np.float32]  # (users, STYLE_DIMS)
    style_walk: NDArray[np.float32]
    last_ms: NDArray[np.int64]
    next_shift: NDArray[np.int64]
    busy_until: NDArray[np.int64]
    seen: NDArray[np.bool_]

    @property
    def n(self) -> int:
        return len(self.ids)

    def upsert(self, u: int, event_id: str, ts: int) -> UserUpsert:
        return UserUpsert(
            event_id=event_id, ts=ts, schema_version=1, user_id=self.ids[u],
            country=COUNTRIES[self.country[u]],
            maturity_limit=MATURITY_ORDER[self.limit[u]],
            age=int(self.age[u]),
        )


class TasteModel:
    """Draws users and moves their tastes forward in time."""

    def __init__(self, rng: np.random.Generator, model: WorldModel, start_ts: int, span_ms: int) -> None:
        self.rng = rng
        self.model = model
        self.span_ms = span_ms
        self.start_ts = start_ts
        self.walk_tau_ms = max(1.0, model.walk_tau * span_ms)
        self.regime_mean_ms = span_ms / model.regime_shifts if model.regime_shifts > 0 else 0.0
        self.log_share = np.log(_GENRE_SHARE / _GENRE_SHARE.sum()).astype(np.float32)
        self.kid_mask = np.zeros(len(GENRES), dtype=bool)
        self.kid_mask[sorted(KID_GENRES)] = True

    def build(self, n: int) -> Users:
        rng, model = self.rng, self.model
        country = rng.choice(len(COUNTRIES), size=n, p=_COUNTRY_SHARE / _COUNTRY_SHARE.sum())
        kind = rng.choice(3, size=n, p=[0.10, 0.08, 0.82])  # kid, teen, adult
        kid = kind == 0
        age = np.where(kid, rng.integers(5, 13, n), np.where(kind == 1, rng.integers(13, 18, n), 0))
        age = np.where(kind == 2, np.clip(rng.gamma(6.0, 6.0, n) + 18, 18, 90).astype(np.int64), age)
        adult_limit = np.where(rng.random(n) < 0.1, 3, 5)  # most adults have no limit ("NR")
        limit = np.where(kid, np.where(age < 8, 0, 1), np.where(kind == 1, 2, adult_limit))
        hour_type = np.where(kid, _KIDS_TYPE, rng.choice(4, size=n, p=_ADULT_TYPE_SHARE))
        device1 = np.empty(n, dtype=np.int64)
        for t, probs in ((_KIDS_TYPE, _DEVICE_KIDS), (_COMMUTER_TYPE, _DEVICE_COMMUTER)):
            sel = hour_type == t
            device1[sel] = rng.choice(len(DEVICES), size=int(sel.sum()), p=probs)
        sel = (hour_type != _KIDS_TYPE) & (hour_type != _COMMUTER_TYPE)
        device1[sel] = rng.choice(len(DEVICES), size=int(sel.sum()), p=_DEVICE_OTHER)
        device2 = rng.choice(len(DEVICES), size=n, p=_DEVICE_OTHER)
        device2 = np.where(device2 == device1, (device1 + 1) % len(DEVICES), device2)

        bias = np.zeros((n, len(GENRES)), dtype=np.float32)
        bias[np.ix_(kid, sorted(ADULT_GENRES))] = -6.0  # kids' profiles hardly ever pick adult genres
        bias[np.ix_(kid, sorted(set(range(len(GENRES))) - KID_GENRES - ADULT_GENRES))] = -2.0
        g = len(GENRES)
        users = Users(
            ids=[f"u{i:0{max(6, len(str(n - 1)))}d}" for i in range(n)],
            country=country.astype(np.int64), tz=COUNTRY_TZ[country], limit=limit.astype(np.int8),
            age=age.astype(np.int64), kid=kid, group=(country * len(HOUR_TYPES) + hour_type).astype(np.int64),
            # Lognormal activity: a few heavy viewers, many light ones.
            activity=rng.lognormal(0.0, 1.0, n), device1=device1, device2=device2,
            regime=np.zeros((n, g), dtype=np.float32), bias=bias,
            walk=(rng.standard_normal((n, g)) * model.walk_sd).astype(np.float32),
            style_anchor=(rng.standard_normal((n, STYLE_DIMS)) * model.style_sd).astype(np.float32),
            style_walk=(rng.standard_normal((n, STYLE_DIMS)) * model.style_walk_sd).astype(np.float32),
            last_ms=np.full(n, self.start_ts, dtype=np.int64),
            next_shift=self._next_shift(n, self.start_ts),
            busy_until=np.zeros(n, dtype=np.int64), seen=np.zeros(n, dtype=bool),
        )
        everyone = np.arange(n)
        users.regime[everyone] = self._regimes(everyone, users)
        return users

    def _next_shift(self, n: int, now: int) -> NDArray[np.int64]:
        if self.regime_mean_ms <= 0:
            return np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        return now + self.rng.exponential(self.regime_mean_ms, n).astype(np.int64)

    def _regimes(self, idx: NDArray[np.int64], users: Users) -> NDArray[np.float32]:
        """New favourite genres for users ``idx``: Gumbel top-k, avoiding the current favourites."""
        fav = np.asarray(self.model.favourite_logits, dtype=np.float32)
        score = np.broadcast_to(self.log_share, (len(idx), len(GENRES))).copy()
        score[users.kid[idx]] += np.where(self.kid_mask, 0.0, -50.0).astype(np.float32)
        score -= 4.0 * (users.regime[idx] > 0)
        score += self.rng.gumbel(size=score.shape).astype(np.float32)
        top = np.argsort(-score, axis=1)[:, : len(fav)]
        out = np.zeros((len(idx), len(GENRES)), dtype=np.float32)
        np.put_along_axis(out, top, fav[None, :], axis=1)
        return out

    def advance(self, users: Users, idx: NDArray[np.int64], now: int) -> None:
        """Move the tastes of users ``idx`` (unique) forward to time ``now``."""
        dt = (now - users.last_ms[idx]).astype(np.float64)
        decay = np.exp(-dt / self.walk_tau_ms)
        step = np.sqrt(1.0 - decay * decay)
        rng, model = self.rng, self.model
        users.walk[idx] = users.walk[idx] * decay[:, None] + (
            step[:, None] * model.walk_sd * rng.standard_normal((len(idx), len(GENRES)))
        )
        users.style_walk[idx] = users.style_walk[idx] * decay[:, None] + (
            step[:, None] * model.style_walk_sd * rng.standard_normal((len(idx), STYLE_DIMS))
        )
        users.last_ms[idx] = now
        shift = idx[users.next_shift[idx] <= now]
        if shift.size:
            users.regime[shift] = self._regimes(shift, users)
            users.next_shift[shift] = self._next_shift(len(shift), now)

    @staticmethod
    def genre_logits(users: Users, idx: NDArray[np.int64]) -> NDArray[np.float32]:
        return users.regime[idx] + users.bias[idx] + users.walk[idx]

    @staticmethod
    def style(users: Users, idx: NDArray[np.int64]) -> NDArray[np.float32]:
        return users.style_anchor[idx] + users.style_walk[idx]
