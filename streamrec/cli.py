"""The ``streamrec`` console script: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from foundation.logs import configure_logging
from foundation.settings import get_settings
from streamrec.commands import bench, data, demo, eval_stream, evaluate, inspect, serve, stack, train, worker

app = typer.Typer(
    name="streamrec",
    help="streamrec: a streaming-first, real-time recommender (Kafka, Faust, River, HNSW, ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


for module in (stack, data, demo, train, evaluate, eval_stream, worker, inspect, serve, bench):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
