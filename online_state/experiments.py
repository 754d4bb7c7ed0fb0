"""The stored form of the experiments' exactly-once counts, and the read the report is computed from.

Written by the worker (:mod:`streams.experiments`), read by ``streamrec experiments report`` through
:func:`read_experiment_data`. Keys (:class:`~online_state.keys.KeyLayout`):

============================ ====== ==================================================================================
``sr:x:{u:<user>}``          STRING the user's :class:`ExperimentBlob` (msgpack array), read and written whole by the
                                    worker that owns the user's partition, like the session
``sr:xc:{name}``             HASH   per-variant counters, field ``{variant}:{counter}``: ``exposures``, ``users``
                                    (first exposures), ``degraded``, ``shown:{pos}`` / ``clicks:{pos}`` (positions
                                    ``0..POSITIONS-1``), ``lat:{bucket}`` (index into ``LATENCY_EDGES_MS``)
``sr:xu:{name}:{variant}``   SET    the users exposed to the variant (the report's rows)
``sr:xt:{name}:{variant}``   STRING HyperLogLog of the titles the variant showed
============================ ====== ==================================================================================

The shared keys change through commutative, per-batch summed increments only (``HINCRBY``, ``SADD``, ``PFADD``):
several workers' partitions add to them in any order. The per-user blob (``v`` = :data:`EXPERIMENT_BLOB_VERSION`):

======= ===========================================================================================================
v       layout version
total   the user's positive engagements so far (play, complete, click, rating, add_to_list)
recent  the last exposures (:class:`Exposure`, newest first): at most ``RECENT_EXPOSURES`` within the
        attribution window of the newest one (:mod:`streams.experiments`)
exp     ``{experiment: Entry}``: every experiment the user was exposed to (:class:`Entry`)
======= ===========================================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np

from foundation.redis_io import mget_any
from models.experiments.data import LATENCY_EDGES_MS, POSITIONS, ExperimentData, VariantData
from online_state.keys import KeyLayout

EXPERIMENT_BLOB_VERSION: Final = 1
READ_CHUNK: Final = 1000  # blobs per MGET (and users per SSCAN page) when the report reads a variant


class Tag(msgspec.Struct, array_like=True):
    """One experiment of an exposure (:class:`schemas.events.ExposureTag`, ``teams`` cut like the items)."""

    name: str
    variant: str
    teams: list[str] | None = None


class Exposure(msgspec.Struct, array_like=True):
    """One answer shown to the user in at least one experiment."""

    rid: str  # the answer's request_id
    ts: int
    items: list[str]  # the titles shown, in order (the first EXPOSURE_ITEMS of them)
    tags: list[Tag]


class Entry(msgspec.Struct, array_like=True):
    """The user in one experiment: variant and first exposure, then what followed (the report's per-user row)."""

    variant: str
    first: int  # ts (ms) of the first exposure
    pre: int  # positive engagements before it (``total`` then: CUPED's covariate)
    exposures: int = 0
    clicks: int = 0  # attributed to an exposure of this experiment
    plays: int = 0
    completes: int = 0
    ratings: int = 0
    hits: int = 0  # attributed positive engagements on a title that exposure showed
    engagements: int = 0  # every positive engagement after the first exposure
    credit: dict[str, int] = {}  # interleaving: team -> attributed positive engagements on its titles


class ExperimentBlob(msgspec.Struct, array_like=True):
    """The value of ``{prefix}:x:{u:<user>}`` (see the module docstring)."""

    v: int
    total: int = 0
    recent: list[Exposure] = []
    exp: dict[str, Entry] = {}


encode_experiment_blob = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(ExperimentBlob).decode


def decode_experiment_blob(raw: bytes | None) -> ExperimentBlob | None:
    """A stored blob, or ``None`` (absent, or of another layout version: start over)."""
    if raw is None:
        return None
    blob = _decode(raw)
    return blob if blob.v == EXPERIMENT_BLOB_VERSION else None


def counter_field(variant: str, counter: str) -> str:
    """A field of :meth:`~online_state.keys.KeyLayout.experiment_counts` (``counter``: ``exposures``, ``shown:3``)."""
    return f"{variant}:{counter}"


def latency_bucket(server_ms: float) -> int:
    """The index of the first edge of :data:`LATENCY_EDGES_MS` at or above ``server_ms`` (the last is ``inf``)."""
    return next(i for i, edge in enumerate(LATENCY_EDGES_MS) if server_ms <= edge)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _variants_seen(counts: Mapping[str, int]) -> list[str]:
    """The variants that have counters, in name order."""
    return sorted({f.rsplit(":", 1)[0] for f in counts if f.endswith((":users", ":exposures"))})


async def _members(redis: Any, key: str) -> set[str]:
    # SSCAN pages, not SMEMBERS: a variant of millions of users must not block the server for one reply.
    return {_text(m) async for m in redis.sscan_iter(key, count=READ_CHUNK)}


async def _blobs(redis: Any, keys: KeyLayout, users: Sequence[str]) -> list[ExperimentBlob | None]:
    out: list[ExperimentBlob | None] = []
    for start in range(0, len(users), READ_CHUNK):
        chunk = [keys.experiment_user(u) for u in users[start:start + READ_CHUNK]]
        out.extend(decode_experiment_blob(raw) for raw in await mget_any(redis, chunk))
    return out


def _counters(target: VariantData, counts: Mapping[str, int], variants: Sequence[str]) -> None:
    """Fill ``target``'s counters (not per user) with the sum over ``variants``' fields."""
    for variant in variants:
        for pos in range(POSITIONS):
            target.shown_by_position[pos] += counts.get(counter_field(variant, f"shown:{pos}"), 0)
            target.clicks_by_position[pos] += counts.get(counter_field(variant, f"clicks:{pos}"), 0)
        for b in range(len(LATENCY_EDGES_MS)):
            target.latency_counts[b] += counts.get(counter_field(variant, f"lat:{b}"), 0)
        target.degraded += counts.get(counter_field(variant, "degraded"), 0)


_ROW_FIELDS: Final = ("exposures", "clicks", "plays", "completes", "ratings", "hits", "engagements")


def _rows(target: VariantData, name: str, users: list[str], blobs: Sequence[ExperimentBlob | None],
          team: str | None) -> None:
    """Fill ``target``'s per-user arrays from the users' blobs (a user without an entry counts zeros)."""
    n = len(users)
    columns = {f: np.zeros(n, np.int64) for f in (*_ROW_FIELDS, "pre", "credit")}
    for row, blob in enumerate(blobs):
        entry = blob.exp.get(name) if blob is not None else None
        if entry is None:
            continue
        for f in _ROW_FIELDS:
            columns[f][row] = getattr(entry, f)
        columns["pre"][row] = entry.pre
        if team is not None:
            columns["credit"][row] = entry.credit.get(team, 0)
    target.users = list(users)
    for f in _ROW_FIELDS:
        setattr(target, f, columns[f])
    target.pre_engagements = columns["pre"]
    target.credit = columns["credit"]


async def read_experiment_data(redis: Any, keys: KeyLayout, name: str, kind: str = "ab",
                               weights: Mapping[str, float] | None = None, catalogue_size: int = 0
                               ) -> ExperimentData:
    """Experiment ``name`` as the report needs it (:class:`~models.experiments.data.ExperimentData`).

    ``kind`` ``"ab"``: one :class:`VariantData` per configured variant (``weights``' order; the variants with
    counters when ``weights`` is empty), rows = the variant's users in id order. ``"interleave"``: every user sees
    the drafted list (the exposure's variant is the interleaved arm), so there is one :class:`VariantData` per team
    (``weights``' names) over the same users, each with the team's ``credit`` and the arm's counters.
    Round trips: one ``HGETALL`` and one pipeline of ``PFCOUNT`` s, then per variant its ``SSCAN`` pages and one
    ``MGET`` per :data:`READ_CHUNK` users (split by slot on a cluster).
    """
    weights = dict(weights or {})
    counts = {_text(k): int(v) for k, v in (await redis.hgetall(keys.experiment_counts(name))).items()}
    seen = _variants_seen(counts)
    arms = (list(weights) or seen) if kind == "ab" else seen
    pipe = redis.pipeline(transaction=False)
    for arm in arms:
        pipe.pfcount(keys.experiment_titles(name, arm))
    titles = dict(zip(arms, (int(n) for n in await pipe.execute()), strict=True)) if arms else {}
    variants: list[VariantData] = []
    if kind == "interleave":
        users_set: set[str] = set()
        for arm in arms:
            users_set |= await _members(redis, keys.experiment_users(name, arm))
        users = sorted(users_set)
        blobs = await _blobs(redis, keys, users)
        teams = list(weights) or sorted({t for b in blobs if b is not None and name in b.exp
                                         for t in b.exp[name].credit})
        for team in teams:
            data = VariantData(team)
            _rows(data, name, users, blobs, team)
            _counters(data, counts, arms)
            # Distinct titles of the interleaved lists (the HLLs are per arm, not per team).
            data.titles_shown = sum(titles.values())
            variants.append(data)
    else:
        for arm in arms:
            users = sorted(await _members(redis, keys.experiment_users(name, arm)))
            data = VariantData(arm)
            _rows(data, name, users, await _blobs(redis, keys, users), None)
            _counters(data, counts, [arm])
            data.titles_shown = titles.get(arm, 0)
            variants.append(data)
    return ExperimentData(name=name, kind=kind, variants=variants, weights=weights, catalogue_size=catalogue_size,
                          control=variants[0].name if variants else "")
