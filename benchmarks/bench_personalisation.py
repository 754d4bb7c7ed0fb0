"""Personalisation that shows (issue 14): how alike are the systems' top 10s across users?

    python benchmarks/bench_personalisation.py --data DIR [--systems popularity,ease,two_stage]
        [--artifacts ROOT] [--split user-last] [--out report.json] [--report report.json]

Runs the offline evaluation of ``streamrec eval`` (the same protocol, systems and metrics: nothing is
recomputed here) on ``--data`` and prints one row per system: NDCG@10, coverage@10 (distinct titles in
any test user's top 10 / catalogue), top share (users whose top 10 holds the most common title) and the
average popularity rank of the recommended titles (1 = most training users, mean over every top-10
slot); then the same table in Markdown (the README's), whether two_stage is at least as diverse as EASE
while ahead on NDCG@10, and one JSON line. ``--report`` reads a report ``streamrec eval`` (or this script's
``--out``) wrote instead of running the evaluation again.

Without ``--artifacts`` the two-stage system is fitted with the default parameters (``TwoStageConfig()``),
not with those of whatever bundle the settings point at, so the figure does not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from models.dataset import load_log
from models.eval.protocol import run_evaluation
from models.eval.report import (
    EvalReport,
    personalisation_check,
    personalisation_markdown,
    personalisation_rows,
    personalisation_table,
)
from models.split import SPLITS
from streamrec.commands.evaluate import system_factories

DEFAULT_SYSTEMS = "popularity,ease,two_stage"


def evaluate(data: Path, systems: list[str], artifacts: Path | None, split: str, seed: int) -> EvalReport:
    factories = system_factories(artifacts)
    unknown = [name for name in systems if name not in factories]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; available: {', '.join(factories)}")
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    log = load_log(data)
    say(f"loaded {log.n_events} events, {log.n_users} users, {log.catalog.n_items} items")
    return run_evaluation(log, {name: factories[name] for name in systems}, split=split, seed=seed, progress=say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="Event-log folder (catalog.jsonl + events.jsonl).")
    source.add_argument("--report", type=Path, help="A report.json of `streamrec eval` to tabulate instead.")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS, help="Comma-separated system names.")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="Bundle root whose parameters two_stage is fitted with (default: the defaults).")
    parser.add_argument("--split", default="user-last", choices=SPLITS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the full evaluation report here.")
    args = parser.parse_args(argv)

    if args.report is not None:
        report = EvalReport.read(args.report)
    else:
        systems = [name.strip() for name in args.systems.split(",") if name.strip()]
        # A missing folder makes open_bundle fail, so config_from_bundle falls back to TwoStageConfig().
        artifacts = args.artifacts or Path("/nonexistent-streamrec-artifacts")
        report = evaluate(args.data, systems, artifacts, args.split, args.seed)
    if args.out is not None:
        report.write(args.out)

    console = Console(width=160)
    console.print(personalisation_table(report))
    print()
    print(personalisation_markdown(report))
    print()
    check = personalisation_check(report)
    if check["holds"] is not None:
        verdict = "holds" if check["holds"] else "does NOT hold"
        failed = [key for key, ok in check.items() if key != "holds" and not ok]
        print(f"two_stage at least as diverse as ease while ahead on NDCG@10: {verdict}"
              + (f" ({', '.join(failed)} fails)" if failed else ""))
    print(json.dumps({"data": str(args.data or args.report), "split": report.split, "test_users": report.test_users,
                      "n_items": report.n_items, "rows": personalisation_rows(report), "check": check}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
