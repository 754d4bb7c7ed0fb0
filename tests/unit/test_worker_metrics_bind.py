"""The worker's metrics server listens on loopback unless told otherwise (issue 11: it was 0.0.0.0:9108)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import Settings
from streams import metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_default_host_is_loopback() -> None:
    assert Settings(_env_file=None).worker_metrics_host == "127.0.0.1"
    assert metrics.DEFAULT_HOST == "127.0.0.1"


def test_serve_binds_the_given_host(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, Any]] = []
    monkeypatch.setattr(metrics, "start_http_server", lambda port, addr="0.0.0.0": calls.append((port, addr)))
    monkeypatch.setattr(metrics, "_served", set())
    assert metrics.serve(19108) and metrics.serve(19108)  # once per address
    assert metrics.serve(19109, "0.0.0.0")
    assert not metrics.serve(0)
    assert calls == [(19108, "127.0.0.1"), (19109, "0.0.0.0")]


def test_the_real_server_listens_on_loopback_only() -> None:
    port = _free_port()
    assert metrics.serve(port)
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex
