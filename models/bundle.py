"""The versioned model bundle: what training publishes and what workers and servers load.

Layout under the artifacts root::

    ARTIFACTS/
      latest                      # one line: the version to serve (replaced atomically)
      versions/<version>/
        manifest.json             # version, creation time, data fingerprint, feature spec, metrics, files
        <files>                   # arrays (.npy), the ONNX ranker, the HNSW index, JSON tables

A bundle is written into a hidden temporary folder beside ``versions/`` and published with one
``os.rename``, so a reader sees either no bundle or a complete one; ``latest`` is then replaced
with ``os.replace``. Every file's SHA-256 is in the manifest and checked on load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.catalog import CatalogTable
from models.features.spec import check_feature_spec

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
LATEST = "latest"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, corrupt, or of a format this code cannot read."""


def fingerprint_files(paths: Iterable[Path], chunk: int = 1 << 20) -> str:
    """SHA-256 over the bytes of the training data, in the order given (names included)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class BundleWriter:
    """Collects the files of a new bundle in a temporary folder; ``publish()`` makes it visible."""

    root: Path
    data_fingerprint: str
    feature_spec_version: int
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(exist_ok=True)
        self.created = datetime.now(UTC)
        self.version = f"{self.created:%Y%m%dT%H%M%S}Z-{self.data_fingerprint[:8]}-{uuid.uuid4().hex[:4]}"
        self.tmp = self.root / f".tmp-{self.version}"
        self.tmp.mkdir()
        self._published = False

    def path(self, name: str) -> Path:
        """Where to write a file of the bundle (for writers that want a path, e.g. hnswlib)."""
        if "/" in name or name in {MANIFEST, ""}:
            raise ValueError(f"invalid bundle file name {name!r}")
        return self.tmp / name

    def save_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.path(f"{name}.npy"), np.ascontiguousarray(array), allow_pickle=False)

    def save_arrays(self, name: str, **arrays: np.ndarray) -> None:
        np.savez(self.path(f"{name}.npz"), **arrays)

    def save_json(self, name: str, value: Any) -> None:
        self.path(f"{name}.json").write_bytes(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    def save_bytes(self, name: str, data: bytes) -> None:
        self.path(name).write_bytes(data)

    def manifest(self) -> dict[str, Any]:
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(self.tmp.iterdir()) if p.name != MANIFEST
        }
        return {
            "format": BUNDLE_FORMAT, "version": self.version, "created_at": self.created.isoformat(),
            "data_fingerprint": self.data_fingerprint, "feature_spec_version": self.feature_spec_version,
            "params": self.params, "metrics": self.metrics, "files": files, **self.extra,
        }

    def publish(self, make_latest: bool = True) -> Path:
        """Write the manifest, move the folder into ``versions/`` in one rename, point ``latest`` at it."""
        manifest = self.manifest()
        (self.tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        final = self.root / "versions" / self.version
        os.rename(self.tmp, final)
        self._published = True
        if make_latest:
            set_latest(self.root, self.version)
        return final

    def discard(self) -> None:
        if not self._published:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        # An exception leaves no half bundle behind; a clean exit without publish() does not either.
        self.discard()


def set_latest(root: Path, version: str) -> None:
    if not (root / "versions" / version / MANIFEST).exists():
        raise BundleError(f"cannot point latest at {version}: no such published bundle in {root}")
    tmp = root / f".latest-{uuid.uuid4().hex}"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / LATEST)


def update_manifest(root: Path, version: str, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` to the manifest of the published bundle ``version`` (e.g. the retraining gate's
    comparison, known only once the bundle can be loaded and scored); returns the new manifest.

    The manifest is replaced with one ``os.replace``, so a reader sees the old or the new one whole. File
    checksums are untouched: ``manifest.json`` is not among the files they cover. Core fields (version,
    files, ...) cannot be changed this way.
    """
    reserved = {"format", "version", "created_at", "data_fingerprint", "feature_spec_version", "files"}
    if clash := reserved & fields.keys():
        raise ValueError(f"cannot overwrite manifest fields {sorted(clash)}")
    path = root / "versions" / version / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"bundle {version} not found under {root}") from None
    manifest.update(fields)
    tmp = path.with_name(f".{MANIFEST}-{uuid.uuid4().hex}")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)
    return dict(manifest)


def latest_version(root: Path) -> str:
    try:
        return (root / LATEST).read_text().strip()
    except FileNotFoundError:
        raise BundleError(f"no bundle published in {root} (run `streamrec train`)") from None


@dataclass
class Bundle:
    """A published bundle opened for reading; files are loaded on demand."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def feature_spec_version(self) -> int:
        return int(self.manifest["feature_spec_version"])

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.version} has no file {name!r}")
        return self.path / name

    def array(self, name: str) -> np.ndarray:
        return np.load(self.file(f"{name}.npy"), allow_pickle=False)

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.file(f"{name}.npz"), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def json(self, name: str) -> Any:
        return orjson.loads(self.file(f"{name}.json").read_bytes())

    def catalog_table(self) -> CatalogTable:
        """The bundle's titles (``items.npz``, ``catalog.json``, ``item_ids.json``) as a catalogue table (tags and
        cast are not kept in a bundle: a live upsert brings them)."""
        items = self.arrays("items")
        meta = self.json("catalog")
        item_ids: list[str] = self.json("item_ids")
        n = len(item_ids)
        year = items["year"].astype(np.int64).tolist() if "year" in items else [0] * n
        return CatalogTable(
            item_ids=list(item_ids), index={item_id: row for row, item_id in enumerate(item_ids)},
            titles=list(meta["titles"]), genres=[list(g) for g in meta["genres"]], tags=[[] for _ in range(n)],
            cast=[[] for _ in range(n)], year=year, release_ts=items["release_ts"].astype(np.int64).tolist(),
            first_seen_ts=items["first_seen_ts"].astype(np.int64).tolist(),
            maturity=items["maturity"].astype(np.int64).tolist(),
            is_original=items["is_original"].astype(bool).tolist(), available=items["available"].astype(bool).tolist(),
            described=[True] * n,
        )

    def bytes(self, name: str) -> bytes:
        return self.file(name).read_bytes()

    def verify(self) -> None:
        """Check every file against its recorded size and SHA-256."""
        for name, meta in self.manifest["files"].items():
            path = self.path / name
            if not path.exists():
                raise BundleError(f"bundle {self.version} is missing {name}")
            if path.stat().st_size != meta["bytes"] or _sha256(path) != meta["sha256"]:
                raise BundleError(f"bundle {self.version}: {name} does not match its manifest checksum")


def open_bundle(root: Path, version: str | None = None, *, verify: bool = True,
                check_features: bool = True) -> Bundle:
    """Open ``version`` (default: what ``latest`` names) under the artifacts root.

    With ``check_features`` (what workers and servers do) a bundle whose feature-spec version this
    code does not compute is refused with ``UnsupportedFeatureSpec``: its ranker would be fed
    columns that mean something else and score garbage without any error.
    """
    version = version or latest_version(root)
    path = root / "versions" / version
    try:
        manifest = orjson.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"bundle {version} not found under {root}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle {version} has format {manifest.get('format')}; this code reads {BUNDLE_FORMAT}")
    bundle = Bundle(path, manifest)
    if check_features:

        check_feature_spec(manifest.get("feature_spec_version"))
    if verify:
        bundle.verify()
    return bundle

