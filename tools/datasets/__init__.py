"""Event logs in the catalog.jsonl + events.jsonl format: a synthetic world generator and importers."""
