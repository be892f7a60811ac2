"""The ``captionkit`` command line: a typer app whose commands are thin calls into the layers below.

Each command lives in its own module and imports heavy libraries (torch, transformers) inside its body, so that
light commands such as ``captionkit score`` start fast. Exit codes: 0 ok, 1 usage or input error, 2 partial
results with errors recorded.
"""

from __future__ import annotations

import sys

import click
import typer

app = typer.Typer(
    name="captionkit",
    help="Caption images, train and evaluate captioners.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Commands are registered below, one line each, from their modules in captionkit.cli.


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``captionkit`` script; maps click's usage errors (exit 2) to our exit code 1."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="captionkit", standalone_mode=False)
    except click.exceptions.Abort:
        print("captionkit: aborted", file=sys.stderr)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(1)
    sys.exit(code or 0)
