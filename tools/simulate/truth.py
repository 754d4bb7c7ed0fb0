"""The simulated users' ground truth: the generated world itself, rebuilt from its ``world.json``.

``streamrec generate`` is deterministic: the seed and the parameters in ``world.json`` give the same catalogue, the
same users and, replaying the same sessions (:func:`tools.datasets.world.replay_world`, nothing written), the same
drifted tastes as at the log's last line. The simulator carries on from there: each simulated user's taste keeps
drifting with the generator's own :class:`~tools.datasets.world_users.TasteModel` as the simulated clock moves,
from a random stream of its own (so the order in which asyncio runs the users changes nothing).

Ids: the log names users and titles by the generator's ``Users.ids`` and ``Catalog.ids`` (index ``i`` is the ``i``-th
of each), so the mapping is those two lists; titles the world does not know (added by someone else) have no truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import orjson
from numpy.typing import NDArray

from schemas.events import DEVICES
from tools.datasets.world import DAY_MS, WorldConfig, WorldState, config_from_json, replay_world
from tools.datasets.world_catalog import Catalog
from tools.datasets.world_sessions import HOUR_MS
from tools.datasets.world_users import COUNTRIES, TasteModel, Users

# The generator's affinity (world_sessions.SessionSimulator.chunk): q = sigmoid(genre logit + beta * style.style
# - 1.5) drives its skips, completes and ratings; the simulator's users use the same q, so a title the log's users
# liked is one the simulated users like.
AFFINITY_OFFSET: Final = 1.5
# A session's device, as the generator draws it: the user's first device, their second, or any.
_DEVICE1_SHARE: Final = 0.72
_DEVICE2_SHARE: Final = 0.23


@dataclass(slots=True)
class GroundTruth:
    config: WorldConfig
    catalog: Catalog
    users: Users
    origin_ts: int  # the simulated clock's start: just after the log's last event
    item_index: dict[str, int]

    @property
    def span_ms(self) -> int:
        return round(self.config.days * DAY_MS)

    def taste_model(self, rng: np.random.Generator) -> TasteModel:
        """The generator's taste model drawing from ``rng`` (one per simulated user, see the module docstring)."""
        return TasteModel(rng, self.config.model, self.config.start_ts, self.span_ms)

    def items(self, item_ids: list[str]) -> NDArray[np.int64]:
        """World indices of ``item_ids``; -1 for titles the world does not have."""
        get = self.item_index.get
        return np.array([get(i, -1) for i in item_ids], dtype=np.int64)

    def affinity_logit(self, user: int, items: NDArray[np.int64]) -> NDArray[np.float64]:
        """The generator's affinity logit of ``user`` for world titles ``items`` (NaN where an index is -1)."""
        known = items >= 0
        idx = np.where(known, items, 0)
        u = np.array([user])
        genre = TasteModel.genre_logits(self.users, u)[0, self.catalog.genre[idx]]
        style = self.catalog.style[idx] @ TasteModel.style(self.users, u)[0]
        beta = self.config.model.style_beta
        logit = genre.astype(np.float64) + beta * style.astype(np.float64) - AFFINITY_OFFSET
        return np.where(known, logit, np.nan)

    def affinity(self, user: int, items: NDArray[np.int64]) -> NDArray[np.float64]:
        """True affinity in (0, 1) (the generator's ``q``); NaN for titles the world does not have."""
        return 1.0 / (1.0 + np.exp(-self.affinity_logit(user, items)))

    def pick_users(self, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """``n`` distinct world users (all of them when the world has fewer), the heavy viewers more likely, as
        the generator picks who starts a session."""
        n = min(n, self.users.n)
        p = self.users.activity / self.users.activity.sum()
        return np.sort(rng.choice(self.users.n, size=n, replace=False, p=p))

    def device(self, user: int, rng: np.random.Generator) -> str:
        r = rng.random()
        if r < _DEVICE1_SHARE:
            return DEVICES[int(self.users.device1[user])]
        if r < _DEVICE1_SHARE + _DEVICE2_SHARE:
            return DEVICES[int(self.users.device2[user])]
        return DEVICES[int(rng.integers(0, len(DEVICES)))]

    def country(self, user: int) -> str:
        return COUNTRIES[int(self.users.country[user])]

    def local_hour(self, user: int, ts: int) -> int:
        return int((ts // HOUR_MS + int(self.users.tz[user])) % 24)


def read_world_json(world_dir: Path) -> dict[str, object]:
    path = Path(world_dir) / "world.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --world must be a directory made by `streamrec generate`")
    doc: dict[str, object] = orjson.loads(path.read_bytes())
    return doc


def load_truth(world_dir: Path) -> GroundTruth:
    """The world of ``world_dir/world.json`` as it stands at its log's end (see the module docstring)."""
    doc = read_world_json(world_dir)
    config = config_from_json(doc)  # type: ignore[arg-type]
    return truth_from_state(config, replay_world(config), doc.get("last_event_ts"))  # type: ignore[arg-type]


def truth_from_state(config: WorldConfig, state: WorldState, last_event_ts: int | None) -> GroundTruth:
    # The log's last ts, or the span's end for an empty log: the simulated clock starts right after it.
    origin = (int(last_event_ts) if last_event_ts is not None else state.end) + 1
    return GroundTruth(config=config, catalog=state.catalog, users=state.users, origin_ts=origin,
                       item_index={item: i for i, item in enumerate(state.catalog.ids)})
