"""Point-in-time training rows: replay an event log through the online state code.

:func:`build_rows` walks the requests in time order while replaying the log into an
:class:`~models.features.state.InMemoryStore` with the same update code the stream workers run
(:func:`~models.features.state.apply_user_events`, :func:`~models.features.state.item_deltas`).
Before a request at ``ts`` it applies exactly the events with ``event.ts < ts``, so a row sees the
state the server would have read at that moment and nothing after it (an event at ``ts`` itself
is the one being predicted, not context). Rows are then :func:`~models.features.rows.feature_batch`,
the function the server calls.

Events are applied in chunks between request times (at most ``max_chunk`` events at once);
the result does not depend on the chunking (see ``state.apply_user_events``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from models.dataset import EventLog
from models.features import spec
from models.features.batch import FeatureBatch
from models.features.hashing import hash_str
from models.features.rows import RequestContext, feature_batch
from models.features.state import EventBatch, InMemoryStore, ItemStatic, log_country_codes

MAX_CHUNK = 250_000  # events per applied batch: bounds the temporary arrays of one step


@dataclass(frozen=True, slots=True)
class Request:
    """Rank ``candidates`` (catalog indices) for log user ``user`` at ``ts`` (ms) in ``context``."""

    user: int
    ts: int
    candidates: NDArray[np.int64]
    context: RequestContext = field(default_factory=RequestContext)


ExtraDenseFn = Callable[[Request], Mapping[str, NDArray[np.floating] | float]]


def context_at(log: EventLog, row: int) -> RequestContext:
    """The context of event ``row`` of the log, e.g. for a request placed at an impression."""
    country = int(log.country[row])  # an index into log.countries + 1, 0 unknown
    code = spec.country_code(log.countries[country - 1]) if country > 0 else 0
    return RequestContext(device=int(log.device[row]), country=code, hour=int(log.hour[row]))


class Replay:
    """A log replayed up to a moving point in time (for callers that interleave their own reads)."""

    def __init__(self, log: EventLog, static: ItemStatic | None = None, max_chunk: int = MAX_CHUNK) -> None:
        self.log = log
        self.static = ItemStatic.from_catalog(log.catalog) if static is None else static
        if self.static.item_ids != log.catalog.item_ids:
            # The replay keys items by catalog index and reads static rows by the same index.
            raise ValueError("static item table is not the log's catalog (build it with ItemStatic.from_catalog)")
        self.store = InMemoryStore(self.static, n_users=log.n_users, n_items=self.static.n_items)
        self.cursor = 0  # log rows [0, cursor) are applied
        self.max_chunk = max_chunk
        self._country = log_country_codes(log)

    def _stop(self, until_ts: int) -> int:
        return int(np.searchsorted(self.log.ts, until_ts, "left"))

    def advance(self, until_ts: int | None) -> None:
        """Apply every event with ``ts < until_ts`` not applied yet (all of them for ``None``)."""
        stop = self.log.n_events if until_ts is None else self._stop(until_ts)
        if stop < self.cursor:
            raise ValueError(f"the replay is past {until_ts}: it cannot go back in time")
        while self.cursor < stop:
            end = min(stop, self.cursor + self.max_chunk)
            self.store.apply(EventBatch.from_log(self.log, self.cursor, end, self.static, self._country))
            self.cursor = end

    def features(self, request: Request, extra_dense: ExtraDenseFn | None = None) -> FeatureBatch:
        """Rows of one request from the current state (the caller has advanced to ``request.ts``)."""
        if self._stop(request.ts) != self.cursor:  # the state must be exactly "every event before ts"
            raise ValueError(f"advance the replay to the request's time {request.ts} first")
        candidates = np.asarray(request.candidates, np.int64)
        return feature_batch(
            hash_str(self.log.user_ids[request.user]), self.store.read_user(request.user),
            self.store.read_items(candidates, request.ts), self.static.rows(candidates), request.context,
            request.ts, extra_dense(request) if extra_dense is not None else None,
        )


def replay_state(log: EventLog, until_ts: int | None = None, static: ItemStatic | None = None) -> InMemoryStore:
    """The state after every event with ``ts < until_ts`` (the whole log for ``None``)."""
    replay = Replay(log, static)
    replay.advance(until_ts)
    return replay.store


def build_rows(
    log: EventLog,
    requests: Sequence[Request],
    static: ItemStatic | None = None,
    extra_dense_fn: ExtraDenseFn | None = None,
) -> tuple[FeatureBatch, NDArray[np.int64]]:
    """Feature rows of every request, each built from the events strictly before its ``ts``.

    Returns the rows of all requests concatenated in the order given, and for each row the position
    of its request in ``requests``. Requests may come in any order (they are served in time order).
    """
    replay = Replay(log, static)
    order = np.argsort(np.array([r.ts for r in requests], np.int64), kind="stable")
    out: list[FeatureBatch | None] = [None] * len(requests)
    for i in order:
        request = requests[i]
        replay.advance(request.ts)
        out[i] = replay.features(request, extra_dense_fn)
    batches = [b for b in out if b is not None]
    if not batches:
        empty = FeatureBatch(np.zeros((0, len(spec.DENSE_NAMES)), np.float32),
                             np.zeros((0, len(spec.WIDE_NAMES)), np.int64),
                             np.zeros((0, len(spec.CAT_NAMES)), np.int64))
        return empty, np.zeros(0, np.int64)
    lengths = np.array([len(b) for b in batches], np.int64)
    return FeatureBatch.concat(batches), np.repeat(np.arange(len(requests), dtype=np.int64), lengths)
