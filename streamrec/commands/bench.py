"""`streamrec bench freshness | all`: the end-to-end freshness benchmark and the runner of every benchmark."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from foundation.progress import stderr_console
from tools.bench.runner import load_benchmark
from tools.bench.runner import run_all as run

bench_app = typer.Typer(help="Benchmarks against the local stack (each figure beside a floor of the same run).",
                        no_args_is_help=True)


@bench_app.command("freshness")
def freshness(
    quick: Annotated[bool, typer.Option("--quick", help="15 probes at 200 events/s on a smaller world.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result (JSON) to this file.")] = None,
    probes: Annotated[int | None, typer.Option("--probes", min=1, help="Probes (default 50, --quick 15).")] = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", min=1.0, help="Background events/s (default 300, --quick 200).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", exists=True, file_okay=False, help="A world folder (default: generate a small one).")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="A bundle root (default: train a small one on the world).")] = None,
) -> None:
    """Produce an interaction, time until GET /v1/recommendations reflects it (p50/p99), beside the floor."""
    try:
        bench = load_benchmark("bench_freshness")
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    argv = [*(["--quick"] if quick else []), *(["--probes", str(probes)] if probes else []),
            *(["--rate", str(rate)] if rate else []), *(["--log", str(data)] if data else []),
            *(["--artifacts", str(artifacts)] if artifacts else [])]
    try:
        result = bench.main(argv)
    except Exception as exc:
        typer.echo(f"freshness benchmark failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"result: {out}", file=sys.stderr)


@bench_app.command("all")
def run_all(
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json, results.md, plots/, raw/, logs/.")],
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes: the whole run in under 5 minutes.")] = False,
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated benchmark names (decode, replay, worker, serving, freshness, eval, "
                       "eval-stream); default: all.")] = None,
    work: Annotated[Path | None, typer.Option(
        "--work", help="Keep the world and bundles here (default: a temporary folder, deleted after).")] = None,
) -> None:
    """Run every benchmark in sequence against the local stack; one results.json, results.md and PNG plots."""
    started = time.perf_counter()

    def say(message: str) -> None:
        stderr_console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {message}", highlight=False)

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    try:
        doc = run(out, quick, only=names, work=work, say=say)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from exc
    failed = [name for name, bench in doc["benchmarks"].items() if not bench["ok"]]
    failed += [f"set-up {name}" for name, step in doc["setup"].items() if not step["ok"]]
    typer.echo((out / "results.md").read_text())
    typer.echo(f"results: {out / 'results.json'} ({doc['seconds']:.0f} s)")
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
