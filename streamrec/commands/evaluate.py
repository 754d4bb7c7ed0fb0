"""`streamrec eval`: offline evaluation of the baselines and the trained systems on a held-out split."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from foundation.progress import stderr_console
from foundation.settings import get_settings
from models.dataset import EventLog, load_log
from models.eval.metrics import MAX_K
from models.eval.model_systems import mf_system, two_stage_system
from models.eval.plots import write_plots
from models.eval.protocol import EvalContext, SystemFactory, recommend_lists, run_evaluation
from models.eval.report import EvalReport, report_table
from models.eval.systems import BASELINES
from models.split import SPLITS, Split, make_split
from models.train import config_from_bundle

if TYPE_CHECKING:
    from tools.eval_served import RecordingRecommender


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
    served: Annotated[bool, typer.Option(
        "--served", help="Also score two_stage through the HTTP API (row two_stage@http): its fit published as a "
        "bundle, the training log replayed through Kafka and a worker, `streamrec serve` asked for every test "
        "user. Needs the stack (streamrec stack up).")] = False,
    served_db: Annotated[int, typer.Option("--served-db", min=0, help="Redis database of the served run (flushed).")
                         ] = 5,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight with --served.")
                           ] = 8,
) -> None:
    """Offline evaluation: hold out each user's latest events, rank the whole catalogue, report metrics.

    With --served, the same two-stage fit is also measured through the HTTP API, beside its offline row."""
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
    the_split = make_split(log, split)
    factories = {name: available[name] for name in names}
    fitted: list[RecordingRecommender] = []
    if served and "two_stage" in factories:
        # The offline two_stage row's fit and lists are kept: the served row uses that very model.
        factories["two_stage"] = _recorded(factories["two_stage"], fitted)
    report = run_evaluation(log, factories, split=the_split, seed=seed, progress=say)
    if served:
        _add_served(report, data, the_split, available["two_stage"], fitted, out, seed, served_db, concurrency, say)
    report.write(out)
    console = Console()
    if not console.is_terminal:  # piped: rich would assume 80 columns and squeeze the table
        console = Console(width=160)
    console.print(report_table(report))
    typer.echo(f"test users: {report.test_users}, positives: {report.positives}; report: {out}")
    if plots is not None:
        for path in write_plots(report, plots):
            typer.echo(f"plot: {path}")


def _recorded(factory: SystemFactory, fitted: list[RecordingRecommender]) -> SystemFactory:
    # Lazy: the served mode's imports (Kafka, the worker's and the server's helpers) only when asked for.
    from tools.eval_served import RecordingRecommender

    def build(train: EventLog, ctx: EvalContext) -> Any:
        system = RecordingRecommender(factory(train, ctx))
        fitted.append(system)
        return system

    return build


def _add_served(report: EvalReport, data: Path, split: Split, factory: SystemFactory,
                fitted: list[RecordingRecommender], out: Path, seed: int, db: int, concurrency: int,
                say: Callable[[str], None]) -> None:
    """The ``two_stage@http`` row and curves (tools.eval_served), on the offline run's fit when there was one."""
    from tools.eval_served import SERVED_NAME, RecordingRecommender, ServedConfig, eval_served

    if fitted:
        system, lists = fitted[-1].inner, fitted[-1].lists
    else:  # --served without the offline two_stage row: fit it here, and its lists for the agreement
        say("two_stage: fitting (for --served)")
        system = factory(split.train, EvalContext(split=split, seed=seed, progress=say))
        recording = RecordingRecommender(system)
        recommend_lists(recording, split, max(MAX_K, *report.ks))
        lists = recording.lists
    row, curves = eval_served(data, split, system, lists, get_settings(), out.parent / f"{out.stem}-served",
                              tuple(report.ks), ServedConfig(db=db, concurrency=concurrency), progress=say)
    report.systems[SERVED_NAME] = row
    report.curves[SERVED_NAME] = curves
    agreement = row["agreement"]
    say(f"{SERVED_NAME}: {row['requests']} requests, {row['failed']} failed, {row['degraded']} degraded; "
        f"same top 10 as offline for {agreement['exact@10']:.1%} of users, overlap@10 {agreement['overlap@10']:.3f}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
