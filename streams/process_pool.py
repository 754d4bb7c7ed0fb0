"""Several stream worker processes on one host: what ``streamrec worker --processes N`` runs.

A worker is one asyncio process, so it uses one core: a host with more cores runs several, all in the same
consumer group, which shares the partitions among them (and moves them when one stops). This module starts
them and holds them together, nothing more:

- process ``i`` (0-based) is the worker command given, with its own metrics port: ``metrics_port + i``
  (``metrics_port`` 0: no metrics for any). Every port is checked before any process starts, so a taken one
  is refused up front (each worker binds its port before it joins the group anyway).
- SIGTERM or SIGINT to the pool sends SIGTERM to every process, which stops as a single worker does (pending
  Kafka commits, clients closed); a process still running ``stop_timeout_s`` later is killed. The processes run
  in sessions of their own, so a terminal's Ctrl-C reaches the pool only and the stop is this one.
- one process that exits (a crash, a kill, an operator's signal to that pid) stops the others: the pool
  fails as one unit and exits non-zero when a process failed, so the service manager above it (systemd,
  Kubernetes) restarts all of it. No restarts in here: a crash loop stays visible there.
- a child dies with the pool: on Linux every child gets SIGTERM when the pool itself dies, even by SIGKILL
  (``PR_SET_PDEATHSIG``), so no orphan keeps consuming.

The exit code is 0 when every process exited 0, else the first failure's (a process killed by signal ``s``
counts as ``128 + s``, as shells report it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from foundation.logs import get_logger
from streams import metrics

log = get_logger(__name__)

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One worker process of the pool: its command line and the metrics port it serves (0: none)."""

    index: int
    argv: tuple[str, ...]
    metrics_port: int


def metrics_ports(metrics_port: int, processes: int) -> list[int]:
    """Process ``i``'s metrics port: ``metrics_port + i``; all 0 when ``metrics_port`` is 0."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if metrics_port <= 0:
        return [0] * processes
    if metrics_port + processes - 1 > 65535:
        raise ValueError(f"metrics ports {metrics_port}..{metrics_port + processes - 1} run past 65535")
    return [metrics_port + i for i in range(processes)]


def _exit_code(returncode: int) -> int:
    """A child's status as a shell reports it (killed by signal ``s``: ``128 + s``)."""
    return 128 - returncode if returncode < 0 else returncode


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the pool dies (Linux ``prctl``), or ``None``
    where there is no such call. libc is resolved here, in the parent: the forked child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # pragma: no cover - runs in the forked child, before exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


class WorkerPool:
    """Runs ``specs`` as child processes until a signal or one child's exit (see the module docstring)."""

    def __init__(self, specs: Sequence[ProcessSpec], *, metrics_host: str = metrics.DEFAULT_HOST,
                 stop_timeout_s: float = 30.0, env: dict[str, str] | None = None) -> None:
        self.specs = list(specs)
        self.metrics_host = metrics_host
        self.stop_timeout_s = stop_timeout_s
        self.env = env
        self.started: list[tuple[ProcessSpec, asyncio.subprocess.Process]] = []  # in start order
        self.stopping = asyncio.Event()
        self._signal: int | None = None

    def check_ports(self) -> None:
        """Raise :class:`~streams.metrics.MetricsPortInUse` for the first child's port that is taken."""
        for spec in self.specs:
            metrics.ensure_free(spec.metrics_port, self.metrics_host)

    def _on_signal(self, sig: int) -> None:
        if self._signal is None:
            self._signal = sig
            log.info("worker_pool.stopping", signal=signal.Signals(sig).name, processes=len(self.started))
        self.stopping.set()

    async def run(self) -> int:
        """Check the ports, start every child, wait for a signal or a child's exit, stop the rest; returns the
        pool's exit code."""
        self.check_ports()
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                handled.append(sig)
        try:
            return await self._run()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            for _, proc in self.started:  # only after an error in here: every child was waited for otherwise
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()

    async def _run(self) -> int:
        preexec = _parent_death_signal()
        for spec in self.specs:
            if self.stopping.is_set():
                break
            # A session of its own: a terminal's Ctrl-C reaches the pool only, which stops the children in order.
            proc = await asyncio.create_subprocess_exec(*spec.argv, env=self.env, preexec_fn=preexec,
                                                        start_new_session=True)
            self.started.append((spec, proc))
            log.info("worker_pool.started", index=spec.index, pid=proc.pid, metrics_port=spec.metrics_port or None)
        waits = {asyncio.ensure_future(proc.wait()): (spec, proc) for spec, proc in self.started}
        stop = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait([*waits, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        first: ProcessSpec | None = None
        if not self.stopping.is_set():  # a child exited on its own: the others follow it
            first, proc = next(waits[task] for task in waits if task in done)
            log.error("worker_pool.process_exited", index=first.index, pid=proc.pid,
                      exit_code=_exit_code(proc.returncode or 0), action="stopping the other processes")
        signalled = await self._stop_all()
        codes: dict[int, int] = {}
        for spec, proc in self.started:
            returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
            # Our own SIGTERM, taken before the child installed its handler (still importing): a clean stop.
            codes[spec.index] = 0 if proc in signalled and returncode == -signal.SIGTERM else _exit_code(returncode)
            (log.info if codes[spec.index] == 0 else log.error)(
                "worker_pool.process_stopped", index=spec.index, pid=proc.pid, exit_code=codes[spec.index])
        if first is not None and codes[first.index]:  # the cause first: the others' codes are its consequences
            return codes[first.index]
        return next((code for code in codes.values() if code), 0)

    async def _stop_all(self) -> list[asyncio.subprocess.Process]:
        """SIGTERM to every child still running, then wait; SIGKILL for those still there after the timeout.
        Returns the children that were sent SIGTERM."""
        running = [proc for _, proc in self.started if proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if running:
            _, late = await asyncio.wait([asyncio.ensure_future(proc.wait()) for proc in running],
                                         timeout=self.stop_timeout_s)
            if late:
                for proc in running:
                    if proc.returncode is None:
                        log.error("worker_pool.kill", pid=proc.pid, after_s=self.stop_timeout_s)
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                await asyncio.gather(*(proc.wait() for proc in running))
        return running


def run_pool(specs: Sequence[ProcessSpec], *, metrics_host: str = metrics.DEFAULT_HOST,
             stop_timeout_s: float = 30.0, env: dict[str, str] | None = None) -> int:
    """Run the pool to its end in a fresh event loop; returns the exit code for the command."""
    pool = WorkerPool(specs, metrics_host=metrics_host, stop_timeout_s=stop_timeout_s, env=env)
    return asyncio.run(pool.run())
