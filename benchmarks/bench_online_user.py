"""Online user vectors on a drifting synthetic world: next-item HR@20, frozen vs online vs refold.

    python benchmarks/bench_online_user.py [--seeds 2 3 4] [--users 300] [--items 1000]
        [--events 60000] [--days 30] [--dim 32] [--grid]

For each seed: generate a world (:func:`tools.datasets.world.generate_world`, tastes drift),
fit ALS on the first half of its time span, and score every later first play of a title by the
user's rank of it (:func:`models.online_user.drift_hit_rates`): ``frozen`` training vectors,
``online`` ones updated per event by :class:`models.online_user.OnlineUserModel`, and ``refold``
(the ALS fold-in of the whole history so far: what a full recompute per event would give).
``--grid`` scans the step/reg multipliers (pick them on a seed you then do not report).
Also times River's ``learn_one`` against the vectorised rule (µs per event). Prints one JSON line
per seed and a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.cf import fit_cf
from models.dataset import load_log
from models.online_user import OnlineUserModel, RiverOnlineUser, drift_hit_rates
from tools.datasets.world import generate_world


def per_event_cost(model: OnlineUserModel, n_events: int = 20_000, n_users: int = 2_000) -> dict[str, float]:
    """µs per event: River learn_one, the rule for one user at a time, and update_many on a batch."""
    rng = np.random.default_rng(0)
    items = rng.integers(model.n_items, size=n_events)
    weights = rng.choice(np.array([1.0, 2.0, -1.0, 0.25], np.float32), size=n_events)
    owner = rng.integers(n_users, size=n_events)
    events = [(int(i), float(w), 0) for i, w in zip(items, weights, strict=True)]
    river = RiverOnlineUser(model)
    t = time.perf_counter()
    river.learn("u", None, events)
    river_us = (time.perf_counter() - t) / n_events * 1e6
    t = time.perf_counter()
    vec = None
    for e in events[:5000]:
        vec = model.update(vec, [e])
    single_us = (time.perf_counter() - t) / 5000 * 1e6
    start = np.zeros((n_users, model.dim), np.float32)
    t = time.perf_counter()
    for _ in range(5):
        model.update_many(start, owner, items, weights)
    batch_us = (time.perf_counter() - t) / (5 * n_events) * 1e6
    return {"river_learn_one_us": river_us, "numpy_one_event_us": single_us, "numpy_batch_us": batch_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--grid", action="store_true")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            generate_world(Path(tmp), users=args.users, items=args.items, events=args.events, seed=seed,
                           days=args.days)
            log = load_log(Path(tmp))
        split = int(log.ts.min() + (log.ts.max() - log.ts.min()) // 2)
        cf = fit_cf(log.select(log.ts < split), dim=args.dim, seed=0)
        grid = [(s, r) for s in (0.05, 0.1, 0.25, 0.5, 1.0) for r in (0.0, 0.02, 0.1)] if args.grid else [(None, None)]
        for step, reg in grid:
            scale = OnlineUserModel(cf.item_vectors).scale
            model = OnlineUserModel(cf.item_vectors, lr=None if step is None else step / scale,
                                    reg=None if reg is None else reg * scale)
            t = time.perf_counter()
            res = drift_hit_rates(log, cf.item_vectors, cf.user_vectors, split, model, refold=cf)
            row = {"seed": seed, "step": step, "reg": reg, **res, "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.grid:
        print(json.dumps({name: float(np.mean([r[name] for r in rows])) for name in ("frozen", "online", "refold")}))
        print(json.dumps(per_event_cost(OnlineUserModel(cf.item_vectors))))


if __name__ == "__main__":
    main()
