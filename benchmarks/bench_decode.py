"""Decode + validate throughput of the candidates for the event decoder, beside the parse floor.

    python benchmarks/bench_decode.py [--events 200000] [--repeats 5] [--log DIR/events.jsonl]

Candidates, each checking the full contract of the events it meets (types, ranges, patterns,
unknown fields) and naming the failing field:
- ``msgspec``: ``schemas.decoder`` (what streamrec uses);
- ``pydantic``: pydantic v2 models with a discriminated union (``TypeAdapter.validate_json``);
- ``hand``: ``orjson.loads`` followed by table-driven checks in Python.
Floor: ``orjson.loads`` alone (parsing with no validation), measured in the same run.
Prints a table and one JSON line with the medians and ratios to the floor.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.decoder import EventError, event_decoder
from tools.datasets.world import generate_world

# --- pydantic v2 mirror of the contract -------------------------------------------------------

PId = Annotated[str, Field(min_length=1, max_length=128)]
PTs = Annotated[int, Field(ge=0, le=4_102_444_800_000)]
PSec = Annotated[float, Field(ge=0.0, le=604_800.0)]


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    event_id: PId
    ts: PTs
    schema_version: Literal[1]


class PContext(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    device: Literal["tv", "mobile", "tablet", "web", "console", "other"] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    local_hour: Annotated[int, Field(ge=0, le=23)] | None = None
    session_id: PId | None = None


class _PI(_P):
    user_id: PId
    item_id: PId
    context: PContext | None = None


class PPlay(_PI):
    type: Literal["play"]


class PProgress(_PI):
    type: Literal["progress"]
    watched_seconds: PSec
    duration_seconds: PSec | None = None


class PComplete(_PI):
    type: Literal["complete"]
    watched_seconds: PSec
    duration_seconds: PSec | None = None


class PRating(_PI):
    type: Literal["rating"]
    value: Annotated[float, Field(ge=0.5, le=5.0)]


class PClick(_PI):
    type: Literal["click"]
    request_id: PId | None = None
    position: Annotated[int, Field(ge=0)] | None = None


class PSkip(_PI):
    type: Literal["skip"]
    watched_seconds: PSec | None = None


class PAddToList(_PI):
    type: Literal["add_to_list"]


class PImpression(_P):
    type: Literal["impression"]
    user_id: PId
    item_ids: Annotated[list[PId], Field(min_length=1, max_length=1000)]
    request_id: PId
    context: PContext | None = None


class PUserUpsert(_P):
    type: Literal["user_upsert"]
    user_id: PId
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    maturity_limit: Literal["G", "PG", "PG-13", "R", "NC-17", "NR"] | None = None
    age: Annotated[int, Field(ge=0, le=130)] | None = None
    gender: str | None = None
    occupation: str | None = None
    zip_code: str | None = None


class PItemUpsert(_P):
    type: Literal["item_upsert"]
    item_id: PId
    title: Annotated[str, Field(min_length=1, max_length=500)]
    genres: list[str]
    tags: list[str] = []
    cast: list[str] = []
    release_ts: PTs
    year: Annotated[int, Field(ge=1800, le=2100)] | None = None
    maturity_rating: Literal["G", "PG", "PG-13", "R", "NC-17", "NR"] = "NR"
    is_original: bool = False
    available: bool = True
    duration_seconds: PSec | None = None


class PItemRemove(_P):
    type: Literal["item_remove"]
    item_id: PId


PEvent = Annotated[
    PPlay | PProgress | PComplete | PRating | PClick | PSkip | PAddToList | PImpression | PUserUpsert
    | PItemUpsert | PItemRemove,
    Field(discriminator="type"),
]

# --- hand-written checks over orjson ------------------------------------------------------------

_CC = re.compile(r"^[A-Z]{2}$")


def _id(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= 128


def _ts(v: Any) -> bool:
    return type(v) is int and 0 <= v <= 4_102_444_800_000


def _sec(v: Any) -> bool:
    return type(v) in (int, float) and 0 <= v <= 604_800


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _ctx(v: Any) -> bool:
    if v is None:
        return True
    if type(v) is not dict or not set(v) <= {"device", "country", "local_hour", "session_id"}:
        return False
    return (
        v.get("device") in (None, "tv", "mobile", "tablet", "web", "console", "other")
        and (v.get("country") is None or (type(v["country"]) is str and _CC.match(v["country"]) is not None))
        and (v.get("local_hour") is None or (type(v["local_hour"]) is int and 0 <= v["local_hour"] <= 23))
        and _opt(_id)(v.get("session_id"))
    )


_BASE = {"type": lambda v: True, "event_id": _id, "ts": _ts, "schema_version": lambda v: v == 1}
_INTER = {**_BASE, "user_id": _id, "item_id": _id, "context": _ctx}
_MAT = ("G", "PG", "PG-13", "R", "NC-17", "NR")
_RULES: dict[str, tuple[dict[str, Callable[[Any], bool]], set[str]]] = {
    "play": (_INTER, set()),
    "progress": ({**_INTER, "watched_seconds": _sec, "duration_seconds": _opt(_sec)}, {"watched_seconds"}),
    "complete": ({**_INTER, "watched_seconds": _sec, "duration_seconds": _opt(_sec)}, {"watched_seconds"}),
    "rating": ({**_INTER, "value": lambda v: type(v) in (int, float) and 0.5 <= v <= 5}, {"value"}),
    "click": ({**_INTER, "request_id": _opt(_id),
               "position": lambda v: v is None or (type(v) is int and v >= 0)}, set()),
    "skip": ({**_INTER, "watched_seconds": _opt(_sec)}, set()),
    "add_to_list": (_INTER, set()),
    "impression": ({**_BASE, "user_id": _id, "request_id": _id, "context": _ctx,
                    "item_ids": lambda v: type(v) is list and 0 < len(v) <= 1000 and all(map(_id, v))},
                   {"user_id", "request_id", "item_ids"}),
    "user_upsert": ({**_BASE, "user_id": _id, "country": _opt(lambda v: type(v) is str and bool(_CC.match(v))),
                     "maturity_limit": lambda v: v is None or v in _MAT,
                     "age": lambda v: v is None or (type(v) is int and 0 <= v <= 130),
                     "gender": _opt(lambda v: type(v) is str), "occupation": _opt(lambda v: type(v) is str),
                     "zip_code": _opt(lambda v: type(v) is str)}, {"user_id"}),
    "item_upsert": ({**_BASE, "item_id": _id, "title": lambda v: type(v) is str and 0 < len(v) <= 500,
                     "genres": lambda v: type(v) is list and all(type(g) is str for g in v),
                     "tags": lambda v: type(v) is list and all(type(g) is str for g in v),
                     "cast": lambda v: type(v) is list and all(type(g) is str for g in v),
                     "release_ts": _ts, "year": lambda v: v is None or (type(v) is int and 1800 <= v <= 2100),
                     "maturity_rating": lambda v: v in _MAT, "is_original": lambda v: type(v) is bool,
                     "available": lambda v: type(v) is bool, "duration_seconds": _opt(_sec)},
                    {"item_id", "title", "genres", "release_ts"}),
    "item_remove": ({**_BASE, "item_id": _id}, {"item_id"}),
}
_REQUIRED_BASE = {"type", "event_id", "ts", "schema_version"}
_REQUIRED_INTER = _REQUIRED_BASE | {"user_id", "item_id"}


def hand_decode(raw: bytes) -> dict[str, Any]:
    doc = orjson.loads(raw)
    if type(doc) is not dict:
        raise ValueError("$: expected object")
    rule = _RULES.get(doc.get("type"))  # type: ignore[arg-type]
    if rule is None:
        raise ValueError("$.type: unknown type")
    checks, extra_required = rule
    required = (_REQUIRED_INTER if "item_id" in checks and "user_id" in checks else _REQUIRED_BASE) | extra_required
    missing = required - doc.keys()
    if missing:
        raise ValueError(f"$.{min(missing)}: missing")
    for name, value in doc.items():
        check = checks.get(name)
        if check is None:
            raise ValueError(f"$.{name}: unknown field")
        if not check(value):
            raise ValueError(f"$.{name}: invalid")
    return doc


# --- harness -----------------------------------------------------------------------------------


def _sample_lines(n: int, log: Path | None) -> list[bytes]:
    if log is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-decode-"))
        generate_world(tmp, users=max(100, n // 100), items=2000, events=n, seed=7)
        log = tmp / "events.jsonl"
    with log.open("rb") as fh:
        lines = [line.rstrip(b"\n") for _, line in zip(range(n), fh, strict=False)]
    return lines


def _time(fn: Callable[[bytes], Any], lines: list[bytes], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for raw in lines:
            fn(raw)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--log", type=Path, default=None, help="an events.jsonl to read (default: a generated one)")
    args = parser.parse_args()

    lines = _sample_lines(args.events, args.log)
    adapter = TypeAdapter(PEvent)
    candidates: dict[str, Callable[[bytes], Any]] = {
        "floor: orjson.loads (no validation)": orjson.loads,
        "msgspec (schemas.decoder)": event_decoder.decode,
        "pydantic v2 TypeAdapter": adapter.validate_json,
        "orjson + hand checks": hand_decode,
    }
    # Every candidate must accept every line, or the comparison is unfair.
    for name, fn in candidates.items():
        for raw in lines[:2000]:
            try:
                fn(raw)
            except (EventError, ValueError) as exc:
                raise SystemExit(f"{name} refused a valid line: {exc}\n{raw!r}") from exc

    results = {}
    for name, fn in candidates.items():
        seconds = _time(fn, lines, args.repeats)
        results[name] = {"median_s": seconds, "us_per_event": seconds / len(lines) * 1e6,
                         "events_per_s": len(lines) / seconds}
    floor = results["floor: orjson.loads (no validation)"]["median_s"]
    print(f"{len(lines):,} events, median of {args.repeats} runs, {platform.python_implementation()} "
          f"{platform.python_version()}")
    print(f"{'candidate':40s} {'us/event':>9s} {'events/s':>12s} {'x floor':>8s}")
    for name, row in results.items():
        row["ratio_to_floor"] = row["median_s"] / floor
        print(f"{name:40s} {row['us_per_event']:9.2f} {row['events_per_s']:12,.0f} {row['ratio_to_floor']:8.2f}")
    print(json.dumps({"benchmark": "decode", "events": len(lines), "repeats": args.repeats, "results": results}))


if __name__ == "__main__":
    main()
