"""The log files of the processes `stack up` and `demo` start rotate by size (issue 11: they grew without bound)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tools.stack import process


def _files(log: Path) -> list[str]:
    return sorted(p.name for p in log.parent.iterdir() if p.name.startswith(log.name))


def test_the_writer_rotates_and_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_bytes(b"old line\n" * 50)  # 450 bytes left by an earlier run
    lines = b"".join(b"line %05d of the service's output\n" % i for i in range(2000))  # ~68 KB
    subprocess.run([sys.executable, "-I", "-c", process._WRITER, str(log), "4000", "2"], input=lines,
                   check=True, timeout=60)
    assert _files(log) == ["svc.log", "svc.log.1", "svc.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 4000
    assert log.read_bytes().endswith(b"line 01999 of the service's output\n")  # the newest output is kept


def _ends_with(path: Path, tail: bytes) -> bool:
    try:
        return path.read_bytes().endswith(tail)
    except FileNotFoundError:  # not created yet, or between a rename and the new file
        return False


def test_a_detached_process_writes_through_the_rotating_writer(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "demo-worker.log"
    script = "import sys\nfor i in range(3000): print('marker-rotation-test', i, 'x' * 40, flush=True)\n"
    record = process.spawn_detached([sys.executable, "-c", script], name="printer", marker="marker-rotation-test",
                                    port=0, log_file=log, cwd=tmp_path, log_max_bytes=20_000, log_backups=3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _ends_with(log, b"2999 " + b"x" * 40 + b"\n"):
        time.sleep(0.1)
    assert record.log_file == str(log)
    assert _files(log) == ["demo-worker.log", "demo-worker.log.1", "demo-worker.log.2", "demo-worker.log.3"]
    total = sum(p.stat().st_size for p in log.parent.iterdir())
    assert total <= 4 * 20_000  # ~190 KB printed, at most four files of 20 KB kept


def test_the_writer_splits_one_big_read_at_line_boundaries(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    lines = b"".join(b"%04d\n" % i for i in range(1000)) + b"y" * 250 + b"\n"  # one read, a line past max_bytes
    subprocess.run([sys.executable, "-I", "-c", process._WRITER, str(log), "100", "50"], input=lines,
                   check=True, timeout=60)
    files = [tmp_path / name for name in _files(log)]
    assert all(path.stat().st_size <= 100 for path in files)
    oldest_first = sorted(files, key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    kept = b"".join(path.read_bytes() for path in oldest_first)
    assert kept.endswith(b"y" * 250 + b"\n")
    assert all(path.read_bytes().endswith(b"\n") for path in files if b"y" not in path.read_bytes())
