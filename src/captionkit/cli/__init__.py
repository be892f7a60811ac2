"""The ``captionkit`` command line: a typer app (:mod:`captionkit.cli.app`) whose commands are thin calls into the
layers below.

Each command lives in its own module and imports heavy libraries (torch, transformers) inside its body, so that
light commands start fast; ``captionkit score`` with well-formed options does not even import typer (see
:mod:`captionkit.cli.scoring`). Exit codes: 0 ok, 1 usage or input error, 2 partial results with errors recorded.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``captionkit`` script: runs the command and exits with its code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["score"]:
        from captionkit.cli.scoring import parse_score_options, run_score

        options = parse_score_options(args[1:])
        if options is not None:
            sys.exit(run_score(**options))
    from captionkit.cli.app import run_app

    sys.exit(run_app(args))
