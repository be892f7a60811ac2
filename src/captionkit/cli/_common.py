"""Helpers shared by the CLI commands: one-line errors and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

EXIT_OK = 0
EXIT_INPUT_ERROR = 1
EXIT_PARTIAL = 2
# --dtype's help, the same in every command that loads a captioner.
DTYPE_HELP = "Weights' precision: fp32, bf16 or fp16 (GPU only); cast on load."


def plural(count: int, noun: str) -> str:
    """``plural(1, "image")`` -> "1 image", ``plural(2, "image")`` -> "2 images"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fail(message: str) -> NoReturn:
    """Print ``captionkit: error: MESSAGE`` on stderr and exit 1."""
    print(f"captionkit: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_INPUT_ERROR)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def quiet_libraries() -> None:
    """Silence transformers' own progress bars and info logs: our commands print their own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
