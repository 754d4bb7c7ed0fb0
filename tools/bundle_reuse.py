"""Training once per log: the ``latest`` bundle is reused when it was trained on these very log files.

The demo and ``eval-stream`` train a bundle on a log they may have met before; a bundle's manifest
records the fingerprint of the files it was trained on (``data_fingerprint``), so a match means the
same training data and the bundle can be used as it is.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from models.bundle import Bundle, BundleError, fingerprint_files, open_bundle


def log_fingerprint(data: Path) -> str:
    """The fingerprint of a log folder's ``catalog.jsonl`` + ``events.jsonl``, as training records it."""
    return fingerprint_files([data / "catalog.jsonl", data / "events.jsonl"])


def bundle_trained_on(data: Path, artifacts: Path) -> Bundle | None:
    """The ``latest`` bundle under ``artifacts`` when it was trained on the log in ``data``, else ``None``."""
    fingerprint = log_fingerprint(data)
    with contextlib.suppress(BundleError, FileNotFoundError):
        bundle = open_bundle(artifacts, verify=False)
        if bundle.manifest.get("data_fingerprint") == fingerprint:
            return bundle
    return None
