"""Helpers shared by the CLI commands: one-line errors and exit codes."""

from __future__ import annotations

import functools
import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from captionkit.errors import CaptionkitError, InputError, first_line
from captionkit.files import also_an_input, cannot_write, one_line, same_file, written_path

if TYPE_CHECKING:
    from captionkit.decoding.options import DecodingRequest

_Options = ParamSpec("_Options")
_Result = TypeVar("_Result")

EXIT_OK = 0
EXIT_INPUT_ERROR = 1
EXIT_PARTIAL = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
# --dtype's help, the same in every command that loads a captioner.
DTYPE_HELP = "Weights' precision: fp32, bf16 or fp16 (GPU only); cast on load."


def cli_flag(name: str) -> str:
    """A decoding option's flag: ``max_length`` -> ``--max-length``."""
    return "--" + name.replace("_", "-")


def decoding_help(field: str) -> str:
    """A decoding option's help, from the one options table (captionkit.decoding.options), default included."""
    from captionkit.decoding.options import BY_FIELD  # light: no torch

    option = BY_FIELD[field]
    return f"{option.help} Default: {option.default}."


def decoding_flags(**flags: Any) -> DecodingRequest:
    """Decoding flags as given (None: not given) -> a checked request, defaults and errors from the options table,
    errors naming the flag (``--beams: must be in [1, 64], got 0``)."""
    from captionkit.decoding.options import decoding_request

    return decoding_request(naming=cli_flag, **flags)


# Errors from the layers below that name an API keyword, and the flag that names it on the command line.
_FLAGS = {"device": "--device", "dtype": "--dtype", "metrics": "--metrics"}


def error_line(error: CaptionkitError) -> str:
    """``str(error)``, naming a keyword by its flag (``--dtype: fp16 needs a GPU...``, ``--metrics: unknown metric
    ...`` in every command)."""
    if isinstance(error, InputError) and error.source in _FLAGS:
        return f"{_FLAGS[error.source]}: {error.reason}"
    return str(error)


def fail(message: str) -> NoReturn:
    """Print ``captionkit: error: MESSAGE`` on stderr, in one line, and exit 1."""
    print(f"captionkit: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_INPUT_ERROR)


def _os_error_file(error: OSError, target: str | os.PathLike[str]) -> Path:
    """The file an OSError is about: the one it names (a staging file as the file it was for), else ``target``."""
    return written_path(os.fsdecode(error.filename) if error.filename is not None else target)


def os_error_line(error: OSError, target: str | os.PathLike[str]) -> str:
    """``FILE: REASON`` for an OSError from work on ``target`` (a run directory: FILE may be one inside it)."""
    return f"{_os_error_file(error, target)}: {error.strerror or first_line(error)}"


def fail_writing(target: str | os.PathLike[str], error: OSError, flag: str | None = None) -> NoReturn:
    """Exit 1 for a write the up-front path checks could not foresee (a full disk, a directory removed midway):
    ``[FLAG: ]FILE: cannot write (REASON)``."""
    prefix = f"{flag}: " if flag else ""
    fail(f"{prefix}{_os_error_file(error, target)}: {cannot_write(error)}")


def check_not_overwriting(
    outputs: Iterable[tuple[str, Path | None]], inputs: Iterable[str | os.PathLike[str] | None]
) -> None:
    """Refuse, before any work, an output file that is also an input or another output: ``outputs`` are (flag, file
    it writes; None: not asked for) pairs, ``inputs`` the files the command reads (None: not given). Writing it
    would replace the input (or the output written before it) without a word. Raises an :class:`InputError` naming
    the flag."""
    given = [(flag, path) for flag, path in outputs if path is not None]
    for position, (flag, path) in enumerate(given):
        for earlier_flag, earlier in given[:position]:
            if path.resolve() == earlier.resolve():
                raise InputError(flag, f"{path} is also written by {earlier_flag}; write each to its own file")
    by_name: dict[str, list[tuple[str, Path]]] = {}
    for flag, path in given:
        by_name.setdefault(path.name, []).append((flag, path))
    for source in (Path(item) for item in inputs if item is not None):
        # The names first: one string comparison per input, a system call only for a namesake.
        for flag, path in by_name.get(source.name, ()):
            # A path through a folder yet to be made (sub/../cands.json) names no file samefile can stat, but once
            # the command makes the folder, it writes over the input: compare where it leads.
            unmade = not os.path.lexists(path) and source.resolve() == path.resolve()
            if unmade or same_file(source, path):
                raise InputError(flag, also_an_input(path, source))


def without_cyclic_gc(command: Callable[_Options, _Result]) -> Callable[_Options, _Result]:
    """``command`` with Python's cyclic garbage collector paused while it runs.

    For commands that build a few hundred thousand lists, dicts and strings without cycles (``score`` reading and
    scoring COCO val2017): the collector would walk them again and again for nothing, about 7% of the run.
    Reference counting still frees everything; the collector is back when the command returns (tests run
    commands in one long process).
    """

    @functools.wraps(command)
    def paused(*args: _Options.args, **kwargs: _Options.kwargs) -> _Result:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return paused


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
