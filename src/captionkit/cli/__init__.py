"""The ``captionkit`` command line: a typer app (:mod:`captionkit.cli.app`) whose commands are thin calls into the
layers below.

Each command lives in its own module and imports heavy libraries (torch, transformers) inside its body, so that
light commands start fast; ``captionkit score`` with well-formed options does not even import typer (see
:mod:`captionkit.cli.scoring`). Exit codes: 0 ok, 1 usage or input error, 2 partial results with errors recorded.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``captionkit`` script: runs the command and exits with its code."""
    try:
        _run(argv)
    except BrokenPipeError:
        # The reader of stdout left (`captionkit score ... | head -c 10`): nothing more can reach it. Exit 1 without a
        # traceback, as the typer commands do (click), with stdout on /dev/null so that the interpreter's last flush
        # does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _run(argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["score"]:
        from captionkit.cli.scoring import parse_score_options, run_score

        options = parse_score_options(args[1:])
        if options is not None:
            code = run_score(**options)
            if argv is None:
                _exit_now(code)
            sys.exit(code)
    from captionkit.cli.app import run_app

    sys.exit(run_app(args))


def _exit_now(code: int) -> None:
    """End a ``captionkit score`` process as soon as its output is out, without freeing every object the
    interpreter holds one by one (a twentieth of the command's time on COCO val2017), as mypy ends its runs. Only
    where the command is the whole process: it has written and closed its files, and it starts no threads."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
