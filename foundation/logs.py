"""Structured logging (structlog over the standard library), configured once per process.

Three rules hold for every line, from structlog and from the standard library (aiohttp, aiokafka) alike:

- **One line per exception, never locals.** An exception is logged as fields of its record: ``exc_type``,
  ``exc_message`` (one line, cut at 500 characters) and ``exc_where`` (the innermost frames as
  ``file:line function``, at most five). No traceback renderer runs (rich's pretty tracebacks print every
  frame's locals: settings, keys, request bodies), so no locals can ever reach a log. A request id bound by
  the caller (``request_id=...`` or ``structlog.contextvars``) stays on the same line.
- **Secrets masked.** A password inside a URL (``redis://user:pw@host``) is masked in every string field.
  API keys are :class:`~foundation.settings.ApiKey` values that print ``**********``.
- **Repeats rate-limited.** A warning or error with the same logger, event (and exception type) passes at
  most once per ``repeat_window_s`` (10 s by default); the next one that passes carries ``repeated=K``, the
  number of lines dropped since the last one. Info and debug lines are never dropped. (Lines dropped after the
  last one that passed are not reported: the count comes with the next line of that kind.)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

import structlog

from foundation.settings import mask_url

REPEAT_WINDOW_S = 10.0
_MAX_TRACKED = 4096  # (logger, event) keys the repeat filter remembers before it forgets the stale ones
_MAX_MESSAGE = 500
_FRAMES = 5

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info(value: Any) -> _ExcInfo | None:
    if value is None or value is False:
        return None
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and value[1] is not None:
        return value  # type: ignore[return-value]
    current = sys.exc_info()
    return current if current[1] is not None else None  # type: ignore[return-value]


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = mask_url(text).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module in {"builtins", "__main__"} else f"{module}.{exc_type.__qualname__}"


def _where(tb: TracebackType | None) -> str:
    """The innermost frames, ``dir/file.py:line function`` each, outermost first; no source, no locals."""
    frames = list(traceback.walk_tb(tb))[-_FRAMES:]
    parts = []
    for frame, lineno in frames:
        path = frame.f_code.co_filename
        short = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
        parts.append(f"{short}:{lineno} {frame.f_code.co_name}")
    return " > ".join(parts)


def exception_fields(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Processor: replace ``exc_info`` (True, an exception or a tuple) by one-line fields; drop stack_info."""
    event_dict.pop("stack_info", None)
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is None:
        return event_dict
    exc_type, exc, tb = info
    event_dict["exc_type"] = _type_name(exc_type)
    event_dict["exc_message"] = _one_line(str(exc))
    event_dict["exc_where"] = _where(tb)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        event_dict["exc_cause"] = f"{_type_name(type(cause))}: {_one_line(str(cause), 200)}"
    if isinstance(event_dict.get("event"), str):
        event_dict["event"] = _one_line(event_dict["event"])
    return event_dict


def mask_secrets(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Processor: mask URL passwords in every string field."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "@" in value:
            event_dict[key] = mask_url(value)
    return event_dict


class RepeatFilter(logging.Filter):
    """Lets a warning (or worse) with the same (logger, level, event, exception type) through at most once per
    ``window_s``; the next one that passes gets ``repeated=K`` (the lines dropped in between)."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str, str], list[float]] = {}  # key -> [last passed at, dropped since]

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple[str, int, str, str]:
        if isinstance(record.msg, dict):  # from structlog: the event dict
            event, exc = str(record.msg.get("event")), str(record.msg.get("exc_type", ""))
        else:
            event = str(record.msg)
            exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        return record.name, record.levelno, event, exc

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.window_s <= 0:
            return True
        key, now = self._key(record), self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.window_s:
                entry[1] += 1
                return False
            dropped = int(entry[1]) if entry is not None else 0
            if entry is None and len(self._seen) >= _MAX_TRACKED:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
                if len(self._seen) >= _MAX_TRACKED:
                    self._seen.clear()
            self._seen[key] = [now, 0]
        if dropped:
            record.streamrec_repeated = dropped
        return True


def _add_repeated(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    dropped = getattr(event_dict.get("_record"), "streamrec_repeated", 0)
    if dropped:
        event_dict["repeated"] = dropped
    return event_dict


def configure_logging(level: str = "INFO", as_json: bool = False, *, stream: IO[str] | None = None,
                      repeat_window_s: float = REPEAT_WINDOW_S) -> None:
    """Route stdlib and structlog records through one renderer on ``stream`` (default stderr).

    stderr, so that commands with ``--json`` keep stdout machine-readable.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json
        # plain_traceback only as a backstop: exception_fields has already turned exc_info into fields.
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exception_fields,
        mask_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RepeatFilter(repeat_window_s))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            _add_repeated, structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO about every (re)connection.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
