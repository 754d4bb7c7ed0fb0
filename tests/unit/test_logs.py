"""Logs never carry secrets or locals, one line per exception, and repeats are rate-limited with a count."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from foundation.logs import RepeatFilter, configure_logging, get_logger
from foundation.settings import Settings, mask_url

SECRET_KEY = "sk-secret-123"
REDIS_PASSWORD = "redis-pass-456"
LOCAL_MARKER = "a-local-only-in-the-frame-789"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level, saved_config = root.handlers[:], root.level, structlog.get_config()
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.configure(**saved_config)


def _fail_with_settings() -> None:
    settings = Settings(_env_file=None, api_key=SECRET_KEY, redis_url=f"redis://app:{REDIS_PASSWORD}@cache:6379/0")
    marker = LOCAL_MARKER
    raise RuntimeError(f"cannot reach {settings.redis_url} ({len(marker)})\nsecond line")


def _log_failure(name: str) -> None:
    try:
        _fail_with_settings()
    except RuntimeError:
        get_logger(name).exception("unhandled error", request_id="req-42")


@pytest.mark.parametrize("as_json", [False, True])
def test_an_exception_is_one_line_without_locals_or_secrets(captured: io.StringIO, as_json: bool) -> None:
    configure_logging("INFO", as_json, stream=captured)
    _log_failure(f"test.logs.exc.{as_json}")
    out = captured.getvalue()
    assert SECRET_KEY not in out and REDIS_PASSWORD not in out
    assert LOCAL_MARKER not in out  # no locals
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert "req-42" in out and "RuntimeError" in out and "_fail_with_settings" in out
    if as_json:
        record = json.loads(lines[0])
        assert record["request_id"] == "req-42"
        assert record["exc_type"] == "RuntimeError"
        assert record["exc_message"].startswith("cannot reach redis://app:**********@cache:6379/0")
        assert "test_logs.py" in record["exc_where"]


def test_a_stdlib_exception_is_one_line_too(captured: io.StringIO) -> None:
    configure_logging("INFO", False, stream=captured)
    try:
        _fail_with_settings()
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    out = captured.getvalue()
    assert len(out.splitlines()) == 1, out
    assert SECRET_KEY not in out and REDIS_PASSWORD not in out and LOCAL_MARKER not in out
    assert "exc_type=RuntimeError" in out


def test_settings_print_their_secrets_masked() -> None:
    settings = Settings(_env_file=None, api_key=SECRET_KEY, redis_url=f"redis://app:{REDIS_PASSWORD}@cache:6379/0")
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.api_key)):
        assert SECRET_KEY not in text and REDIS_PASSWORD not in text
    # ... yet the values themselves are intact for the code that needs them.
    assert settings.api_key_value() == SECRET_KEY and settings.api_key.encode() == SECRET_KEY.encode()
    assert settings.redis_url.endswith(f":{REDIS_PASSWORD}@cache:6379/0")
    assert settings.redis_url_masked == "redis://app:**********@cache:6379/0"
    assert not Settings(_env_file=None).api_key  # unset: falsy, as before
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"  # a port is not a password


def test_child_env_passes_the_secret_itself() -> None:
    from foundation.child_env import settings_env

    env = settings_env(Settings(_env_file=None, api_key=SECRET_KEY), base={})
    assert env["STREAMREC_API_KEY"] == SECRET_KEY


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_warnings_are_rate_limited_with_a_count(captured: io.StringIO) -> None:
    configure_logging("INFO", True, stream=captured)
    clock = _Clock()
    handler = logging.getLogger().handlers[0]
    handler.filters[:] = [RepeatFilter(10.0, clock)]
    log = get_logger("test.logs.repeat")
    for _ in range(100):
        log.warning("kafka.unreachable", broker="b:9092")
        clock.now += 0.05  # 20 a second for 5 s
    log.warning("other.event")
    log.info("kafka.unreachable")  # info is never dropped
    clock.now += 10.0
    log.warning("kafka.unreachable", broker="b:9092")
    records = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [(r["event"], r["level"], r.get("repeated")) for r in records] == [
        ("kafka.unreachable", "warning", None), ("other.event", "warning", None),
        ("kafka.unreachable", "info", None), ("kafka.unreachable", "warning", 99)]


def test_repeat_filter_applies_to_stdlib_records_and_forgets_stale_keys() -> None:
    clock = _Clock()
    flt = RepeatFilter(5.0, clock)

    def record(msg: Any, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", level, __file__, 1, msg, ("x",), None)

    assert flt.filter(record("Unable connect to %s"))
    assert not flt.filter(record("Unable connect to %s"))
    assert flt.filter(record("another %s"))
    clock.now += 5.0
    passed = record("Unable connect to %s")
    assert flt.filter(passed) and passed.streamrec_repeated == 1  # type: ignore[attr-defined]
