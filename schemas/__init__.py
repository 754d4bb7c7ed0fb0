"""Data contracts of streamrec: event types, the validating decoder, topic names and dead-letter
headers, JSON Schema. The bottom layer: it imports nothing of ours (``lint-imports`` checks it).
"""

from schemas.decoder import EventError, catalog_decoder, decode_event, event_decoder, interaction_decoder
from schemas.events import (
    SCHEMA_VERSION,
    CatalogEvent,
    Event,
    InteractionEvent,
    encode,
    partition_key,
)

__all__ = [
    "SCHEMA_VERSION",
    "CatalogEvent",
    "Event",
    "EventError",
    "InteractionEvent",
    "catalog_decoder",
    "decode_event",
    "encode",
    "event_decoder",
    "interaction_decoder",
    "partition_key",
]
