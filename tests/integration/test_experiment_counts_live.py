"""Experiment counts exactly once, live: a real worker process on the test stack's Kafka and redis-server,
SIGKILLed mid-stream and restarted, with retried events (the same ``event_id`` published twice) in the log.

Every user follows a script whose counts are known by hand (pre-period plays, three exposures, a click with the
answer's request id, a play attributed by title, an engagement on a title no exposure showed, one past the
attribution window), so :func:`read_experiment_data` must give exactly those numbers: an event applied twice
(a duplicate, a redelivered batch) or lost (the kill) changes a count. The shared counters are also compared with
the effect's pure function applied once to the de-duplicated log (through the same read, on fakeredis).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import fakeredis
import numpy as np
import pytest
import redis.asyncio as aioredis
from test_worker_dead_letters import per_test_settings, send_records

from foundation.child_env import settings_env
from foundation.redis_io import mget_any
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from models.experiments.data import POSITIONS, ExperimentData
from online_state.experiments import read_experiment_data
from online_state.keys import KeyLayout
from schemas.events import Click, ExposureTag, Impression, InteractionEvent, Play, encode
from streams.dedupe import dedupe
from streams.effect_contract import apply_events
from streams.experiments import ATTRIBUTION_WINDOW_MS, ExperimentEffect
from tools.stack.process import terminate

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
MIN = 60_000
USERS = 80
ROUNDS = 3
SHOWN = 5
TEAMS = ("A", "B")
SUFFIX = uuid.uuid4().hex[:8]  # the experiments' names and the key prefix: nothing shared with other tests
AB, DRAFT = f"ranker-{SUFFIX}", f"draft-{SUFFIX}"
WEIGHTS = {"control": 1.0, "new": 1.0}


def _variant(n: int) -> str:
    return ("control", "new")[n % 2]


def script(n: int) -> list[InteractionEvent]:
    """User ``u{n}``'s events, in order (see the module docstring for what each one counts)."""
    user, variant, pos = f"u{n}", _variant(n), n % SHOWN
    base = {"schema_version": 1, "user_id": user}
    events: list[InteractionEvent] = [Play(event_id=f"{user}-pre{k}", ts=T0 + k, item_id=f"old{k}", **base)
                                      for k in range(2)]
    for r in range(ROUNDS):
        ts = T0 + (r + 1) * 10 * MIN
        items = [f"t{n}-{r}-{p}" for p in range(SHOWN)]
        rid = f"{user}-r{r}"
        teams = [TEAMS[(p + n) % 2] for p in range(SHOWN)]
        events += [
            Impression(event_id=f"{user}-x{r}", ts=ts, item_ids=items, request_id=rid, server_ms=4.0,
                       degraded=r == 0, experiments=[ExposureTag(name=AB, variant=variant),
                                                     ExposureTag(name=DRAFT, variant="interleaved", teams=teams)],
                       **base),
            Click(event_id=f"{user}-c{r}", ts=ts + MIN, item_id=items[pos], request_id=rid, **base),
            Play(event_id=f"{user}-p{r}", ts=ts + 2 * MIN, item_id=items[pos], **base),  # by title and time
            Play(event_id=f"{user}-z{r}", ts=ts + 3 * MIN, item_id="unshown", **base),  # not attributed
        ]
    events.append(Play(event_id=f"{user}-late", ts=T0 + 3 * 10 * MIN + ATTRIBUTION_WINDOW_MS + MIN,
                       item_id=f"t{n}-0-{pos}", **base))  # shown, but long ago
    return events


def log_with_retries() -> tuple[list[InteractionEvent], int]:
    """Every user's script, users interleaved, and every 7th event published again right after (a producer's
    retry: same event_id); returns the log and the number of retries."""
    scripts = [script(n) for n in range(USERS)]
    log: list[InteractionEvent] = []
    retries = 0
    for step in range(max(len(s) for s in scripts)):
        for s in scripts:
            if step < len(s):
                log.append(s[step])
                if len(log) % 7 == 0:
                    log.append(s[step])
                    retries += 1
    return log, retries


def _spawn(env: dict[str, str], prefix: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamrec.commands.worker", "--metrics-port", "0", "--max-records", "5",
             "--session-timeout-ms", "6000", "--prefix", prefix],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


async def _applied(client: aioredis.Redis, keys: KeyLayout, settings: Settings) -> int:
    stored = await mget_any(client, [keys.offset(settings.topic_interactions, p)
                                     for p in range(settings.interactions_partitions)])
    return sum(int(v) + 1 for v in stored if v is not None)


async def _wait_applied(client: aioredis.Redis, keys: KeyLayout, settings: Settings, at_least: int,
                        proc: subprocess.Popen[bytes], log_path: Path, seconds: float = 90) -> int:
    deadline = time.monotonic() + seconds
    while True:
        done = await _applied(client, keys, settings)
        if done >= at_least:
            return done
        assert proc.poll() is None, f"worker exited with {proc.returncode}: {log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"only {done} of {at_least} records applied"
        await asyncio.sleep(0.005)


async def _truth(events: list[InteractionEvent], weights: dict[str, float], kind: str, name: str) -> ExperimentData:
    """The effect's pure function applied once to the de-duplicated log, read back the same way (fakeredis)."""
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    keys = KeyLayout("truth")
    once = dedupe(events, {}, Settings().worker_dedupe_window).events
    await apply_events(redis, [ExperimentEffect(keys=keys)], keys, "interactions", once, 0)
    return await read_experiment_data(redis, keys, name, kind, weights)


def _same(got: ExperimentData, want: ExperimentData) -> None:
    assert [v.name for v in got.variants] == [v.name for v in want.variants]
    for g, w in zip(got.variants, want.variants, strict=True):
        for f in ("users", "degraded"):
            assert getattr(g, f) == getattr(w, f), (g.name, f)
        # Redis estimates distinct titles (HyperLogLog, ~0.81% error); fakeredis counts them exactly.
        assert g.titles_shown == pytest.approx(w.titles_shown, rel=0.05), g.name
        for f in ("exposures", "clicks", "plays", "completes", "ratings", "hits", "engagements", "pre_engagements",
                  "credit", "shown_by_position", "clicks_by_position", "latency_counts"):
            np.testing.assert_array_equal(getattr(g, f), getattr(w, f), err_msg=f"{g.name}.{f}")


async def test_experiment_counts_exactly_once_through_a_sigkill(
    stack: Settings, stack_env: dict[str, str], redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = per_test_settings(stack, "experiments")
    await ensure_topics_retrying(settings)
    prefix = f"xlive-{SUFFIX}"
    keys = KeyLayout(prefix)
    log, retries = log_with_retries()
    assert retries > 50
    await send_records(settings, settings.topic_interactions, [(e.user_id, encode(e)) for e in log])
    # The worker's settings as variables (the bundle comes as no bundle: the effect needs none).
    env = settings_env(settings.model_copy(update={"log_level": "WARNING", "artifacts": "/nonexistent-bundle"}),
                       base=stack_env)
    log_path = tmp_path / "worker.log"
    proc = _spawn(env, prefix, log_path)
    try:
        await _wait_applied(redis_client, keys, settings, len(log) // 3, proc, log_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert await _applied(redis_client, keys, settings) < len(log), "the kill should leave work to do"
    proc = _spawn(env, prefix, log_path)
    try:
        await _wait_applied(redis_client, keys, settings, len(log), proc, log_path)
    finally:
        terminate(proc, timeout_s=20)

    data = await read_experiment_data(redis_client, keys, AB, "ab", WEIGHTS, catalogue_size=1000)
    assert data.catalogue_size == 1000 and data.control == "control"
    per_variant = USERS // 2
    for variant in data.variants:
        n = [k for k in range(USERS) if _variant(k) == variant.name]
        assert variant.users == sorted(f"u{k}" for k in n) and variant.n_users == per_variant
        # Per user: 3 exposures; a click and a play attributed each round (both on a shown title: 6 hits);
        # 3 x 3 + 1 engagements after the first exposure; 2 before it.
        assert variant.exposures.tolist() == [ROUNDS] * per_variant
        assert variant.clicks.tolist() == [ROUNDS] * per_variant
        assert variant.plays.tolist() == [ROUNDS] * per_variant
        assert variant.hits.tolist() == [2 * ROUNDS] * per_variant
        assert variant.engagements.tolist() == [3 * ROUNDS + 1] * per_variant
        assert variant.pre_engagements.tolist() == [2] * per_variant
        assert variant.completes.sum() == variant.ratings.sum() == variant.credit.sum() == 0
        assert variant.shown_by_position.tolist() == [ROUNDS * per_variant] * SHOWN + [0] * (POSITIONS - SHOWN)
        clicks = np.bincount([k % SHOWN for k in n], minlength=POSITIONS) * ROUNDS
        assert variant.clicks_by_position.tolist() == clicks.tolist()
        assert variant.latency_counts.sum() == ROUNDS * per_variant  # 4 ms: one bucket
        assert variant.degraded == per_variant  # the first round's answers
        assert variant.titles_shown == pytest.approx(ROUNDS * SHOWN * per_variant, rel=0.05)  # HyperLogLog
    _same(data, await _truth(log, WEIGHTS, "ab", AB))

    draft = await read_experiment_data(redis_client, keys, DRAFT, "interleave", {t: 1.0 for t in TEAMS})
    assert [v.name for v in draft.variants] == list(TEAMS)
    users = sorted(f"u{k}" for k in range(USERS))
    credit = {t: [2 * ROUNDS if TEAMS[(int(u[1:]) % SHOWN + int(u[1:])) % 2] == t else 0 for u in users]
              for t in TEAMS}
    for team in draft.variants:
        assert team.users == users
        assert team.credit.tolist() == credit[team.name]  # the click and the play on the team's title
        assert team.exposures.tolist() == [ROUNDS] * USERS
    _same(draft, await _truth(log, {t: 1.0 for t in TEAMS}, "interleave", DRAFT))
    await _cleanup(redis_client, prefix)


async def _cleanup(client: aioredis.Redis, prefix: str) -> None:
    keys: list[Any] = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start:start + 500])
