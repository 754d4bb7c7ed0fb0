"""The topics back into an event log: what ``streamrec train --from-kafka`` and ``streamrec retrain`` train from.

Kafka is the source of truth (ARCHITECTURE.md), so training reads it rather than files someone exported: every
partition of ``catalog`` and ``interactions`` from the beginning (that is, from what the retention still keeps; the
compacted ``catalog`` keeps each title's last record) up to the end offsets taken when the read starts, with a
plain group-less consumer (no committed offsets, no effect on the workers' group). Records are validated by the
``schemas`` decoder, as replay and the workers do; an invalid record or a tombstone is skipped and counted. The
original bytes are written, so the folder is what ``streamrec replay`` would publish again.

Output: ``catalog.jsonl`` + ``events.jsonl`` (time-ordered: what :func:`models.dataset.load_log` reads) and, with
``per_day``, the archive layout as well: ``days/YYYY-MM-DD.jsonl``, the interaction events of each UTC day (a
file per day: what an operator keeps, or ships elsewhere, once the topics' retention drops them).

Memory: the records are held (as bytes) until written, sorted by event time; fine for the small and medium
logs this project trains on, a spill-to-disk merge would be the next step for topics of hundreds of millions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import TopicPartition

from foundation.kafka_io import make_consumer
from foundation.logs import get_logger
from foundation.settings import Settings
from schemas.decoder import EventError, catalog_decoder, interaction_decoder

log = get_logger(__name__)


@dataclass(slots=True)
class TopicsRead:
    """What one read of the topics found and wrote."""

    folder: str
    catalog: int = 0  # valid catalog records written
    events: int = 0  # valid interaction records written
    invalid: int = 0  # records the decoder refused (skipped; the workers dead-letter them)
    tombstones: int = 0  # null values (a compacted topic's deletes): nothing to train on
    partitions: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> records read
    days: int = 0  # files written under days/ (per_day)
    seconds: float = 0.0


def _line(raw: bytes) -> bytes:
    """One JSONL line: the record as published, re-serialised only if it spans lines (valid JSON may)."""
    return orjson.dumps(orjson.loads(raw)) if b"\n" in raw or b"\r" in raw else raw


async def read_topics(settings: Settings, out: Path, *, per_day: bool = False, poll_ms: int = 500,
                      progress: Callable[[int], None] | None = None) -> TopicsRead:
    """Read ``settings``' catalog and interactions topics (credentials and names from the settings) into the
    event-log folder ``out`` (see the module docstring); returns the counts."""
    started = time.perf_counter()
    report = TopicsRead(folder=str(out))
    decoders = {settings.topic_catalog: catalog_decoder, settings.topic_interactions: interaction_decoder}
    rows: dict[str, list[tuple[int, bytes]]] = {topic: [] for topic in decoders}
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = []
        for topic in decoders:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:  # metadata not fetched yet for a topic nobody asked about
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            raise RuntimeError(f"neither {settings.topic_catalog} nor {settings.topic_interactions} exists on "
                               f"{settings.kafka_bootstrap}")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # The end offsets as of now: records produced while we read belong to the next training run.
        ends = {tp: int(end) for tp, end in (await consumer.end_offsets(tps)).items()}
        pending = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=poll_ms, max_records=20_000)
            for tp, records in fetched.items():
                decoder = decoders[tp.topic]
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    report.partitions[f"{tp.topic}:{tp.partition}"] = \
                        report.partitions.get(f"{tp.topic}:{tp.partition}", 0) + 1
                    if record.value is None:
                        report.tombstones += 1
                        continue
                    try:
                        event = decoder.decode(record.value)
                    except EventError:
                        report.invalid += 1
                        continue
                    rows[tp.topic].append((event.ts, record.value))
                if progress is not None:
                    progress(len(records))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    _write(out, rows[settings.topic_catalog], rows[settings.topic_interactions], report, per_day)
    report.seconds = round(time.perf_counter() - started, 3)
    log.info("kafka_log.read", folder=str(out), catalog=report.catalog, events=report.events,
             invalid=report.invalid, tombstones=report.tombstones, days=report.days, seconds=report.seconds)
    return report


def _write(out: Path, catalog: list[tuple[int, bytes]], events: list[tuple[int, bytes]], report: TopicsRead,
           per_day: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Stable sorts by event time: a partition's records keep their order among equal times (per-user order).
    catalog.sort(key=lambda row: row[0])
    events.sort(key=lambda row: row[0])
    for name, rows in (("catalog.jsonl", catalog), ("events.jsonl", events)):
        tmp = out / f".{name}.tmp"
        with tmp.open("wb") as fh:
            for _ts, raw in rows:
                fh.write(_line(raw) + b"\n")
        tmp.replace(out / name)  # a reader never sees half a file
    report.catalog, report.events = len(catalog), len(events)
    if per_day:
        days = out / "days"
        days.mkdir(exist_ok=True)
        current: str | None = None
        fh = None
        try:
            for ts, raw in events:
                day = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d")
                if day != current:
                    if fh is not None:
                        fh.close()
                    fh = (days / f"{day}.jsonl").open("wb")
                    current = day
                    report.days += 1
                fh.write(_line(raw) + b"\n")
        finally:
            if fh is not None:
                fh.close()
