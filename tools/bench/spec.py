"""What a benchmark of `streamrec bench all` is (:class:`BenchSpec`, run in a :class:`BenchContext`) and what
a run of it gave (:class:`Summary`, :class:`BenchResult`): the types the runner and the plots share.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class BenchContext:
    """Where a run writes and what the set-up made (paths are absolute)."""

    out: Path
    work: Path  # the world, the bundles, eval-stream's work folder
    quick: bool
    python: str = sys.executable

    @property
    def world(self) -> Path:
        return self.work / "world"

    @property
    def artifacts(self) -> Path:
        return self.work / "artifacts"

    def raw(self, name: str) -> Path:
        return self.out / "raw" / f"{name}.json"

    def script(self, name: str, *args: object) -> list[str]:
        return [self.python, str(REPO / "benchmarks" / name), *map(str, args)]

    def cli(self, *args: object) -> list[str]:
        return [self.python, "-m", "streamrec.cli", *map(str, args)]


@dataclass(frozen=True, slots=True)
class Summary:
    figures: dict[str, Any]
    floor: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None


@dataclass(frozen=True, slots=True)
class BenchSpec:
    name: str
    argv: Callable[[BenchContext], list[str]]
    summarize: Callable[[dict[str, Any]], Summary]
    # A report file the command writes; None: the last JSON line of its stdout is the raw output.
    report: Callable[[BenchContext], Path] | None = None
    # Per benchmark; a quick run's benchmarks must together stay under 5 minutes on a 2-core machine.
    timeout_s: Callable[[bool], float] = lambda quick: 180.0 if quick else 1800.0
    needs_setup: bool = True  # runs on the world / bundle made by the set-up


@dataclass(slots=True)
class BenchResult:
    name: str
    command: str
    seconds: float
    ok: bool
    error: str | None = None
    cpu_seconds: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    raw: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"figures": self.figures, "floor": self.floor, "ratio": self.ratio, "command": self.command,
                "seconds": round(self.seconds, 2), "cpu_seconds": self.cpu_seconds, "ok": self.ok, "error": self.error}
