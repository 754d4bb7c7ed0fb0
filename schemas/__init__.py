"""Data contracts of streamrec: event types, the validating decoder, topic names, JSON Schema.

Imports nothing from ``streams``, ``serving``, ``models`` or ``streamrec``.
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
