"""Latency of ``RecommendationService.recommend()`` per stage, beside floors measured in the same run.

    STREAMREC_REDIS_URL=redis://127.0.0.1:46379/0 python benchmarks/bench_pipeline.py \
        [--artifacts DIR --data DIR] [--requests 300] [--users 400 --items 3000 --events 30000]

Needs a running Redis (``streamrec stack up``; Kafka is not used: the live tail and the bundle
watcher are off). Without ``--artifacts`` it generates a world and trains a bundle first (~1-2 min).
Redis is loaded with realistic online state for the world's events re-stamped to end a minute ago:
feature state through ``RedisFeatureStore.apply``, trending through ``TrendingEffect``, online user
vectors (the bundle's CF vectors) — so every source and every feature read hits real keys.

Requests cycle over the bundle's users (with context), after a warm-up. Per stage the median over
requests of the service's own ``timings_ms``; the floors, timed in blocks interleaved with the
requests so that noise from the shared machine lands on both:

- candidates floor: one HNSW query for as many items as the request's merged candidates plus one
  raw pipelined round trip of the stage-1 keys (no decoding);
- features floor: one raw pipeline of the commands stage 2 sends (``GET`` user + the reader's script
  over the candidates' keys), reply not decoded; for reference also the one-``HMGET``-per-candidate
  pipeline of ``RedisFeatureStore.read`` (``features_hmget_pipeline``);
- ranking floor: ``InferenceSession.run`` on the same-sized, pre-built feed.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from foundation.settings import Settings
from models.bundle import open_bundle
from models.config import TwoStageConfig
from models.features.hashing import hash_str
from models.features.rows import RequestContext, feature_batch
from models.features.state import EventBatch, ItemStates
from models.recommend.pipeline import RecommendRequest, Snapshot, extra_dense, retrieve
from models.train import train_bundle
from online_state.keys import DEFAULT_KEYS
from online_state.trending import WINDOWS, generation
from online_state.user_vectors import pack_user_vector
from schemas.decoder import interaction_decoder
from serving.options import ServingOptions
from serving.service import RecommendationService
from streams.effects import Batch, BatchInfo, Reads
from streams.trending import TrendingEffect
from tools.datasets.world import generate_world

BLOCK = 20
STAGES = ("candidates", "features", "ranking", "postprocess", "total")


def _build(users: int, items: int, events: int) -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    generate_world(root / "data", users=users, items=items, events=events, seed=5, days=14)
    train_bundle(root / "data", root / "artifacts", TwoStageConfig(dim=32, rank_users=200, ranker_epochs=2))
    return root / "artifacts", root / "data"


async def _load_redis(service: RecommendationService, data: Path) -> int:
    """The world's interactions, shifted to end a minute ago, into the feature store and trending."""
    redis = service.redis
    await redis.flushdb()
    lines = (data / "events.jsonl").read_bytes().splitlines()
    events, _ = interaction_decoder.decode_many(lines)
    shift = int(time.time() * 1000) - 60_000 - max(e.ts for e in events)
    events = [msgspec.structs.replace(e, ts=e.ts + shift) for e in events]
    store = service._served.store
    trending = TrendingEffect()
    for start in range(0, len(events), 2000):
        chunk = events[start:start + 2000]
        await store.apply(EventBatch.from_events(chunk, store.static))
        pipe = redis.pipeline(transaction=False)
        trending.write(pipe, Batch(BatchInfo("interactions", 0, 0, 0), chunk), Reads())
        await pipe.execute()
    model = service.model
    pipe = redis.pipeline(transaction=False)
    for user_id, row in model.user_index.items():
        if model.trained_users[row]:
            pipe.set(DEFAULT_KEYS.user_vector(user_id), pack_user_vector(model.user_vectors[row], 1, model.space))
    await pipe.execute()
    return len(events)


async def _raw_stage1(service: RecommendationService, user_id: str, now: int) -> None:
    """The stage-1 commands without decoding (the keys read_online_state reads, 4 scopes x 2 generations)."""
    window = service.options.trending_window
    gen = generation(now, WINDOWS[window])
    keys = service._served.store.keys
    pipe = service.redis.pipeline(transaction=False)
    pipe.get(keys.user_vector(user_id))
    pipe.get(keys.session(user_id))
    pipe.get(keys.user_state(user_id))
    for scope in ("all", "country:US", "device:tv", "hour:20"):
        for g in (gen, gen - 1):
            pipe.execute_command("ZREVRANGE", keys.trending(window, scope, g), 0, 149, "WITHSCORES")  # raw reply
    pipe.zrevrangebyscore(keys.new_releases, now, "-inf", start=0, num=200, withscores=True)
    await pipe.execute()


async def _raw_features(service: RecommendationService, user_id: str, ids: list[str], now: int,
                        scripted: bool) -> None:
    """Stage 2's keys, replies not decoded: through the reader's script (``scripted``) or as the
    one-HMGET-per-candidate pipeline of ``RedisFeatureStore.read``."""
    served = service._served
    store = served.store
    fields, _ = store.item_fields(now)
    pipe = service.redis.pipeline(transaction=False)
    pipe.get(store.keys.user_state(user_id))
    if scripted:
        assert served.reader is not None
        await served.reader.script(keys=[store.keys.item_state(i) for i in ids], args=fields, client=pipe)
    else:
        for item_id in ids:
            pipe.hmget(store.keys.item_state(item_id), fields)
    await pipe.execute()


def _median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    artifacts, data = (Path(args.artifacts), Path(args.data)) if args.artifacts else \
        _build(args.users, args.items, args.events)
    settings = Settings()
    # Budgets far above the stages: this measures the stages, it must not cut them short.
    options = ServingOptions(candidates_timeout_ms=5000, features_timeout_ms=5000)
    service = await RecommendationService.start(settings, artifacts, tail_index=False, watch_bundle=False,
                                                options=options)
    try:
        loaded = await _load_redis(service, data)
        model = service.model
        users = [u for u, row in model.user_index.items() if model.trained_users[row]]
        contexts = [("tv", "US", 20), ("mobile", "DE", 8), ("web", None, None)]
        sess = model.ranker.session
        stage: dict[str, list[float]] = {s: [] for s in STAGES}
        floors: dict[str, list[float]] = {"ann": [], "stage1_redis": [], "features_redis": [], "onnx": [],
                                          "features_hmget_pipeline": []}
        n_cands: list[int] = []
        degraded = 0
        for i in range(args.warmup):
            await service.recommend(RecommendRequest(users[i % len(users)], f"w{i}", k=20))
        done = 0
        while done < args.requests:
            for j in range(BLOCK):
                u = users[(done + j) % len(users)]
                device, country, hour = contexts[(done + j) % len(contexts)]
                r = await service.recommend(RecommendRequest(u, f"b{done + j}", k=20, device=device, country=country,
                                                             hour=hour))
                degraded += bool(r["degraded"])
                for s in STAGES:
                    stage[s].append(r["timings_ms"][s] / 1000)
            # Floors of the same size as the last request's candidate set.
            now = int(time.time() * 1000)
            stage1 = retrieve(model, RecommendRequest(u), Snapshot(), now)
            m = len(stage1.candidates)
            n_cands.append(m)
            ids = model.items.ids[stage1.candidates.items].tolist()
            vec = model.user_vectors[model.user_index[u]]
            snap = await service._served.store.read(u, ids, now)  # the reference reader
            assert isinstance(snap.items, ItemStates)
            batch = feature_batch(hash_str(u), snap.user, snap.items, snap.static, RequestContext(), now,
                                  extra_dense(model, stage1))
            feed = {"dense": batch.dense, "wide": batch.wide, "cats": batch.cats}
            for _ in range(BLOCK):
                t = time.perf_counter()
                model.cf_index.query(vec, m)
                floors["ann"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await _raw_stage1(service, u, now)
                floors["stage1_redis"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await _raw_features(service, u, ids, now, scripted=True)
                floors["features_redis"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await _raw_features(service, u, ids, now, scripted=False)
                floors["features_hmget_pipeline"].append(time.perf_counter() - t)
                t = time.perf_counter()
                sess.run(["score"], feed)
                floors["onnx"].append(time.perf_counter() - t)
            done += BLOCK
        med = {s: _median_ms(v) for s, v in stage.items()}
        p99 = {s: round(float(np.percentile(v, 99)) * 1000, 3) for s, v in stage.items()}
        fl = {k: _median_ms(v) for k, v in floors.items()}
        cand_floor = fl["ann"] + fl["stage1_redis"]
        ratios = {"candidates": round(med["candidates"] / cand_floor, 2),
                  "features": round(med["features"] / fl["features_redis"], 2),
                  "ranking": round(med["ranking"] / fl["onnx"], 2)}
        return {"requests": len(stage["total"]), "degraded": degraded, "events_loaded": loaded,
                "items": len(model.items), "candidates_median": int(statistics.median(n_cands)),
                "median_ms": med, "p99_ms": p99, "floor_ms": fl, "ratio_to_floor": ratios,
                "machine": platform.processor() or platform.machine()}
    finally:
        await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts")
    parser.add_argument("--data")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    if args.artifacts and not args.data:
        parser.error("--artifacts needs --data (the world the bundle was trained on, to load Redis)")
    if args.artifacts:
        open_bundle(Path(args.artifacts), verify=False)  # fail early on a wrong folder
    out = asyncio.run(run(args))
    print(f"{'stage':<12}{'median ms':>11}{'p99 ms':>10}   floor")
    floor_of = {"candidates": ("ann + stage1_redis", out["floor_ms"]["ann"] + out["floor_ms"]["stage1_redis"]),
                "features": ("features_redis", out["floor_ms"]["features_redis"]),
                "ranking": ("onnx", out["floor_ms"]["onnx"])}
    for s in STAGES:
        label, value = floor_of.get(s, ("", None))
        extra = f"{label} {value:.3f} ms  (x{out['ratio_to_floor'][s]})" if value is not None else ""
        print(f"{s:<12}{out['median_ms'][s]:>11.3f}{out['p99_ms'][s]:>10.3f}   {extra}")
    print(f"candidates per request (median): {out['candidates_median']}, degraded answers: {out['degraded']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
