"""`streamrec eval-stream`: prequential evaluation of real-time learning, online vs frozen (see
:mod:`tools.eval_stream` for the protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from foundation.progress import stderr_console
from foundation.settings import get_settings
from tools.eval_stream import ARMS, StreamEvalConfig
from tools.eval_stream import eval_stream as run


def eval_stream(
    data: Annotated[Path, typer.Option("--data", exists=True, file_okay=False,
                                       help="Folder with catalog.jsonl + events.jsonl (generate / import).")],
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Bundle root: the bundle trained on the prefix.")],
    out: Annotated[Path, typer.Option("--out", help="Report (JSON); the curves go beside it as .png.")],
    train_share: Annotated[float, typer.Option(min=0.05, max=0.95, help="Share of interactions to train on.")] = 0.75,
    samples: Annotated[int, typer.Option(min=1, help="Probes (targets asked of both arms).")] = 1500,
    window: Annotated[int, typer.Option(min=10, help="Records produced between two rounds of probes.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the probe sample.")] = 0,
    online_db: Annotated[int, typer.Option(min=0, help="Redis database of the online arm (flushed).")] = 1,
    frozen_db: Annotated[int, typer.Option(min=0, help="Redis database of the frozen arm (flushed).")] = 2,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train even if ARTIFACTS holds a bundle of the "
                                                             "same prefix.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="A smoke run: 300 probes in windows of 1,000 records, "
                                                         "a lighter ranker (500 requests, 4 epochs).")] = False,
) -> None:
    """Train on the first part of the log, replay the rest through Kafka and the workers, and score
    what the online and the frozen system recommend just before each sampled engagement."""
    if online_db == frozen_db:
        raise typer.BadParameter("the two arms need different Redis databases", param_hint="--frozen-db")
    if quick:
        samples, window = min(samples, 300), max(window, 1000)
    config = StreamEvalConfig(train_share=train_share, samples=samples, window=window, seed=seed,
                              online_db=online_db, frozen_db=frozen_db, reuse_bundle=not retrain,
                              **({"rank_users": 500, "ranker_epochs": 4} if quick else {}))
    with stderr_console.status("eval-stream", spinner="dots") as status:
        def say(message: str) -> None:
            status.update(f"eval-stream: {message}")
            stderr_console.print(f"[dim]eval-stream:[/] {message}")

        def advance(done: int, total: int) -> None:
            status.update(f"eval-stream: window {done}/{total}")

        report = run(data, artifacts, out, get_settings(), config, progress=say, advance=advance)
    table = Table(title=f"online vs frozen ({data})")
    for column in ("arm", "hr@10", "hr@20", "ndcg@10", "n", "degraded"):
        table.add_column(column, justify="right" if column != "arm" else "left")
    for arm in ARMS:
        m = report["arms"][arm]
        table.add_row(arm, f"{m['hr@10']:.4f}", f"{m['hr@20']:.4f}", f"{m['ndcg@10']:.4f}", str(m["n"]),
                      str(report["degraded"][arm]))
    console = Console(highlight=False)
    console.print(table)
    gain = report["relative"]["hr@20"]
    console.print(f"online vs frozen, hr@20: {'n/a' if gain is None else f'{gain:+.1%}'}; report {out}"
                  + (f", curves {report['plot']}" if "plot" in report else ""))


def register(app: typer.Typer) -> None:
    app.command("eval-stream")(eval_stream)
