"""The API-key table every server replica reads: keys stored hashed, with a unique name, scopes and a creation time.

One Redis HASH (:attr:`online_state.keys.KeyLayout.api_keys`, ``sr-auth:api-keys``): field = the key's name, value =
JSON ``{"sha256": hex, "scopes": [...], "created_ms": int}``. Keyed by name so that ``HSETNX`` makes names unique
atomically and ``HDEL`` revokes one; servers load the whole (small) hash and index it by digest.

A key is ``srk_`` + 32 random bytes (``secrets.token_urlsafe``), shown once at creation and never stored: only its
SHA-256 is. SHA-256 and not a slow KDF (bcrypt, scrypt, argon2) on purpose: a slow hash protects *low-entropy*
secrets (passwords) against guessing, but a 256-bit random key cannot be guessed whatever the hash, and the server
checks a key on every request, where a KDF's deliberate ~100 ms would be the whole latency budget. The digest also
makes lookups constant-time with respect to the key: the server looks the digest up in a dict, never compares the
presented key with a stored one character by character.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from online_state.keys import DEFAULT_KEYS, KeyLayout

EVENTS_WRITE: Final = "events:write"
CATALOG_WRITE: Final = "catalog:write"
RECOMMENDATIONS_READ: Final = "recommendations:read"
ADMIN: Final = "admin"  # implies every other scope
SCOPES: Final = (EVENTS_WRITE, CATALOG_WRITE, RECOMMENDATIONS_READ, ADMIN)

KEY_PREFIX: Final = "srk_"  # recognisable in a leaked file or a secret scanner's rules
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class KeyTableError(ValueError):
    """A key operation the table refuses: an unknown scope, a bad or duplicate name."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the table knows of one key (never the key itself)."""

    name: str
    scopes: frozenset[str]
    created_ms: int

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scopes": sorted(self.scopes), "created_ms": self.created_ms}


def new_key() -> str:
    """A fresh key: ``srk_`` + 43 url-safe characters (32 random bytes)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The SHA-256 (hex) the table stores and the server looks a presented key up by."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes, checked against :data:`SCOPES` (``KeyTableError`` names an unknown one)."""
    wanted = frozenset(s.strip() for s in scopes if s.strip())
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise KeyTableError(f"unknown scope {', '.join(unknown)}; expected some of {', '.join(SCOPES)}")
    if not wanted:
        raise KeyTableError(f"a key needs at least one scope of {', '.join(SCOPES)}")
    return wanted


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyTableError(f"a key name is 1 to 64 of [A-Za-z0-9._-], got {name!r}")
    return name


async def create(redis: aioredis.Redis, name: str, scopes: Iterable[str], keys: KeyLayout = DEFAULT_KEYS,
                 now_ms: int | None = None) -> str:
    """Store a new key named ``name`` with ``scopes``; returns the key itself (the only time it exists in clear)."""
    record = KeyRecord(check_name(name), parse_scopes(scopes), int(time.time() * 1000) if now_ms is None else now_ms)
    key = new_key()
    value = orjson.dumps({"sha256": key_digest(key), "scopes": sorted(record.scopes), "created_ms": record.created_ms})
    if not await redis.hsetnx(keys.api_keys, name, value):
        raise KeyTableError(f"a key named {name!r} exists; revoke it first or choose another name")
    return key


async def revoke(redis: aioredis.Redis, name: str, keys: KeyLayout = DEFAULT_KEYS) -> bool:
    """Delete the key named ``name``; False when there was none. Servers stop accepting it at their next refresh."""
    return bool(await redis.hdel(keys.api_keys, name))


def _decode(name: bytes | str, value: bytes | str) -> tuple[str, KeyRecord]:
    row = orjson.loads(value)
    text = name.decode() if isinstance(name, bytes) else name
    return row["sha256"], KeyRecord(text, frozenset(row["scopes"]), int(row["created_ms"]))


async def load_all(redis: aioredis.Redis, keys: KeyLayout = DEFAULT_KEYS) -> dict[str, KeyRecord]:
    """The whole table, by digest: what a server checks presented keys against."""
    return dict(_decode(name, value) for name, value in (await redis.hgetall(keys.api_keys)).items())


async def list_keys(redis: aioredis.Redis, keys: KeyLayout = DEFAULT_KEYS) -> list[KeyRecord]:
    """Every key's name, scopes and creation time, by name (digests stay inside this module and the servers)."""
    return sorted((record for _, record in (await load_all(redis, keys)).items()), key=lambda r: r.name)
