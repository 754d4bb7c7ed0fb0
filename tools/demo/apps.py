"""The demo's long-running apps: one stream worker and one API server, started detached like the stack.

They outlive the ``streamrec demo`` command (the demo leaves the system running for the user to
try), so they are tracked the way the stack's processes are: a pid file per process in the stack's
``run/`` folder recording pid, start time and a command-line marker, so that ``streamrec demo --down``
stops exactly these processes and nothing that reused their pids.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from foundation.child_env import settings_env
from foundation.settings import Settings
from tools.stack import StackError, process
from tools.stack.layout import StackLayout
from tools.stack.process import StopOutcome

APPS = ("worker", "server")


@dataclass(frozen=True)
class AppStatus:
    name: str
    pid: int
    address: str
    log_file: str
    started: bool  # False: it was already running


def _pid_file(layout: StackLayout, name: str) -> Path:
    return layout.run_dir / f"demo-{name}.json"


def _argv(name: str, artifacts: Path, settings: Settings) -> list[str]:
    cli = [sys.executable, "-m", "streamrec.cli"]
    if name == "worker":
        return [*cli, "worker", "--artifacts", str(artifacts), "--metrics-port", str(settings.worker_metrics_port)]
    return [*cli, "serve", "--artifacts", str(artifacts), "--host", settings.server_host,
            "--port", str(settings.server_port)]


def server_url(settings: Settings) -> str:
    return f"http://{settings.server_host}:{settings.server_port}"


def start_apps(settings: Settings, artifacts: Path, cwd: Path) -> list[AppStatus]:
    """Start the worker and the server unless they are running (idempotent, like ``stack up``).

    Each gets ``settings`` as ``STREAMREC_*`` variables; the server's include the browser page's key and clock
    offset (``page_api_key``, ``page_clock_offset_ms``), the worker's do not."""
    layout = StackLayout.from_settings(settings)
    artifacts = artifacts.resolve()
    server_env = settings_env(settings.model_copy(update={"artifacts": artifacts}))
    # The page's key is the server's business only (it hands it to the page): not in the worker's environment.
    worker_env = settings_env(settings.model_copy(update={"artifacts": artifacts, "page_api_key": None,
                                                          "page_clock_offset_ms": 0}))
    out = []
    with process.file_lock(layout.run_dir / "demo.lock"):
        for name in APPS:
            pid_file = _pid_file(layout, name)
            address = server_url(settings) if name == "server" else f"metrics :{settings.worker_metrics_port}"
            record = process.read_record(pid_file)
            if record is not None and process.owns(record):
                out.append(AppStatus(name, record.pid, address, record.log_file, started=False))
                continue
            port = settings.server_port if name == "server" else settings.worker_metrics_port
            record = process.spawn_detached(
                _argv(name, artifacts, settings), name=f"demo-{name}",
                marker="streamrec.cli worker" if name == "worker" else "streamrec.cli serve", port=port,
                log_file=layout.logs_dir / f"demo-{name}.log", cwd=cwd,
                env=server_env if name == "server" else worker_env,
            )
            process.write_record(pid_file, record)
            out.append(AppStatus(name, record.pid, address, record.log_file, started=True))
    return out


async def wait_server_ready(settings: Settings, timeout_s: float = 120.0) -> dict[str, object]:
    """Poll ``/readyz`` until it answers 200; raises :class:`StackError` with the server log's tail."""
    layout = StackLayout.from_settings(settings)
    url = f"{server_url(settings)}/readyz"
    started = time.monotonic()
    last: object = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < timeout_s:
            record = process.read_record(_pid_file(layout, "server"))
            if record is not None and not process.owns(record):
                raise StackError(f"the server exited; its log:\n{process.tail(record.log_file)}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    last = await response.json(content_type=None)
                    if response.status == 200:
                        return last  # type: ignore[return-value]
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
    log_file = layout.logs_dir / "demo-server.log"
    raise StackError(f"the server was not ready within {timeout_s:.0f} s (last /readyz: {last}); "
                     f"its log:\n{process.tail(log_file)}")


async def wait_key_accepted(settings: Settings, key: str) -> None:
    """Until the server accepts ``key`` (a server already running picks a new key up at its next key-table refresh).

    The probe is ``POST /v1/events`` with an empty array: 401 while the key is unknown, 400 ("no event") once it is
    accepted; nothing is ever published."""
    url = f"{server_url(settings)}/v1/events"
    deadline = time.monotonic() + settings.auth_keys_refresh_s + 15
    status = 0
    async with aiohttp.ClientSession(headers={"X-API-Key": key, "Content-Type": "application/json"}) as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=b"[]", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    status = response.status
                    if status != 401:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise StackError(f"the server still refuses the demo's API key (last answer {status}); is Redis shared?")


def stop_apps(settings: Settings, names: tuple[str, ...] = APPS) -> list[tuple[str, StopOutcome]]:
    """Stop the demo's server and worker, or only ``names`` of them (only processes whose pid files verify as
    ours)."""
    layout = StackLayout.from_settings(settings)
    return [(name, process.stop_pid_file(_pid_file(layout, name), timeout_s=20))
            for name in reversed(APPS) if name in names]
