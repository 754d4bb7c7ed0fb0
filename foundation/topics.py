"""The topics streamrec needs, created idempotently with aiokafka's admin client.

Used by ``streamrec stack up`` and by the workers and the server at start-up, so that a process can
run against any broker (with ``auto.create.topics.enable=false``) without a separate setup step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from foundation.kafka_io import make_admin
from foundation.logs import get_logger
from foundation.settings import Settings

log = get_logger(__name__)

DEAD_LETTER_PARTITIONS = 4
DEAD_LETTER_RETENTION_MS = 7 * 24 * 60 * 60 * 1000
COMPACTED = {"cleanup.policy": "compact"}


class TopicSetupError(RuntimeError):
    """The broker refused to create a topic."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    replication_factor: int = 1


# With 3 or more replicas a write (acks=all) needs 2 of them in sync: one broker may die without losing an
# acknowledged record, and producers are refused (NOT_ENOUGH_REPLICAS) rather than acknowledged on one copy.
MIN_INSYNC_FROM_REPLICAS = 3
MIN_INSYNC_REPLICAS = 2


def replication_configs(replication_factor: int) -> dict[str, str]:
    """Topic-level configs that follow from the replication factor (none for fewer than 3 replicas)."""
    if replication_factor >= MIN_INSYNC_FROM_REPLICAS:
        return {"min.insync.replicas": str(MIN_INSYNC_REPLICAS)}
    return {}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the system, with partitions, replication (``kafka_replication_factor``) and topic-level
    configs."""
    rf = settings.kafka_replication_factor
    replicated = replication_configs(rf)
    return [
        TopicSpec(settings.topic_interactions, settings.interactions_partitions, dict(replicated), rf),
        TopicSpec(settings.topic_catalog, settings.catalog_partitions, {**COMPACTED, **replicated}, rf),
        TopicSpec(settings.topic_item_vectors, settings.catalog_partitions, {**COMPACTED, **replicated}, rf),
        TopicSpec(settings.topic_item_state, settings.catalog_partitions, {**COMPACTED, **replicated}, rf),
        TopicSpec(
            settings.topic_dead_letters,
            DEAD_LETTER_PARTITIONS,
            {"cleanup.policy": "delete", "retention.ms": str(DEAD_LETTER_RETENTION_MS), **replicated},
            rf,
        ),
    ]


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics of :func:`topic_specs` on ``settings.kafka_bootstrap``.

    Returns the names of the topics this call created (empty when all existed). Existing topics are
    left as they are; one with fewer partitions than configured is logged as a warning.
    """
    specs = topic_specs(settings)
    admin = make_admin(settings, client_id="streamrec-topics", request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=spec.configs)
                    for spec in missing
                ],
                timeout_ms=int(timeout_s * 1000),
            )
            for topic_error in response.topic_errors:
                name, code = topic_error[0], topic_error[1]
                message = topic_error[2] if len(topic_error) > 2 else None
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:  # created concurrently: fine
                    raise TopicSetupError(f"could not create topic {name!r}: error {code} {message or ''}".strip())
        present = [spec for spec in specs if spec.name in existing]
        if present:
            described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in present])}
            for spec in present:
                partitions = len(described.get(spec.name, {}).get("partitions", []))
                if partitions < spec.partitions:
                    log.warning(
                        "stack.topics.fewer_partitions",
                        topic=spec.name,
                        partitions=partitions,
                        configured=spec.partitions,
                    )
    finally:
        await admin.close()
    if created:
        log.info("stack.topics.created", topics=created)
    return created


async def delete_topics(settings: Settings, names: Sequence[str] | None = None) -> None:
    """Delete ``names`` (default: every topic of :func:`topic_specs`), for runs that made topics of their
    own (``Settings.with_topic_prefix``). A topic that does not exist is no error."""
    admin = make_admin(settings, client_id="streamrec-topics")
    await admin.start()
    try:
        await admin.delete_topics(list(names) if names is not None else [s.name for s in topic_specs(settings)])
    finally:
        await admin.close()


async def ensure_topics_retrying(settings: Settings, attempts: int = 20) -> None:
    """:func:`ensure_topics`, retried once a second: a broker that just started refuses for a moment
    (KRaft: "All brokers are currently fenced")."""
    for attempt in range(attempts):
        try:
            await ensure_topics(settings)
            return
        except TopicSetupError as exc:
            if attempt == attempts - 1:
                raise
            log.info("topics.retry", reason=str(exc))
            await asyncio.sleep(1.0)
