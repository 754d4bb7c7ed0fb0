"""JSON Schema files generated from the event structs, for producers in other languages.

Regenerate after changing ``schemas/events.py``::

    python -m schemas.json_schema

A unit test fails when the committed files drift from the structs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import SCHEMA_VERSION, CatalogEvent, Event, InteractionEvent

GENERATED_DIR = Path(__file__).resolve().parent / "generated"

_DOCUMENTS: dict[str, tuple[Any, str]] = {
    "event.schema.json": (Event, "Any streamrec event (interaction, profile or catalog)."),
    "interaction.schema.json": (InteractionEvent, "Events of the `interactions` topic, keyed by user_id."),
    "catalog.schema.json": (CatalogEvent, "Events of the compacted `catalog` topic, keyed by item_id."),
}


def render(union: Any, name: str, description: str) -> str:
    schema = msgspec.json.schema(union)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:streamrec:v{SCHEMA_VERSION}:{name}",
        "description": description,
        **schema,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> the exact text that should be committed."""
    return {name: render(union, name, doc) for name, (union, doc) in _DOCUMENTS.items()}


def write(directory: Path = GENERATED_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in expected_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        sys.stdout.write(f"wrote {path}\n")
