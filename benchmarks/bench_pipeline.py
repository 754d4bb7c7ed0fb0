"""Latency of ``RecommendationService.recommend()`` per stage, beside floors measured in the same run.

    STREAMREC_REDIS_URL=redis://127.0.0.1:46379/0 python benchmarks/bench_pipeline.py \
        [--artifacts DIR --data DIR] [--requests 300] [--users 400 --items 3000 --events 30000] [--candidates 1000]

Needs a running Redis (``streamrec stack up``; Kafka is not used: the live tail and the bundle
watcher are off). Without ``--artifacts`` it generates a world and trains a bundle first (~1-2 min).
Redis is loaded with realistic online state for the world's events re-stamped to end a minute ago:
feature state through ``RedisFeatureStore.apply``, trending through ``TrendingEffect``, online user
vectors (the bundle's CF vectors) — so every source and every feature read hits real keys.

``--candidates N`` scales the bundle's retrieval budgets (all sources in proportion) until about N candidates
are merged per request. Requests cycle over the bundle's users (with context), after a warm-up. Per stage
the median over requests of the service's own ``timings_ms``; the floors, timed in blocks interleaved with the
requests so that noise from the shared machine lands on both:

- candidates floor: one HNSW query for as many items as the request's merged candidates plus one
  raw pipelined round trip of the stage-1 keys (no decoding);
- features floor: one raw pipeline of the commands stage 2 sends (``GET`` user + the reader's script
  over the candidates' keys), reply not decoded; for reference also the one-``HMGET``-per-candidate
  pipeline of ``RedisFeatureStore.read`` (``features_hmget_pipeline``);
- ranking floor: ``InferenceSession.run`` on the same-sized, pre-built feed.

Beside the wall medians, CPU (``time.thread_time``, this thread's): of each ``service.recommend()`` call,
and per stage of the same request replayed part by part right after it (the service's own functions, see
``_staged_cpu``), so that CPU spent in the process shows apart from time spent waiting on Redis or on the
other processes of a shared machine.

The homepage (``service.homepage()``, 8 rows of 10) is timed right after each list request of the same user and
context, which is its floor: the same read, retrieval and ranking (``homepage_ratio_to_list``).

A list request in an experiment (issue 15) is timed the same way (``experiment_ratio_to_list``): the user's
assignment (the demo's one experiment), the service call in its control variant (the same answer as the plain list)
and the exposure event the HTTP layer hands to the exposures' buffer; the send to Kafka is off the request path.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
from models.experiments.assignment import Assignment, assign
from models.experiments.config import parse_config
from models.features.hashing import hash_str
from models.features.rows import RequestContext, feature_batch
from models.features.state import EventBatch, ItemStates
from models.recommend.homepage import HomepageRequest
from models.recommend.pipeline import (
    RecommendRequest,
    Snapshot,
    answer,
    extra_dense,
    feature_rows,
    retrieve,
    score,
)
from models.train import train_bundle
from online_state.keys import DEFAULT_KEYS
from online_state.reads import RequestScopes, read_online_state
from online_state.trending import WINDOWS, generation
from online_state.user_vectors import pack_user_vector
from schemas.decoder import interaction_decoder
from serving.exposures import exposure_of
from serving.options import ServingOptions
from serving.service import RecommendationService
from streams.effects import Batch, BatchInfo, Reads
from streams.trending import TrendingEffect
from tools.datasets.world import generate_world

BLOCK = 20
STAGES = ("candidates", "features", "ranking", "postprocess", "total")
# CPU seconds (time.thread_time) per stage of a replay of the service's stages: the four stages and their parts.
CPU_PARTS = ("online_read", "retrieve", "feature_read", "feature_rows", "ranking", "answer", "answer_json")
CPU_STAGES = {"candidates": ("online_read", "retrieve"), "features": ("feature_read", "feature_rows"),
              "ranking": ("ranking",), "postprocess": ("answer", "answer_json")}


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


def scale_candidates(model: Any, target: int, users: list[str], rounds: int = 3) -> int:
    """Scale ``model``'s retrieval budgets (every source, in proportion) until the merged candidate set of
    ``users`` (without context, as of now) is about ``target`` on median; returns that median. The budgets are
    the model's own config (the pipeline reads ``model.config.candidates``), so the service uses them too."""
    cfg = model.config
    base = cfg.candidates
    factor = target / base.total
    merged = 0
    for _ in range(rounds):
        budgets = {name: max(1, round(value * factor)) for name, value in base.budgets().items()}
        model.config = dataclasses.replace(cfg, candidates=dataclasses.replace(base, **budgets))
        now = int(time.time() * 1000)
        merged = int(statistics.median(len(retrieve(model, RecommendRequest(u), Snapshot(), now).candidates)
                                       for u in users[:30]))
        if merged == 0 or abs(merged - target) <= 0.03 * target:
            break
        factor *= target / merged
    return merged


async def _staged_cpu(service: RecommendationService, req: RecommendRequest) -> dict[str, float]:
    """CPU seconds (this thread's) of each part of one request, the service's stages replayed one by one with
    the functions ``RecommendationService._recommend`` calls (awaits on Redis cost no CPU here)."""
    served, opts = service._served, service.options
    model = served.model
    cfg = model.config.candidates
    now = req.now_ms if req.now_ms is not None else int(time.time() * 1000)
    clock = time.thread_time
    t0 = clock()
    online = await read_online_state(
        service.redis, served.store.keys, req.user_id, RequestScopes(req.country, req.device, req.hour), now,
        trending_k=cfg.popular, new_k=2 * cfg.new_releases, window=opts.trending_window, space=model.space,
        dim=model.dim, shared=service.shared_reads)
    t1 = clock()
    retrieved = retrieve(model, req, online.snapshot(), now)
    t2 = clock()
    state, _ = await service._ranking_state(served, req, retrieved, now, online.features_user)
    t3 = clock()
    batch = feature_rows(model, req, retrieved, state, now)
    t4 = clock()
    scores, _ = score(model, batch, retrieved)
    t5 = clock()
    picked = answer(model, req, retrieved, scores, now, served.post)
    t6 = clock()
    picked.items(model)
    t7 = clock()
    return dict(zip(CPU_PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6), strict=True))


# The demo's experiment (deploy/experiments.toml): the ranker against retrieval order.
EXPERIMENT = parse_config({"version": 1, "experiments": [{"name": "ranker", "layer": "ranking", "variants": [
    {"name": "control"}, {"name": "retrieval_order", "changes": {"ranker": False}}]}]})


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
        if service.item_tail is not None:  # the state went in after the service's start-up snapshot: read it again
            await service.item_tail.load()
        model = service.model
        users = [u for u, row in model.user_index.items() if model.trained_users[row]]
        scaled = scale_candidates(model, args.candidates, users) if args.candidates else None
        contexts = [("tv", "US", 20), ("mobile", "DE", 8), ("web", None, None)]
        sess = model.ranker.session
        stage: dict[str, list[float]] = {s: [] for s in STAGES}
        floors: dict[str, list[float]] = {"ann": [], "stage1_redis": [], "features_redis": [], "onnx": [],
                                          "features_hmget_pipeline": []}
        n_cands: list[int] = []
        cpu: dict[str, list[float]] = {p: [] for p in ("request", *CPU_PARTS)}
        degraded = 0
        # The homepage (GET /v1/homepage): the same read, retrieval and ranking plus the rows; its floor is the
        # list request of the same user and context, timed right before it.
        page: dict[str, list[float]] = {"total": [], "rows": [], "cpu": []}
        in_experiment: dict[str, list[float]] = {"wall": [], "cpu": []}
        for i in range(args.warmup):
            await service.recommend(RecommendRequest(users[i % len(users)], f"w{i}", k=20))
        done = 0
        while done < args.requests:
            for j in range(BLOCK):
                u = users[(done + j) % len(users)]
                device, country, hour = contexts[(done + j) % len(contexts)]
                req = RecommendRequest(u, f"b{done + j}", k=20, device=device, country=country, hour=hour)
                c0 = time.thread_time()
                r = await service.recommend(req)
                cpu["request"].append(time.thread_time() - c0)
                for part, value in (await _staged_cpu(service, req)).items():
                    cpu[part].append(value)
                c0 = time.thread_time()
                home = await service.homepage(HomepageRequest(req, rows=8, per_row=10))
                page["cpu"].append(time.thread_time() - c0)
                page["total"].append(home["timings_ms"]["total"] / 1000)
                page["rows"].append(home["timings_ms"]["rows"] / 1000)
                degraded += bool(home["degraded"])
                c0, t0 = time.thread_time(), time.perf_counter()
                assign(EXPERIMENT, u, int(time.time() * 1000))
                tagged = await service.recommend(req, [Assignment("ranker", "control")])
                exposure_of(req, tagged, time.perf_counter() - t0, EXPERIMENT)
                in_experiment["wall"].append(time.perf_counter() - t0)
                in_experiment["cpu"].append(time.thread_time() - c0)
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
        cpu_ms = {p: _median_ms(v) for p, v in cpu.items()}
        # Per stage: the median over requests of the sum of its parts (not the sum of the parts' medians).
        cpu_stage_ms = {st: _median_ms([sum(cpu[p][i] for p in parts) for i in range(len(cpu["request"]))])
                        for st, parts in CPU_STAGES.items()}
        cpu_stage_ms["total"] = _median_ms([sum(cpu[p][i] for p in CPU_PARTS) for i in range(len(cpu["request"]))])
        ratios = {"candidates": round(med["candidates"] / cand_floor, 2),
                  "features": round(med["features"] / fl["features_redis"], 2),
                  "ranking": round(med["ranking"] / fl["onnx"], 2)}
        return {"requests": len(stage["total"]), "degraded": degraded, "events_loaded": loaded,
                "items": len(model.items), "candidates_median": int(statistics.median(n_cands)),
                "candidate_budgets": (model.config.candidates.budgets() if scaled is not None else None),
                "median_ms": med, "p99_ms": p99, "cpu_ms": cpu_stage_ms, "cpu_parts_ms": cpu_ms,
                "floor_ms": fl, "ratio_to_floor": ratios,
                "homepage_ms": {"total": _median_ms(page["total"]), "rows": _median_ms(page["rows"]),
                                "cpu": _median_ms(page["cpu"])},
                "homepage_ratio_to_list": {"wall": round(_median_ms(page["total"]) / med["total"], 2),
                                           "cpu": round(_median_ms(page["cpu"]) / cpu_ms["request"], 2)},
                "experiment_ms": {"wall": _median_ms(in_experiment["wall"]), "cpu": _median_ms(in_experiment["cpu"])},
                "experiment_ratio_to_list": {
                    "wall": round(_median_ms(in_experiment["wall"]) / med["total"], 3),
                    "cpu": round(_median_ms(in_experiment["cpu"]) / cpu_ms["request"], 3)},
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
    parser.add_argument("--candidates", type=int, default=0,
                        help="scale the bundle's retrieval budgets so that about N candidates are merged per request "
                             "(0: the bundle's budgets)")
    args = parser.parse_args()
    if args.artifacts and not args.data:
        parser.error("--artifacts needs --data (the world the bundle was trained on, to load Redis)")
    if args.artifacts:
        open_bundle(Path(args.artifacts), verify=False)  # fail early on a wrong folder
    out = asyncio.run(run(args))
    print(f"{'stage':<12}{'median ms':>11}{'p99 ms':>10}{'cpu ms':>9}   floor")
    floor_of = {"candidates": ("ann + stage1_redis", out["floor_ms"]["ann"] + out["floor_ms"]["stage1_redis"]),
                "features": ("features_redis", out["floor_ms"]["features_redis"]),
                "ranking": ("onnx", out["floor_ms"]["onnx"])}
    for s in STAGES:
        label, value = floor_of.get(s, ("", None))
        extra = f"{label} {value:.3f} ms  (x{out['ratio_to_floor'][s]})" if value is not None else ""
        print(f"{s:<12}{out['median_ms'][s]:>11.3f}{out['p99_ms'][s]:>10.3f}{out['cpu_ms'][s]:>9.3f}   {extra}")
    parts = out["cpu_parts_ms"]
    print("cpu ms per part (thread_time, stages replayed): "
          + ", ".join(f"{p} {parts[p]:.3f}" for p in CPU_PARTS)
          + f"; one service.recommend() call: {parts['request']:.3f}")
    print(f"candidates per request (median): {out['candidates_median']}, degraded answers: {out['degraded']}")
    home, ratio = out["homepage_ms"], out["homepage_ratio_to_list"]
    print(f"homepage (8 rows x 10): median {home['total']:.3f} ms wall (rows {home['rows']:.3f}), cpu {home['cpu']:.3f}"
          f" ms; x{ratio['wall']} wall and x{ratio['cpu']} cpu of the list request (k=20) for the same user")
    exp, ratio = out["experiment_ms"], out["experiment_ratio_to_list"]
    print(f"in an experiment (assignment + list + exposure): median {exp['wall']:.3f} ms wall, cpu {exp['cpu']:.3f} ms;"
          f" x{ratio['wall']} wall and x{ratio['cpu']} cpu of the list request")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
