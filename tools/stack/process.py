"""Pid files, detached starts and verified stop-by-pid for the processes of the local stack.

A pid alone does not identify a process (pids are reused), so a pid file records three things:
the pid, the process start time in clock ticks since boot (``/proc/PID/stat`` field 22, fixed for
the life of a process) and a marker string that must appear in ``/proc/PID/cmdline``. A process
"is ours" only when all three match; :func:`stop` never signals anything else.

Linux only (it reads ``/proc``), like the rest of the local stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from foundation.logs import get_logger
from tools.stack.errors import StackError

log = get_logger(__name__)

PROC = Path("/proc")

# A process's output is never appended to its log file directly (that file would grow without bound): it goes
# through a pipe to a small rotating writer, a Python process of its own (_WRITER), which appends to the log
# file and, once the file reaches LOG_MAX_BYTES, renames it to ``NAME.1`` (``NAME.1`` to ``NAME.2``, ...,
# keeping LOG_BACKUPS old files) and starts a new one, like logging.handlers.RotatingFileHandler; it rotates
# at a line boundary, so no file passes LOG_MAX_BYTES (a longer line is split). The writer exits when the
# pipe closes: when the service and every child that shares its output have exited. At most
# (1 + LOG_BACKUPS) x LOG_MAX_BYTES per log file: 40 MB by default.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3

_WRITER = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
path, max_bytes, backups = sys.argv[1], max(1, int(sys.argv[2])), int(sys.argv[3])

def open_log():
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def rotate(fd):
    os.close(fd)
    if backups > 0:
        for i in range(backups - 1, 0, -1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        os.replace(path, f"{path}.1")
    else:
        os.truncate(path, 0)
    return open_log()

fd = open_log()
size = os.fstat(fd).st_size
while True:
    data = os.read(0, 65536)
    if not data:
        break
    try:
        while data:
            room = max_bytes - size
            if len(data) <= room:
                part, data = data, b""
            else:
                cut = data.rfind(b"\\n", 0, max(room, 0)) + 1  # the whole lines that still fit
                if cut == 0 and size > 0:
                    fd, size = rotate(fd), 0
                    continue
                part, data = data[:cut or room], data[cut or room:]  # or a line longer than a file, split
            os.write(fd, part)
            size += len(part)
            if data:
                fd, size = rotate(fd), 0
    except OSError:
        pass  # disk full or the folder removed: drop the output, never block the service
"""

# Runs in a short-lived Python process: it starts the rotating writer and the service (each in a new session,
# the service's output piped to the writer), prints the service's pid and exits at once. The service is
# thereby re-parented away from the caller: it outlives the CLI, and a long-lived caller (a test session) is
# never left holding an unwaited child or a zombie.
_LAUNCHER = """\
import json, os, subprocess, sys
argv, log_file, cwd, writer, max_bytes, backups = json.loads(sys.argv[1]), *sys.argv[2:7]
out = subprocess.Popen([sys.executable, "-I", "-c", writer, log_file, max_bytes, backups],
                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       start_new_session=True, close_fds=True)
proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out.stdin,
                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
print(proc.pid, flush=True)
os._exit(0)
"""


@dataclass(frozen=True)
class ProcInfo:
    """What ``/proc`` says about one pid."""

    state: str
    start_ticks: int
    cmdline: tuple[str, ...]

    @property
    def alive(self) -> bool:
        # Z: zombie (exited, not yet reaped), X: dead.
        return self.state not in {"Z", "X"}


@dataclass(frozen=True)
class ProcessRecord:
    """The content of a pid file."""

    name: str
    pid: int
    start_ticks: int
    marker: str
    port: int
    log_file: str
    argv: tuple[str, ...] = ()
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ProcessRecord:
        raw = json.loads(text)
        return cls(
            name=str(raw["name"]),
            pid=int(raw["pid"]),
            start_ticks=int(raw["start_ticks"]),
            marker=str(raw["marker"]),
            port=int(raw["port"]),
            log_file=str(raw["log_file"]),
            argv=tuple(str(a) for a in raw.get("argv", ())),
            started_at=float(raw.get("started_at", 0.0)),
        )


class StopOutcome(StrEnum):
    STOPPED = "stopped"  # exited after SIGTERM
    KILLED = "killed"  # needed SIGKILL
    NOT_RUNNING = "not running"  # no pid file
    STALE = "stale"  # a pid file whose process is gone (or is no longer ours): file removed


def proc_info(pid: int) -> ProcInfo | None:
    """``/proc/PID`` facts, or None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw_cmdline = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = tuple(part.decode(errors="replace") for part in raw_cmdline.split(b"\0") if part)
    return ProcInfo(state=fields[0], start_ticks=int(fields[19]), cmdline=cmdline)


def owns(record: ProcessRecord) -> bool:
    """True when the pid file's process is alive and still the very process we started."""
    info = proc_info(record.pid)
    return (
        info is not None
        and info.alive
        and info.start_ticks == record.start_ticks
        and record.marker in " ".join(info.cmdline)
    )


def exited(record: ProcessRecord) -> bool:
    """True when the process we started is gone (or a zombie, or the pid reused by another process).

    Weaker than ``not owns(record)`` on purpose: a live process of ours may briefly show an empty or half-written
    command line (redis-server rewrites its process title after start-up; a read of ``/proc/PID/cmdline`` in that
    window finds no marker), which must not pass for "exited while starting"."""
    info = proc_info(record.pid)
    return info is None or not info.alive or info.start_ticks != record.start_ticks


def write_record(path: Path, record: ProcessRecord) -> None:
    """Write a pid file atomically (a reader sees the old file or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def read_record(path: Path) -> ProcessRecord | None:
    """The pid file's record; None when it is missing or unreadable (a corrupt file is removed)."""
    try:
        return ProcessRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("stack.pidfile.corrupt", path=str(path), error=str(exc))
        path.unlink(missing_ok=True)
        return None


def spawn_detached(
    argv: Sequence[str],
    *,
    name: str,
    marker: str,
    port: int,
    log_file: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    log_max_bytes: int = LOG_MAX_BYTES,
    log_backups: int = LOG_BACKUPS,
) -> ProcessRecord:
    """Start ``argv`` in a new session, detached from the caller, output appended to ``log_file``, which
    rotates at ``log_max_bytes`` keeping ``log_backups`` old files (``log_file.1``, ...; see _WRITER).

    Returns the record to write to the pid file. Raises :class:`StackError` if the program cannot be
    executed or exits before its start time could be read.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    launched = subprocess.run(
        [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(list(argv)), str(log_file), str(cwd), _WRITER,
         str(log_max_bytes), str(log_backups)],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if launched.returncode != 0 or not launched.stdout.strip().isdigit():
        reason = launched.stderr.strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"could not start {name} ({argv[0]}): {reason[0]}")
    pid = int(launched.stdout.strip())
    info = proc_info(pid)
    if info is None or not info.alive:
        time.sleep(0.2)  # let the writer append the last of its output
        raise StackError(f"{name} exited right after it started; its output:\n{tail(log_file)}")
    record = ProcessRecord(
        name=name,
        pid=pid,
        start_ticks=info.start_ticks,
        marker=marker,
        port=port,
        log_file=str(log_file),
        argv=tuple(argv),
        started_at=time.time(),
    )
    log.debug("stack.process.started", name=name, pid=pid, log_file=str(log_file))
    return record


def _wait_gone(record: ProcessRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not owns(record):
            return True
        time.sleep(0.1)
    return not owns(record)


def _signal(record: ProcessRecord, sig: signal.Signals) -> None:
    # Checked right before every signal: never signal a pid that is not (or no longer) ours.
    if owns(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)


def stop(record: ProcessRecord, *, timeout_s: float = 30.0, kill_timeout_s: float = 10.0) -> StopOutcome:
    """Stop the process of ``record`` if it is still ours: SIGTERM, wait, then SIGKILL.

    Returns :attr:`StopOutcome.STALE` (and signals nothing) when the pid is gone or belongs to some
    other process now. Raises :class:`StackError` if the process survives SIGKILL.
    """
    if not owns(record):
        return StopOutcome.STALE
    log.debug("stack.process.sigterm", name=record.name, pid=record.pid)
    _signal(record, signal.SIGTERM)
    if _wait_gone(record, timeout_s):
        return StopOutcome.STOPPED
    log.warning("stack.process.sigkill", name=record.name, pid=record.pid, waited_s=timeout_s)
    _signal(record, signal.SIGKILL)
    if _wait_gone(record, kill_timeout_s):
        return StopOutcome.KILLED
    raise StackError(f"{record.name} (pid {record.pid}) is still running after SIGKILL")


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 20.0) -> None:
    """Stop a child this process started and still holds (a worker under test): SIGTERM, wait, SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_pid_file(path: Path, *, timeout_s: float = 30.0) -> StopOutcome:
    """Stop the process named by a pid file and remove the file."""
    record = read_record(path)
    if record is None:
        return StopOutcome.NOT_RUNNING
    outcome = stop(record, timeout_s=timeout_s)
    path.unlink(missing_ok=True)
    return outcome


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block: serialises `up` and `down` of one stack."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail(path: Path | str, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
