"""The ``streamrec`` console script: one Typer app, one module per command group, loaded when it runs.

Each command module imports the tools it drives at its top, and those pull in numpy, scipy, aiokafka,
ONNX Runtime... Importing every module for every run (``streamrec --help`` included) would double the
start-up time, so the root group lists the commands from :data:`COMMANDS` and imports only the module
of the command being run. ``tests/unit/test_cli_commands.py`` checks that the table and the modules agree.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

from foundation.logs import configure_logging
from foundation.settings import get_settings


class CommandEntry(NamedTuple):
    module: str  # its ``register(app)`` adds the command (with others of its group) to a Typer app
    help: str  # what ``streamrec --help`` shows: the first paragraph of the command's own help


COMMANDS: dict[str, CommandEntry] = {
    "stack": CommandEntry("streamrec.commands.stack", "Run a local Kafka (KRaft) broker and redis-server."),
    "generate": CommandEntry(
        "streamrec.commands.data", "Generate a synthetic world with drifting tastes, sessions and new releases."),
    "import": CommandEntry("streamrec.commands.data", "Import public data sets into the event-log format."),
    "replay": CommandEntry(
        "streamrec.commands.data",
        "Publish a recorded event log into Kafka, keyed and in per-user order, with an idempotent producer."),
    "demo": CommandEntry(
        "streamrec.commands.demo",
        "Start Kafka + Redis, make an event log, train, start a worker and the API, replay the log, and\n"
        "show a few users' recommendations before and after new interactions."),
    "train": CommandEntry(
        "streamrec.commands.train",
        "Train CF + content vectors, the HNSW indexes and the Wide & Deep ranker; publish the bundle."),
    "retrain": CommandEntry(
        "streamrec.commands.retrain",
        "Train a candidate bundle from the topics, compare it with `latest` on a recent window, publish if not worse."),
    "eval": CommandEntry(
        "streamrec.commands.evaluate",
        "Offline evaluation: hold out each user's latest events, rank the whole catalogue, report metrics."),
    "eval-stream": CommandEntry(
        "streamrec.commands.eval_stream",
        "Train on the first part of the log, replay the rest through Kafka and the workers, and score\n"
        "what the online and the frozen system recommend just before each sampled engagement."),
    "worker": CommandEntry(
        "streamrec.commands.worker",
        "Consume the interactions and catalog topics and keep the online state in Redis, exactly once."),
    "inspect": CommandEntry(
        "streamrec.commands.inspect",
        "Inspect online state: a user's features and session, trending titles, dead letters."),
    "serve": CommandEntry(
        "streamrec.commands.serve",
        "Serve /v1/recommendations, /v1/items/{id}/similar, /v1/events, /healthz, /readyz, /metrics, /openapi.json."),
    "bench": CommandEntry(
        "streamrec.commands.bench",
        "Benchmarks against the local stack (each figure beside a floor of the same run)."),
    "keys": CommandEntry(
        "streamrec.commands.keys",
        "Create, list and revoke the API keys (with scopes) that POST /v1/events and, optionally, reads need."),
    "simulate": CommandEntry(
        "streamrec.commands.simulate",
        "Drive simulated users of a generated world through the HTTP API: fetch, play, complete or skip."),
    "experiments": CommandEntry(
        "streamrec.commands.experiments",
        "Report an experiment: per-variant metrics with confidence intervals, SRM, mSPRT, CUPED, guardrails."),
}


def load_command(name: str) -> Any:
    """The real command ``name``, built from its module's ``register(app)``; ``KeyError`` if none."""
    group = typer.Typer()
    importlib.import_module(COMMANDS[name].module).register(group)
    return typer.main.get_group(group).commands[name]


class _CommandsOnDemand(TyperGroup):
    """Lists every command of :data:`COMMANDS` with its help; imports a command's module only to run it."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, entry in COMMANDS.items():
            self.commands.setdefault(name, TyperCommand(name, help=entry.help))

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, _listed, rest = super().resolve_command(ctx, args)
        return name, load_command(name) if name in COMMANDS else _listed, rest


app = typer.Typer(
    name="streamrec",
    cls=_CommandsOnDemand,
    help="streamrec: a streaming-first, real-time recommender (Kafka, Faust, River, HNSW, ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
