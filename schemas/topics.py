"""Topic and record contracts shared by producers, workers and servers.

Topic *names* are settings (``STREAMREC_TOPIC_*``); these are their defaults and the rules that
do not change: what each topic is keyed by, and how a dead letter carries its error.
"""

from __future__ import annotations

from typing import Final

INTERACTIONS: Final = "interactions"  # key: user id; interaction and user_upsert events
CATALOG: Final = "catalog"  # key: item id; compacted; item_upsert / item_remove
ITEM_VECTORS: Final = "item-vectors"  # key: item id; compacted; written by workers, tailed by servers
ITEM_STATE: Final = "item-state"  # key: item id; compacted; item hashes after each commit, tailed by servers
DEAD_LETTERS: Final = "dead-letters"  # key: the source record's key; value: the original bytes

# A dead letter's value is the original record's bytes, unchanged; why it was refused and where
# it came from travel in these headers (UTF-8 values), so nothing of the original is lost.
DLQ_ERROR_FIELD: Final = "x-error-field"
DLQ_ERROR_REASON: Final = "x-error-reason"
DLQ_SOURCE_TOPIC: Final = "x-source-topic"
DLQ_SOURCE_PARTITION: Final = "x-source-partition"
DLQ_SOURCE_OFFSET: Final = "x-source-offset"
DLQ_HEADERS: Final = (DLQ_ERROR_FIELD, DLQ_ERROR_REASON, DLQ_SOURCE_TOPIC, DLQ_SOURCE_PARTITION, DLQ_SOURCE_OFFSET)


def dead_letter_headers(field: str, reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The headers of a dead letter, in the order of :data:`DLQ_HEADERS`."""
    values = (field, reason, topic, str(partition), str(offset))
    return [(name, value.encode()) for name, value in zip(DLQ_HEADERS, values, strict=True)]
