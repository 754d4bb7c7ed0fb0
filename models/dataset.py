"""An event log (``catalog.jsonl`` + ``events.jsonl``) as compact, time-ordered numpy columns.

Training, evaluation and the offline feature builder all start here, so ids are mapped to dense
indices once: ``Catalog.index[item_id]`` and ``EventLog.user_index[user_id]``. Items are indexed
in order of first appearance in the catalog, users in order of first event, so a log gives the
same indices every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.catalog import Catalog, load_catalog
from schemas.decoder import EventError, interaction_decoder
from schemas.events import (
    DEVICES,
    MATURITY_ORDER,
    AddToList,
    Click,
    Complete,
    Impression,
    InteractionEvent,
    Play,
    Progress,
    Rating,
    Skip,
    UserUpsert,
)

# Event kinds as small integer codes (the column ``EventLog.kind``).
KINDS: Final[tuple[str, ...]] = (
    "play", "progress", "complete", "rating", "click", "skip", "add_to_list", "impression", "user_upsert",
)
KIND: Final[dict[str, int]] = {name: code for code, name in enumerate(KINDS)}
_KIND_OF: Final[dict[type, int]] = {
    Play: KIND["play"], Progress: KIND["progress"], Complete: KIND["complete"], Rating: KIND["rating"],
    Click: KIND["click"], Skip: KIND["skip"], AddToList: KIND["add_to_list"], Impression: KIND["impression"],
    UserUpsert: KIND["user_upsert"],
}
DEVICE_CODE: Final[dict[str, int]] = {name: code + 1 for code, name in enumerate(DEVICES)}  # 0 = unknown
NO_ITEM: Final = -1


@dataclass
class EventLog:
    """Interaction and profile events in time order, as columns (one row per event)."""

    catalog: Catalog
    user_ids: list[str]
    user_index: dict[str, int]
    ts: NDArray[np.int64]
    user: NDArray[np.int32]
    item: NDArray[np.int32]  # NO_ITEM for impressions and profile events
    kind: NDArray[np.int8]
    value: NDArray[np.float32]  # rating value; watched seconds for progress/complete/skip; else 0
    duration: NDArray[np.float32]  # duration_seconds when sent, else 0
    device: NDArray[np.int8]  # DEVICE_CODE, 0 when unknown
    country: NDArray[np.int16]  # index into ``countries`` + 1, 0 when unknown
    hour: NDArray[np.int8]  # local hour, -1 when unknown
    countries: list[str] = field(default_factory=list)
    # Impressions: the shown items of event row r are impression_items[impression_ptr[k]:impression_ptr[k+1]]
    # for the k-th impression row (rows listed in impression_rows).
    impression_rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    impression_ptr: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    impression_items: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    user_maturity_limit: NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8))  # -1 none
    rejected: int = 0

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return len(self.ts)

    def item_events(self) -> NDArray[np.bool_]:
        """Mask of rows that are an interaction with one item (not impressions, not profiles)."""
        return self.item >= 0

    def select(self, mask: NDArray[np.bool_]) -> EventLog:
        """The same log restricted to some rows (indices of users and items unchanged)."""
        rows = np.flatnonzero(mask)
        keep_imp = np.isin(self.impression_rows, rows)
        starts, ends = self.impression_ptr[:-1][keep_imp], self.impression_ptr[1:][keep_imp]
        items = [self.impression_items[s:e] for s, e in zip(starts, ends, strict=True)]
        lengths = np.array([len(x) for x in items], np.int64)
        new_row = np.searchsorted(rows, self.impression_rows[keep_imp])
        return EventLog(
            catalog=self.catalog, user_ids=self.user_ids, user_index=self.user_index,
            ts=self.ts[rows], user=self.user[rows], item=self.item[rows], kind=self.kind[rows],
            value=self.value[rows], duration=self.duration[rows], device=self.device[rows],
            country=self.country[rows], hour=self.hour[rows], countries=self.countries,
            impression_rows=new_row.astype(np.int64),
            impression_ptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            impression_items=np.concatenate(items).astype(np.int32) if items else np.zeros(0, np.int32),
            user_maturity_limit=self.user_maturity_limit, rejected=self.rejected,
        )


def read_events(path: Path) -> Iterator[tuple[bytes, InteractionEvent | None]]:
    """Each non-blank line of an ``events.jsonl`` (line end stripped) with its decoded event, ``None`` when it
    does not decode: the one reading of the file for :func:`load_log` and the tools that map lines to rows."""
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                event = interaction_decoder.decode(line)
            except EventError:
                yield line.rstrip(b"\r\n"), None
                continue
            yield line.rstrip(b"\r\n"), event


def load_log(folder: Path) -> EventLog:
    """Read ``folder/catalog.jsonl`` and ``folder/events.jsonl`` (invalid lines are counted, skipped)."""
    catalog = load_catalog(folder / "catalog.jsonl")
    user_index: dict[str, int] = {}
    user_ids: list[str] = []
    countries: dict[str, int] = {}
    cols: dict[str, list[float]] = {k: [] for k in ("ts", "user", "item", "kind", "value", "duration",
                                                    "device", "country", "hour")}
    imp_rows: list[int] = []
    imp_lengths: list[int] = []
    imp_items: list[int] = []
    maturity_limit: dict[int, int] = {}
    maturity_pos = {m: i for i, m in enumerate(MATURITY_ORDER)}
    rejected = 0
    item_index = catalog.index

    def user_of(user_id: str) -> int:
        idx = user_index.get(user_id)
        if idx is None:
            idx = user_index[user_id] = len(user_ids)
            user_ids.append(user_id)
        return idx

    for _, event in read_events(folder / "events.jsonl"):
        if event is None:
            rejected += 1
            continue
        u = user_of(event.user_id)
        kind = _KIND_OF[type(event)]
        item = NO_ITEM
        value = duration = 0.0
        if isinstance(event, Impression):
            shown = [item_index[i] for i in event.item_ids if i in item_index]
            imp_rows.append(len(cols["ts"]))
            imp_lengths.append(len(shown))
            imp_items.extend(shown)
        elif isinstance(event, UserUpsert):
            if event.maturity_limit is not None:
                maturity_limit[u] = maturity_pos[event.maturity_limit]
        else:
            found = item_index.get(event.item_id)
            if found is None:
                rejected += 1  # an interaction with a title the catalog never announced
                continue
            item = found
            if isinstance(event, Rating):
                value = event.value
            elif isinstance(event, Progress | Complete | Skip):
                value = event.watched_seconds or 0.0
                duration = getattr(event, "duration_seconds", None) or 0.0
        ctx = getattr(event, "context", None)
        cols["ts"].append(event.ts)
        cols["user"].append(u)
        cols["item"].append(item)
        cols["kind"].append(kind)
        cols["value"].append(value)
        cols["duration"].append(duration)
        cols["device"].append(DEVICE_CODE.get(ctx.device, 0) if ctx and ctx.device else 0)
        if ctx and ctx.country:
            cols["country"].append(countries.setdefault(ctx.country, len(countries)) + 1)
        else:
            cols["country"].append(0)
        cols["hour"].append(ctx.local_hour if ctx and ctx.local_hour is not None else -1)

    ts = np.array(cols["ts"], np.int64)
    # events.jsonl is time-ordered by contract; a stable sort keeps it so for hand-made logs too.
    order = np.argsort(ts, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    limits = np.full(len(user_ids), -1, np.int8)
    for u, m in maturity_limit.items():
        limits[u] = m
    imp_row_arr = inverse[np.array(imp_rows, np.int64)] if imp_rows else np.zeros(0, np.int64)
    imp_order = np.argsort(imp_row_arr, kind="stable")
    lengths = np.array(imp_lengths, np.int64)
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items_arr = np.array(imp_items, np.int32)
    chunks = [items_arr[ptr[k]:ptr[k + 1]] for k in imp_order]
    return EventLog(
        catalog=catalog, user_ids=user_ids, user_index=user_index, ts=ts[order],
        user=np.array(cols["user"], np.int32)[order], item=np.array(cols["item"], np.int32)[order],
        kind=np.array(cols["kind"], np.int8)[order], value=np.array(cols["value"], np.float32)[order],
        duration=np.array(cols["duration"], np.float32)[order], device=np.array(cols["device"], np.int8)[order],
        country=np.array(cols["country"], np.int16)[order], hour=np.array(cols["hour"], np.int8)[order],
        countries=list(countries), impression_rows=imp_row_arr[imp_order],
        impression_ptr=np.concatenate([[0], np.cumsum(lengths[imp_order])]).astype(np.int64),
        impression_items=np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, np.int32),
        user_maturity_limit=limits, rejected=rejected,
    )
