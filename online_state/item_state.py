"""Every title's ranking feature state held in a server process, as arrays (issue 10: item state in process).

Redis' item hashes (``{prefix}:i:{item}``, :mod:`online_state.feature_codec`) stay the truth. A server keeps a
copy of all of them in one :class:`ItemStateTable` so that a request reads its ~1,000 candidates' rows from
memory (a numpy gather) instead of from Redis. The copy is kept current by two feeds, both full rows:

- **the ``item-state`` topic** (compacted, keyed by item id): after each batch's ``EXEC`` the worker publishes
  the new value of every item hash the batch changed (:class:`ItemStateRecord`: the hash as ``HGETALL`` read it
  inside the same atomic call, its version and the commit time). Every server replica tails it.
- **a snapshot of Redis** (:func:`load_item_states`) at start and every few minutes after: rows a worker could
  not publish (it died between its ``EXEC`` and the send) are repaired by the next pass.

Order: each item hash carries a version ``v`` that every write increments in the same atomic call that
changes the counters and reads the row back, so two records of one item (from two workers, through two
producers) are ordered by ``v`` and the table keeps the higher: feeds may overlap and arrive in any order.
(After ``streamrec worker --rebuild`` restarts every version from 1, restart the servers too.)

Popularity epochs: a row holds ``{prefix}:{epoch}`` sums of a few epochs; the table keeps one column per
(prefix, epoch) for the latest :data:`EPOCHS_KEPT` epochs seen per prefix. A read at ``now`` needs the epoch of
``now`` and the one before (:func:`~online_state.feature_codec.item_fields`); :meth:`ItemStateTable.covers`
says whether the table can answer it (epochs newer than any held are zeros, as in Redis, and epochs older than
the ones held may have been dropped: the caller reads Redis then, as point-in-time backtests far in the past do).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np
import redis.asyncio.cluster as aiocluster
from numpy.typing import NDArray

from models.features import spec
from models.features.state import ITEM_COUNT_NAMES
from online_state.keys import KeyLayout

VERSION_FIELD: Final = "v"  # the item hash's write counter (see the module docstring)
EPOCHS_KEPT: Final = 4  # popularity epochs held per prefix (a read needs 2; the cleanup keeps <= 3 in Redis)
_COUNT_COLUMN: Final = {name: i for i, name in enumerate(ITEM_COUNT_NAMES)}
_POP_PREFIXES: Final = tuple(prefix for prefix, _ in spec.POP_HALF_LIVES)


class ItemStateRecord(msgspec.Struct, array_like=True, frozen=True):
    """The value of an ``item-state`` record (msgpack): the item hash after a commit.

    ``v``: the hash's version; ``t``: the worker's wall clock (ms) when its ``EXEC`` returned (for the
    staleness figure); ``f``: the hash's fields and values, flat (``[name, value, ...]``, as ``HGETALL``).
    """

    v: int
    t: int
    f: list[str | int]  # names are str; values int, or decimal str (as Redis replied: parsed by the reader)


encode_record = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(ItemStateRecord).decode


def decode_record(raw: bytes) -> ItemStateRecord:
    return _decode_record(raw)


def record_of(flat: Sequence[Any] | dict[Any, Any], committed_ms: int, version: int | None = None) -> ItemStateRecord:
    """A record from an ``HGETALL`` reply (flat, or the dict redis-py makes of it; bytes or str names, decimal
    values) read right after a commit. With ``version`` (the bulk path's reply, where the names are str already)
    the fields are passed on as they are: the reader parses them, the worker does not loop over them."""
    if isinstance(flat, dict):
        flat = [x for pair in flat.items() for x in pair]
    if version is not None and (not flat or isinstance(flat[0], str)):
        return ItemStateRecord(v=version, t=committed_ms, f=list(flat))
    fields: list[str | int] = []
    version = 0
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        key = name.decode() if isinstance(name, bytes) else str(name)
        number = int(value)
        if key == VERSION_FIELD:
            version = number
        else:
            fields += [key, number]
    return ItemStateRecord(v=version, t=committed_ms, f=fields)


class ItemStateTable:
    """Rows of every item's state, newest version kept (see the module docstring). Not thread-safe: one
    event loop owns it (the tail applies records between requests)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._row: dict[str, int] = {}
        self.ids: list[str] = []
        self.version = np.zeros(capacity, np.int64)
        self.counts = np.zeros((capacity, len(ITEM_COUNT_NAMES)), np.int64)
        # prefix -> epoch -> column (a view of one row of _pop), the latest EPOCHS_KEPT epochs per prefix
        self._pop_cols: dict[str, dict[int, int]] = {p: {} for p in _POP_PREFIXES}
        self._pop = np.zeros((len(_POP_PREFIXES) * EPOCHS_KEPT, capacity), np.int64)
        self._free = {p: list(range(i * EPOCHS_KEPT, (i + 1) * EPOCHS_KEPT)) for i, p in enumerate(_POP_PREFIXES)}
        # Epochs below this may have been dropped (a read that needs one is not covered); -1: none dropped.
        self.floor: dict[str, int] = {p: -1 for p in _POP_PREFIXES}
        self.applied = 0  # records that changed a row
        self.ignored = 0  # records older than the row held (a version not above it)
        self.loaded = False  # a full snapshot of Redis went in (until then reads go to Redis)
        # id(universe index) -> (that index, universe row -> table row, table rows folded in): row_map's cache
        self._maps: dict[int, tuple[Mapping[str, int], NDArray[np.int64], int]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (the id index's Python objects come on top: measured by the benchmark)."""
        return self.version.nbytes + self.counts.nbytes + self._pop.nbytes

    # -- writes ------------------------------------------------------------------------------------

    def _grow(self, need: int) -> None:
        capacity = len(self.version)
        if need <= capacity:
            return
        new = max(need, 2 * capacity)
        self.version = np.concatenate([self.version, np.zeros(new - capacity, np.int64)])
        self.counts = np.concatenate([self.counts, np.zeros((new - capacity, self.counts.shape[1]), np.int64)])
        self._pop = np.concatenate([self._pop, np.zeros((self._pop.shape[0], new - capacity), np.int64)], axis=1)

    def _row_of(self, item_id: str) -> int:
        row = self._row.get(item_id)
        if row is None:
            row = self._row[item_id] = len(self.ids)
            self.ids.append(item_id)
            self._grow(len(self.ids))
        return row

    def _column(self, prefix: str, epoch: int) -> int | None:
        """The column of ``prefix:epoch``, made when it is among the latest epochs; ``None`` when too old."""
        cols = self._pop_cols[prefix]
        col = cols.get(epoch)
        if col is not None:
            return col
        if epoch < self.floor[prefix]:
            return None
        if not self._free[prefix]:
            oldest = min(cols)
            if epoch < oldest:
                return None
            self._free[prefix].append(cols.pop(oldest))
            self.floor[prefix] = oldest + 1
        col = cols[epoch] = self._free[prefix].pop()
        self._pop[col] = 0
        return col

    def apply(self, item_id: str, record: ItemStateRecord) -> bool:
        """Replace ``item_id``'s row by ``record`` if it is newer (a higher version); ``True`` when it was."""
        row = self._row_of(item_id)
        if record.v <= self.version[row] and record.v != 0:
            self.ignored += 1
            return False
        counts = np.zeros(len(ITEM_COUNT_NAMES), np.int64)
        pop: list[tuple[int, int]] = []
        flat = record.f
        for name, value in zip(flat[::2], flat[1::2], strict=True):
            assert isinstance(name, str)
            col = _COUNT_COLUMN.get(name)
            if col is not None:
                counts[col] = int(value)
                continue
            prefix, sep, epoch = name.partition(":")
            if sep and prefix in self._pop_cols and epoch.lstrip("-").isdigit():
                pop_col = self._column(prefix, int(epoch))
                if pop_col is not None:
                    pop.append((pop_col, int(value)))
        self.version[row] = record.v
        self.counts[row] = counts
        self._pop[:, row] = 0  # a field absent from the row is zero (Redis' HMGET of it gives nothing)
        for col, value in pop:
            self._pop[col, row] = value
        self.applied += 1
        return True

    def apply_many(self, records: Iterable[tuple[str, ItemStateRecord]]) -> int:
        return sum(self.apply(item_id, record) for item_id, record in records)

    # -- reads -------------------------------------------------------------------------------------

    def covers(self, epochs: Sequence[int]) -> bool:
        """Whether a read at ``now``'s popularity ``epochs`` (one per prefix) is answered from here."""
        return self.loaded and all(e - 1 >= self.floor[p] for p, e in zip(_POP_PREFIXES, epochs, strict=True))

    def rows_of(self, item_ids: Sequence[str]) -> NDArray[np.int64]:
        """Table rows of ``item_ids`` (-1: not held, i.e. no state yet)."""
        get = self._row.get
        return np.fromiter((get(i, -1) for i in item_ids), np.int64, len(item_ids))

    def row_map(self, universe_ids: Sequence[str], universe_index: Mapping[str, int]) -> NDArray[np.int64]:
        """``out[r]``: the table row of ``universe_ids[r]`` (-1: not held), for a caller that numbers its items
        itself (the serving model's item rows): a request then maps its candidates with one numpy gather
        instead of a dict lookup per candidate. Kept per universe (``universe_index``, by identity) and brought
        up to date incrementally as either side grows (both only ever append)."""
        entry = self._maps.get(id(universe_index))
        if entry is None or entry[0] is not universe_index:
            if len(self._maps) >= 4:  # a reload's new model replaces the old one: keep only a few
                self._maps.clear()
            entry = (universe_index, np.full(0, -1, np.int64), 0)
        index, mapping, table_done = entry
        n = len(universe_ids)
        if n > len(mapping):  # new titles in the universe: look them up here
            get = self._row.get
            grown = np.fromiter((get(universe_ids[r], -1) for r in range(len(mapping), n)), np.int64,
                                n - len(mapping))
            mapping = np.concatenate([mapping, grown])
        if len(self.ids) > table_done:  # new titles in the table since: point the universe's rows at them
            for row in range(table_done, len(self.ids)):
                r = index.get(self.ids[row])
                if r is not None and r < len(mapping):
                    mapping[r] = row
        self._maps[id(universe_index)] = (index, mapping, len(self.ids))
        return mapping

    def values(self, item_ids: Sequence[str], epochs: Sequence[int]) -> NDArray[np.int64]:
        """The rows of ``item_ids`` in :func:`~online_state.feature_codec.item_fields` order (counts, then per
        prefix the sums of epoch ``e-1`` and ``e``); zeros for items without state. Assumes :meth:`covers`."""
        return self.values_at(self.rows_of(item_ids), epochs)

    def values_at(self, rows: NDArray[np.int64], epochs: Sequence[int]) -> NDArray[np.int64]:
        """:meth:`values` of table rows (-1: not held, zeros)."""
        held = rows >= 0
        safe = np.where(held, rows, 0)
        out = np.zeros((len(rows), len(ITEM_COUNT_NAMES) + 2 * len(_POP_PREFIXES)), np.int64)
        out[:, : len(ITEM_COUNT_NAMES)] = self.counts[safe]
        col = len(ITEM_COUNT_NAMES)
        for prefix, end in zip(_POP_PREFIXES, epochs, strict=True):
            for epoch in (end - 1, end):
                pop_col = self._pop_cols[prefix].get(epoch)
                if pop_col is not None:
                    out[:, col] = self._pop[pop_col, safe]
                col += 1
        out[~held] = 0
        return out


# -- the snapshot of Redis --------------------------------------------------------------------------

HGETALL_MANY: Final = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return cmsgpack.pack(out)
"""
_decode_rows = msgspec.msgpack.Decoder(list[list[str]]).decode


async def load_item_states(redis: Any, keys: KeyLayout, table: ItemStateTable, *, chunk: int = 2000) -> int:
    """Read every item hash of Redis into ``table`` (newer rows the table holds stay); returns the rows read.

    ``SCAN`` in chunks, each chunk's hashes read by one script (one round trip, packed by ``cmsgpack``), so a
    million titles load in a few hundred round trips without blocking Redis for long at a time.
    """
    pattern = keys.item_state("*")
    strip = len(keys.item_state(""))
    now_ms = int(time.time() * 1000)
    if isinstance(redis, aiocluster.RedisCluster):
        return await _load_from_cluster(redis, pattern, strip, table, now_ms, chunk)
    script = redis.register_script(HGETALL_MANY)
    read = 0
    cursor: int | bytes = 0
    while True:
        cursor, names = await redis.scan(cursor=cursor, match=pattern, count=chunk)
        if names:
            ids = [(n.decode() if isinstance(n, bytes) else n)[strip:] for n in names]
            rows = _decode_rows(await script(keys=list(names)))
            for item_id, flat in zip(ids, rows, strict=True):
                if flat:
                    table.apply(item_id, record_of(flat, now_ms))
            read += len(ids)
        if int(cursor) == 0:
            break
    table.loaded = True
    return read


async def _load_from_cluster(redis: aiocluster.RedisCluster, pattern: str, strip: int, table: ItemStateTable,
                             now_ms: int, chunk: int) -> int:
    """:func:`load_item_states` on Redis Cluster: ``scan_iter`` walks every master (redis-py's cluster SCAN), and a
    chunk's hashes are read by a pipeline of ``HGETALL`` s, which the client splits by master and sends at once (a
    script may only touch keys of one slot there, and a chunk's keys are in many)."""
    read = 0
    names: list[Any] = []

    async def apply(batch: list[Any]) -> int:
        pipe = redis.pipeline(transaction=False)
        for name in batch:
            pipe.hgetall(name)
        for name, record in zip(batch, await pipe.execute(), strict=True):
            if record:
                table.apply((name.decode() if isinstance(name, bytes) else name)[strip:], record_of(record, now_ms))
        return len(batch)

    async for name in redis.scan_iter(match=pattern, count=chunk):
        names.append(name)
        if len(names) >= chunk:
            read += await apply(names)
            names = []
    if names:
        read += await apply(names)
    table.loaded = True
    return read
