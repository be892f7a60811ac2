"""The ``captionkit`` command line: a typer app whose commands are thin calls into the layers below.

Each command lives in its own module and imports heavy libraries (torch, transformers) inside its body, so that
light commands such as ``captionkit score`` start fast. Exit codes: 0 ok, 1 usage or input error, 2 partial
results with errors recorded.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from captionkit.cli import benchmark, caption, compare, demo, evaluate, export, merge, score, serve, train
from captionkit.cli.data import app as data_app
from captionkit.version import __version__

app = typer.Typer(
    name="captionkit",
    help="Caption images, train and evaluate captioners.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Commands are registered here, one line each, from their modules in captionkit.cli.


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print captionkit's version and exit.")] = False,
) -> None:
    if version:
        print(f"captionkit {__version__}")
        raise typer.Exit(0)


app.command("caption")(caption.caption)
app.command("train")(train.train)
app.command("demo")(demo.demo)
app.command("score")(score.score)
app.command("evaluate")(evaluate.evaluate)
app.command("compare")(compare.compare)
app.command("benchmark")(benchmark.benchmark)
app.add_typer(export.app, name="export")
app.command("merge")(merge.merge)
app.add_typer(data_app, name="data")
app.command("serve")(serve.serve)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``captionkit`` script; maps click's usage errors (exit 2) to our exit code 1."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="captionkit", standalone_mode=False)
    except typer.Abort:
        print("captionkit: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:  # usage errors: bad option, missing argument, bad value
        show = getattr(error, "show", None)
        show() if callable(show) else print(f"captionkit: error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
