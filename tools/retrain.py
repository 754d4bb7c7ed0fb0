"""Gated retraining (``streamrec retrain``): train a candidate, compare it with ``latest``, publish only if not worse.

One run (:func:`retrain_once`):

1. the event log: the topics read into a folder (:mod:`tools.kafka_log`), or a given folder;
2. the validation window (:func:`models.retrain_gate.validation_split`: the newest share of the log's time);
3. the candidate: trained on the log without the window (with the current bundle's parameters unless told
   otherwise) and written into ``versions/`` *without* moving ``latest``; or, ``candidate_version``, a bundle
   already there (tests offer a deliberately worse one that way);
4. both scored on the window (:func:`models.retrain_gate.score_model`) and the decision
   (:func:`models.retrain_gate.decide`) written into the candidate's manifest as ``retrain``;
5. published (``latest`` replaced atomically: the servers and workers poll it and hot-reload) only if not worse.
   A refused candidate stays in ``versions/`` for inspection; ``latest`` does not move.

``outcome`` is ``published``, ``refused`` or ``failed``; the CLI turns it into the exit code, and the loop
(``--every``) into ``streamrec_retrain_runs_total{outcome}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from prometheus_client import Counter, Gauge

from foundation.logs import get_logger
from foundation.settings import Settings
from models.bundle import BundleError, fingerprint_files, latest_version, set_latest, update_manifest
from models.config import TwoStageConfig
from models.dataset import load_log
from models.recommend.model import RecommenderModel
from models.retrain_gate import (
    DEFAULT_TOLERANCE,
    decide,
    saw_window,
    score_model,
    validation_split,
    window_summary,
)
from models.train import config_from_bundle, train_log_bundle
from tools.kafka_log import read_topics

log = get_logger(__name__)

RUNS: Final = Counter("streamrec_retrain_runs_total", "Retraining runs, by outcome (published, refused, failed).",
                      ["outcome"])
LAST_RUN: Final = Gauge("streamrec_retrain_last_run_timestamp_seconds", "When the last retraining run ended.",
                        ["outcome"])
OUTCOMES: Final = ("published", "refused", "failed")


@dataclass(frozen=True)
class RetrainOptions:
    data: Path | None = None  # an event-log folder; None: read the topics
    log_dir: Path | None = None  # where the topics are written (kept); None: a temporary folder
    per_day: bool = False  # also write the per-day archive files (tools.kafka_log)
    tolerance: float = DEFAULT_TOLERANCE
    window_share: float = 0.2
    max_users: int = 500
    seed: int = 0
    config: TwoStageConfig | None = None  # None: the current bundle's parameters
    candidate_version: str | None = None  # gate a bundle already in versions/ instead of training one


@dataclass
class RetrainResult:
    outcome: str  # published | refused | failed
    candidate: str | None = None
    current: str | None = None
    reason: str = ""
    gate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@contextlib.contextmanager
def _log_folder(settings: Settings, options: RetrainOptions, say: Callable[[str], None]) -> Iterator[Path]:
    if options.data is not None:
        yield options.data
        return
    with contextlib.ExitStack() as stack:
        folder = options.log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamrec-retrain-")))
        say(f"reading {settings.topic_catalog} and {settings.topic_interactions} into {folder}")
        read = asyncio.run(read_topics(settings, folder, per_day=options.per_day))
        say(f"{read.events:,} events, {read.catalog:,} catalog records ({read.invalid} invalid, skipped)")
        yield folder


def retrain_once(settings: Settings, artifacts: Path, options: RetrainOptions | None = None,
                 progress: Callable[[str], None] | None = None) -> RetrainResult:
    """One gated retraining run (see the module docstring); never raises for a failed run (outcome ``failed``)."""
    options = options or RetrainOptions()
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    result = RetrainResult("failed")
    try:
        with _log_folder(settings, options, say) as folder:
            _run(folder, artifacts, options, say, result)
    except Exception as exc:  # the loop goes on; the one-shot exits non-zero
        result.outcome, result.reason = "failed", repr(exc)
        log.error("retrain.failed", error=repr(exc), candidate=result.candidate)
    result.seconds = round(time.perf_counter() - started, 2)
    RUNS.labels(result.outcome).inc()
    LAST_RUN.labels(result.outcome).set(time.time())
    if result.outcome != "failed":
        log.info(f"retrain.{result.outcome}", candidate=result.candidate, current=result.current,
                 reason=result.reason, candidate_metrics=result.gate.get("candidate"),
                 current_metrics=result.gate.get("current"), seconds=result.seconds)
    return result


def _run(folder: Path, artifacts: Path, options: RetrainOptions, say: Callable[[str], None],
         result: RetrainResult) -> None:
    event_log = load_log(folder)
    split = validation_split(event_log, window_share=options.window_share, max_users=options.max_users,
                             seed=options.seed)
    window = window_summary(split)
    if not window["test_users"]:
        raise RuntimeError(f"the validation window of {folder} has no test user: too little data to gate on")
    try:
        current: str | None = latest_version(artifacts)
    except BundleError:
        current = None
    result.current = current
    if options.candidate_version is not None:
        candidate = options.candidate_version
    else:
        config = options.config or config_from_bundle(artifacts)
        say(f"training the candidate on {split.train.n_events:,} events (the window held out)")
        files = [folder / "catalog.jsonl", folder / "events.jsonl"]
        path, _metrics = train_log_bundle(split.train, artifacts, fingerprint_files(files), config, say,
                                          make_latest=False)
        candidate = path.name
    result.candidate = candidate
    if candidate == current:
        raise RuntimeError(f"the candidate {candidate} is the current bundle: nothing to compare")
    say(f"scoring {candidate} and {current} on {window['test_users']} users of the window")
    cand_scores = score_model(RecommenderModel.load(artifacts, candidate), split)
    cur_scores = None
    if current is not None:
        current_model = RecommenderModel.load(artifacts, current)
        cur_scores = score_model(current_model, split)
        window["current_saw_window"] = saw_window(current_model, split)
    decision = decide(cand_scores, cur_scores, options.tolerance, current_version=current, window=window)
    result.gate = decision.to_dict()
    result.reason = decision.reason
    record = {**result.gate, "decided_at": datetime.now(UTC).isoformat(),
              "outcome": "published" if decision.publish else "refused"}
    update_manifest(artifacts, candidate, retrain=record)
    if decision.publish:
        set_latest(artifacts, candidate)
        result.outcome = "published"
    else:
        result.outcome = "refused"


def parse_every(text: str) -> float:
    """``"24h"``, ``"30m"``, ``"90s"``, ``"1d"`` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = text.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 24h, 30m, 90s)") from None
    if seconds <= 0:
        raise ValueError(f"the period must be positive, got {text!r}")
    return seconds


def retrain_every(settings: Settings, artifacts: Path, every_s: float, options: RetrainOptions | None = None,
                  progress: Callable[[str], None] | None = None, stop: Callable[[], bool] = lambda: False) -> None:
    """Run :func:`retrain_once` every ``every_s`` seconds (start to start) until ``stop()``; a failed run is
    logged and counted, and the next one is tried on schedule."""
    while not stop():
        began = time.monotonic()
        retrain_once(settings, artifacts, options, progress)
        wait = max(0.0, every_s - (time.monotonic() - began))
        log.info("retrain.next", in_s=round(wait, 1))
        deadline = time.monotonic() + wait
        while not stop() and time.monotonic() < deadline:
            time.sleep(min(1.0, deadline - time.monotonic()))
