"""`streamrec eval`: offline evaluation of the baselines and the trained systems on a held-out split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from foundation.progress import stderr_console
from foundation.settings import get_settings
from models.dataset import load_log
from models.eval.model_systems import mf_system, two_stage_system
from models.eval.plots import write_plots
from models.eval.protocol import SystemFactory, run_evaluation
from models.eval.report import report_table
from models.eval.systems import BASELINES
from models.split import SPLITS
from models.train import config_from_bundle


def system_factories(artifacts: Path | None) -> dict[str, SystemFactory]:
    """Every system `eval --systems` can name: name -> factory(train log, EvalContext) -> recommender.

    The baselines need nothing but the training log. The model-backed systems (matrix factorisation,
    the two-stage recommender) take the parameters of the bundle under ``artifacts``. A factory is
    called with the split's training part and fits on it, so held-out events never leak into what
    is evaluated.
    """
    factories: dict[str, SystemFactory] = dict(BASELINES)
    # Model-backed systems are refitted on the split's training part with the bundle's parameters.
    config = config_from_bundle(artifacts)
    factories["mf"] = mf_system(config)
    factories["two_stage"] = two_stage_system(config)
    return factories


def evaluate(
    data: Annotated[Path, typer.Option("--data", exists=True, file_okay=False,
                                       help="Event-log folder (catalog.jsonl + events.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Where the JSON report goes.")] = Path("report.json"),
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="Model bundle root, for systems that need trained models (default: settings).")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Folder for PNG plots (metric vs K, candidate recall).")
                     ] = None,
    split: Annotated[str, typer.Option("--split", help="user-last (default) or global-time.")] = "user-last",
    systems: Annotated[str, typer.Option("--systems", help="Comma-separated system names.")
                       ] = "popularity,itemknn,ease,mf,two_stage",
    seed: Annotated[int, typer.Option(help="Seed handed to systems that draw random numbers.")] = 0,
) -> None:
    """Offline evaluation: hold out each user's latest events, rank the whole catalogue, report metrics."""
    if split not in SPLITS:
        raise typer.BadParameter(f"choose one of {', '.join(SPLITS)}", param_hint="--split")
    if artifacts is None:
        artifacts = get_settings().artifacts
    available = system_factories(artifacts)
    names = [name.strip() for name in systems.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise typer.BadParameter(f"unknown system(s) {', '.join(unknown) or '(none given)'}; "
                                 f"available: {', '.join(available)}", param_hint="--systems")
    started = time.perf_counter()

    def say(message: str) -> None:
        stderr_console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {message}", highlight=False)

    log = load_log(data)
    say(f"loaded {log.n_events} events, {log.n_users} users, {log.catalog.n_items} items")
    report = run_evaluation(log, {name: available[name] for name in names}, split=split, seed=seed, progress=say)
    report.write(out)
    console = Console()
    if not console.is_terminal:  # piped: rich would assume 80 columns and squeeze the table
        console = Console(width=160)
    console.print(report_table(report))
    typer.echo(f"test users: {report.test_users}, positives: {report.positives}; report: {out}")
    if plots is not None:
        for path in write_plots(report, plots):
            typer.echo(f"plot: {path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
