"""`streamrec experiments report NAME [--json] [--plots DIR]`: an experiment's report from the online counts.

Per variant: users exposed, exposures, plays per exposed user, completion rate, click-through by position, hit rate,
coverage, and the guardrails (latency p99, degraded answers); against the control: differences with 95% confidence
intervals (the delta method for ratios), CUPED, an always-valid (mSPRT) p-value, and the sample-ratio-mismatch check;
for an interleaving experiment the preference with its interval. The statistics: :mod:`models.experiments.stats`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from foundation.settings import get_settings
from models.experiments.report import build_report, render_text, write_plots
from tools.experiment_data import UnknownExperiment, load_experiment

app = typer.Typer(name="experiments", help="Report an experiment: per-variant metrics with confidence intervals, "
                  "SRM, mSPRT, CUPED, guardrails.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    """Add the ``experiments`` group to the console script (``streamrec.cli`` calls this)."""
    parent.add_typer(app, name="experiments")


@app.command("report")
def report(
    name: Annotated[str, typer.Argument(help="The experiment's name (as in the experiments document).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write PNG plots of the report into DIR.")] = None,
) -> None:
    """Report an experiment from the worker's exactly-once counts (Redis) and the experiments document."""
    settings = get_settings()
    err = Console(stderr=True, highlight=False)
    try:
        data = asyncio.run(load_experiment(settings, name))
    except UnknownExperiment as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    except OSError as exc:  # Redis not reachable
        err.print(f"[bold red]error:[/] cannot read the experiment's counts: {exc}")
        raise typer.Exit(code=1) from None
    result = build_report(data)
    if plots is not None:
        written = write_plots(result, data, plots)
        err.print(f"wrote {len(written)} plots into {plots}")
    if as_json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(render_text(result))
