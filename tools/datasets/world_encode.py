"""Encoding of the generator's ordered rows into ``events.jsonl`` lines, and the malformed variants.

Every line is built as a :mod:`schemas.events` struct and encoded by msgspec, so valid lines are the
canonical bytes of the schema (measured faster than formatting JSON by hand: float formatting is
what makes hand-built lines slow). Columns are first turned into object arrays of ready strings and
shared :class:`~schemas.events.Context` structs, gathered per event type in C, so the Python work
left is one struct construction per line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import IO, Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from schemas.events import (
    DEVICES,
    AddToList,
    Click,
    Complete,
    Context,
    Event,
    Impression,
    Play,
    Progress,
    Rating,
    Skip,
)
from tools.datasets.world_catalog import Catalog
from tools.datasets.world_sessions import (
    ADD_TO_LIST,
    CLICK,
    HOUR_MS,
    IMPRESSION,
    KIND_NAMES,
    PLAY,
    PROGRESS,
    RATING,
    SKIP,
    UPSERT,
    Rows,
)
from tools.datasets.world_users import COUNTRIES, Users

MALFORMED_KINDS: Final[tuple[str, ...]] = (
    "not_json", "missing_field", "wrong_type", "out_of_range", "unknown_type",
)


_TS = re.compile(rb'"ts":(\d+)')
_TS_FIELD = re.compile(rb'"ts":\d+,')
_TYPE = re.compile(rb'"type":"[a-z_]+"')


def corrupt(line: bytes, kind: int) -> bytes:
    """An invalid variant of a valid event line, one of :data:`MALFORMED_KINDS` (single line)."""
    if kind == 0:  # not JSON: the line is cut in half
        return line[: len(line) // 2]
    if kind == 1:  # a required field is missing
        return _TS_FIELD.sub(b"", line, count=1)  # ts is never last: schema_version follows it
    if kind == 2:  # ts as a string
        return _TS.sub(rb'"ts":"\1"', line, count=1)
    if kind == 3:  # ts in microseconds: past the year 2100 bound
        return _TS.sub(lambda m: b'"ts":' + m.group(1) + b"000", line, count=1)
    return _TYPE.sub(b'"type":"teleport"', line, count=1)  # unknown type


class EventWriter:
    """Encodes ordered rows into events.jsonl, replacing a share of them with malformed lines."""

    def __init__(
        self, f: IO[bytes], seed: int, malformed_rate: float, catalog: Catalog, users: Users,
        rng: np.random.Generator, progress: Callable[[int], None] | None,
    ) -> None:
        self.f, self.malformed_rate, self.users = f, malformed_rate, users
        self.rng, self.progress = rng, progress
        self.item_ids = catalog.ids
        # Object arrays of id strings; index -1 (no item: profile events, impressions) maps to "".
        self.item_id_arr = np.array([*catalog.ids, ""], dtype=object)
        self.user_ids = np.array(users.ids, dtype=object)
        self.durations = catalog.duration
        self.prefix = f"e{seed}-"
        self.sess_prefix = f"s{seed}-"
        self.req_prefix = f"r{seed}-"
        self.written = 0
        self.counts = [0] * len(KIND_NAMES)
        self.bad_counts = [0] * len(MALFORMED_KINDS)
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.max_session = -1
        self.encoder = msgspec.json.Encoder()

    def write(self, rows: Rows, slates: dict[int, list[int]]) -> None:
        """Encode and append ``rows`` (already in time order)."""
        n = len(rows)
        if n == 0:
            return
        users = self.users
        # Columns become object arrays of ready strings/structs, gathered per kind in C; the Python
        # work left is one struct construction per event (the struct then guarantees canonical JSON).
        first = self.written
        eid = np.array([f"{self.prefix}{i}" for i in range(first, first + n)], dtype=object)
        uid = self.user_ids[rows.user]
        iid = self.item_id_arr[rows.item]
        ts_all = rows.ts
        local_hour = (ts_all // HOUR_MS + users.tz[rows.user]) % 24
        # One Context per (session, local hour): few distinct ones, shared by many events.
        keys, inverse = np.unique(rows.sess * 24 + local_hour, return_inverse=True)
        # Any row of a group serves: device is per session, country per user, the hour is in the key.
        first_of = np.zeros(len(keys), dtype=np.int64)
        first_of[inverse] = np.arange(n)
        sess_prefix = self.sess_prefix
        ctx_list = [
            Context(device=DEVICES[d], country=COUNTRIES[c], local_hour=h,
                    session_id=f"{sess_prefix}{k // 24}")
            for k, d, c, h in zip(
                keys.tolist(), rows.device[first_of].tolist(), users.country[rows.user[first_of]].tolist(),
                local_hour[first_of].tolist(), strict=True,
            )
        ]
        ctx = np.empty(len(ctx_list), dtype=object)
        ctx[:] = ctx_list
        ctx = ctx[inverse]
        out = np.empty(n, dtype=object)
        kind_count = np.bincount(rows.kind, minlength=len(KIND_NAMES))
        for k in np.flatnonzero(kind_count).tolist():
            idx = np.flatnonzero(rows.kind == k)
            cols = (eid[idx].tolist(), ts_all[idx].tolist(), uid[idx].tolist())
            if k == UPSERT:
                built: list[Event] = [users.upsert(u, e, t) for e, t, u in zip(
                    cols[0], cols[1], rows.user[idx].tolist(), strict=True)]
            elif k == IMPRESSION:
                req = self.req_prefix
                names = self.item_ids
                built = [
                    Impression(event_id=e, ts=t, schema_version=1, user_id=u, context=c,
                               request_id=f"{req}{s}", item_ids=[names[i] for i in slates.pop(s)])
                    for e, t, u, c, s in zip(*cols, ctx[idx].tolist(), rows.sess[idx].tolist(), strict=True)
                ]
            else:
                built = self._interactions(k, idx, cols, iid, ctx, rows)
            part = np.empty(len(built), dtype=object)
            part[:] = built
            out[idx] = part
        for k, c in enumerate(kind_count.tolist()):
            self.counts[k] += c
        self.f.write(self._encode(out.tolist(), rows))
        self.written = first + n
        self.max_session = max(self.max_session, int(rows.sess.max()))
        if self.first_ts is None:
            self.first_ts = int(ts_all[0])
        self.last_ts = int(ts_all[-1])
        if self.progress is not None:
            self.progress(n)

    def _interactions(
        self, k: int, idx: NDArray[np.int64], cols: tuple[list[Any], list[Any], list[Any]],
        iid: NDArray[np.object_], ctx: NDArray[np.object_], rows: Rows,
    ) -> list[Event]:
        """Structs for the rows ``idx`` of one interaction kind ``k``."""
        z = zip(*cols, iid[idx].tolist(), ctx[idx].tolist(), strict=True)
        if k == PLAY:
            return [Play(event_id=e, ts=t, schema_version=1, user_id=u, item_id=i, context=c)
                    for e, t, u, i, c in z]
        if k == ADD_TO_LIST:
            return [AddToList(event_id=e, ts=t, schema_version=1, user_id=u, item_id=i, context=c)
                    for e, t, u, i, c in z]
        value = rows.value[idx].tolist()
        if k == CLICK:
            req = self.req_prefix
            return [
                Click(event_id=e, ts=t, schema_version=1, user_id=u, item_id=i, context=c,
                      request_id=f"{req}{s}", position=int(v))
                for (e, t, u, i, c), s, v in zip(z, rows.sess[idx].tolist(), value, strict=True)
            ]
        if k == RATING:
            return [Rating(event_id=e, ts=t, schema_version=1, user_id=u, item_id=i, context=c, value=v)
                    for (e, t, u, i, c), v in zip(z, value, strict=True)]
        if k == SKIP:
            return [
                Skip(event_id=e, ts=t, schema_version=1, user_id=u, item_id=i, context=c, watched_seconds=v)
                for (e, t, u, i, c), v in zip(z, value, strict=True)
            ]
        cls = Progress if k == PROGRESS else Complete
        durations = self.durations[rows.item[idx]].tolist()
        return [
            cls(event_id=e, ts=t, schema_version=1, user_id=u, item_id=i, context=c, watched_seconds=v,
                duration_seconds=d)
            for (e, t, u, i, c), v, d in zip(z, value, durations, strict=True)
        ]

    def _encode(self, events: list[Event], rows: Rows) -> bytes:
        rate = self.malformed_rate
        if rate <= 0.0:
            return self.encoder.encode_lines(events)
        # Profile events stay valid so that every user's user_upsert still precedes their events.
        bad = (self.rng.random(len(events)) < rate) & (rows.kind != UPSERT)
        if not bad.any():
            return self.encoder.encode_lines(events)
        kinds = self.rng.integers(0, len(MALFORMED_KINDS), len(events))
        encode = self.encoder.encode
        out: list[bytes] = []
        flags = zip(events, bad.tolist(), kinds.tolist(), rows.kind.tolist(), strict=True)
        for event, is_bad, kind, k in flags:
            if is_bad:
                out.append(corrupt(encode(event), kind))
                self.bad_counts[kind] += 1
                self.counts[k] -= 1
            else:
                out.append(encode(event))
        out.append(b"")
        return b"\n".join(out)
