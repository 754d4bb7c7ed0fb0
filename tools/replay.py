"""Replay a recorded event log into Kafka.

Per-user order is preserved by keying every interaction with its user id (one partition per
key) and producing with an idempotent producer (``acks=all``, broker-side de-duplication of
retried batches), so a retry can neither reorder nor duplicate a user's events. A folder is
replayed as the time-ordered merge of ``catalog.jsonl`` and ``events.jsonl``, so titles
released mid-log reach the ``catalog`` topic when they were released, not before.

Lines are validated with the ``schemas`` decoder; the original bytes are what is published, so
a consumer sees exactly what was recorded. Invalid lines go to a rejects file with their line
number and reason, never dropped silently.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
from rich.table import Table

from foundation.kafka_io import KeyedBatchSender, make_producer
from foundation.logs import get_logger
from foundation.progress import stderr_console
from foundation.settings import Settings
from schemas.decoder import EventDecoder, EventError, event_decoder
from schemas.events import Event, is_catalog, partition_key

log = get_logger(__name__)

# How many records may be in flight before we wait for their acknowledgements: large enough for
# the producer to fill big batches, small enough that memory stays flat on a 10M-line log.
_WINDOW = 50_000


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast to replay: ``speed`` times the recorded pace, ``rate`` events/s, or neither (max)."""

    speed: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and self.rate is not None:
            raise ValueError("choose one of speed and rate")


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    skip: int = 0
    limit: int | None = None
    rejects_path: Path | None = None
    pace: Pace = field(default_factory=Pace)


@dataclass(slots=True)
class ReplayReport:
    source: str
    published: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    per_topic: dict[str, int] = field(default_factory=dict)
    rejects_path: str | None = None
    resume_skip: int = 0


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One valid line of a log: its event time, its original bytes (what is published) and its event."""

    ts: int
    raw: bytes
    event: Event

    @property
    def is_catalog(self) -> bool:
        return is_catalog(self.event)

    def destination(self, settings: Settings) -> tuple[str, bytes]:
        """The topic and the key it is published with (:func:`schemas.events.partition_key`)."""
        topic = settings.topic_catalog if is_catalog(self.event) else settings.topic_interactions
        return topic, partition_key(self.event).encode()


class RejectsFile:
    """Writes rejected lines lazily: no file appears when every line is valid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh: IO[bytes] | None = None

    def add(self, file: Path, line_no: int, field_: str, reason: str, raw: bytes) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")
        row = {"file": file.name, "line": line_no, "field": field_, "reason": reason,
               "raw": raw.decode("utf-8", errors="replace")}
        self._fh.write(orjson.dumps(row) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def log_files(log_path: Path) -> list[Path]:
    """The files that make up a log: one .jsonl file, or a folder's catalog + events."""
    if log_path.is_file():
        return [log_path]
    files = [log_path / name for name in ("catalog.jsonl", "events.jsonl") if (log_path / name).exists()]
    if not files:
        raise FileNotFoundError(f"{log_path} holds neither catalog.jsonl nor events.jsonl")
    return files


def default_rejects_path(log_path: Path) -> Path:
    return log_path.with_suffix(".rejects.jsonl") if log_path.is_file() else log_path / "rejects.jsonl"


def _valid_records(
    path: Path, rejects: RejectsFile, decoder: EventDecoder[Event] = event_decoder
) -> Iterator[LogRecord]:
    decode = decoder.decode
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                event = decode(raw)
            except EventError as err:
                rejects.add(path, line_no, err.field, err.reason, raw)
                continue
            yield LogRecord(event.ts, raw, event)


def merged_records(files: list[Path], rejects: RejectsFile) -> Iterator[LogRecord]:
    """Time-ordered merge of the log's files (each already time-ordered); stable across files."""
    streams = [_valid_records(path, rejects) for path in files]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda record: record.ts)


class _Pacer:
    """Holds the requested pace; in --max mode it is never consulted."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.paced = bool(pace.rate or pace.speed)
        self.start = time.perf_counter()
        self.first_ts: int | None = None
        self._due = 0.0

    def ahead(self, index: int, ts: int) -> bool:
        """Whether record ``index`` (event time ``ts``) is due later than now."""
        if self.pace.rate:
            self._due = self.start + index / self.pace.rate
        else:
            if self.first_ts is None:
                self.first_ts = ts
            self._due = self.start + (ts - self.first_ts) / 1000.0 / (self.pace.speed or 1.0)
        # Sleeping for less than a couple of milliseconds costs more than it paces.
        return self._due - time.perf_counter() > 0.002

    async def sleep(self) -> None:
        await asyncio.sleep(max(0.0, self._due - time.perf_counter()))


async def replay_log(
    log_path: Path,
    settings: Settings,
    options: ReplayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Publish the log into Kafka; returns counts, throughput and where rejects went."""
    options = options or ReplayOptions()
    files = log_files(log_path)
    rejects_path = options.rejects_path or default_rejects_path(log_path)
    rejects = RejectsFile(rejects_path)
    report = ReplayReport(source=str(log_path))
    per_topic = dict.fromkeys((settings.topic_catalog, settings.topic_interactions), 0)
    pacer = _Pacer(options.pace)

    producer = make_producer(settings, enable_idempotence=True, linger_ms=20)
    await producer.start()
    sender = KeyedBatchSender(producer)
    started = time.perf_counter()
    since_progress = 0
    try:
        for index, record in enumerate(merged_records(files, rejects)):
            if index < options.skip:
                report.skipped += 1
                continue
            if options.limit is not None and report.published >= options.limit:
                break
            if pacer.paced and pacer.ahead(report.published, record.ts):
                # Ahead of schedule: ship what is batched before sleeping, so pacing is real.
                await sender.flush_open()
                await pacer.sleep()
            topic, key = record.destination(settings)
            await sender.add(topic, key, record.raw)
            per_topic[topic] += 1
            report.published += 1
            since_progress += 1
            if since_progress >= _WINDOW:
                await sender.wait_acks()
                if progress:
                    progress(since_progress)
                since_progress = 0
        await sender.flush()
    finally:
        await producer.stop()
        rejects.close()
    if progress and since_progress:
        progress(since_progress)
    report.seconds = time.perf_counter() - started
    report.events_per_s = report.published / report.seconds if report.seconds > 0 else 0.0
    report.rejected = rejects.count
    report.rejects_path = str(rejects.path) if rejects.count else None
    report.per_topic = per_topic
    report.resume_skip = report.skipped + report.published
    log.info("replay finished", published=report.published, rejected=report.rejected,
             events_per_s=round(report.events_per_s))
    return report


def report_table(report: ReplayReport) -> None:
    """Print the final report for people (``--json`` prints it for programs)."""
    table = Table(title=f"replay of {report.source}", show_header=False)
    table.add_row("published", f"{report.published:,}")
    for topic, count in report.per_topic.items():
        table.add_row(f"  to {topic}", f"{count:,}")
    table.add_row("rejected", f"{report.rejected:,}" + (f" -> {report.rejects_path}" if report.rejects_path else ""))
    table.add_row("skipped (--skip)", f"{report.skipped:,}")
    table.add_row("seconds", f"{report.seconds:.2f}")
    table.add_row("events/s", f"{report.events_per_s:,.0f}")
    table.add_row("resume with", f"--skip {report.resume_skip}")
    stderr_console.print(table)
