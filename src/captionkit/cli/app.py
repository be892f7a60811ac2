"""The typer app of ``captionkit``: every command, or only the one being run."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer

from captionkit.version import __version__

# Commands in the order `captionkit --help` lists them: name -> (module in captionkit.cli, its attribute, whether
# that is a typer app of subcommands). Modules are imported when their command is built: `captionkit train` builds
# and imports only itself (building every command's parser took tens of milliseconds of each command's start-up).
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "caption": ("caption", "caption", False),
    "train": ("train", "train", False),
    "demo": ("demo", "demo", False),
    "score": ("score", "score", False),
    "evaluate": ("evaluate", "evaluate", False),
    "compare": ("compare", "compare", False),
    "benchmark": ("benchmark", "benchmark", False),
    "export": ("export", "app", True),
    "merge": ("merge", "merge", False),
    "data": ("data", "app", True),
    "serve": ("serve", "serve", False),
}


def _root(
    version: Annotated[bool, typer.Option("--version", help="Print captionkit's version and exit.")] = False,
) -> None:
    if version:
        print(f"captionkit {__version__}")
        raise typer.Exit(0)


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app with every command, or with only the command named ``only``."""
    app = typer.Typer(
        name="captionkit",
        help="Caption images, train and evaluate captioners.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback(invoke_without_command=True)(_root)
    for name, (module, attribute, is_group) in COMMANDS.items():
        if only in (None, name):
            target = getattr(importlib.import_module(f"captionkit.cli.{module}"), attribute)
            if is_group:
                app.add_typer(target, name=name)
            else:
                app.command(name)(target)
    return app


def run_app(args: list[str]) -> int:
    """Run the command line ``args`` through typer; the exit code, with click's usage errors (its exit 2) as 1."""
    command = typer.main.get_command(build_app(args[0] if args and args[0] in COMMANDS else None))
    try:
        code = command.main(args=args, prog_name="captionkit", standalone_mode=False)
    except typer.Abort:
        print("captionkit: aborted", file=sys.stderr)
        return 1
    except typer.Exit as done:
        return done.exit_code
    except typer.TyperException as error:  # usage errors: bad option, missing argument, bad value
        # `captionkit` or a group alone: the help is the answer (click's NoArgsIsHelpError, by name: typer vendors
        # click). Typer's rich help has printed itself already and left the message empty; plain help is in it.
        if type(error).__name__ == "NoArgsIsHelpError":
            message = str(getattr(error, "message", ""))
            if message.strip():
                print(message, file=sys.stderr)
            return 1
        print(f"captionkit: error: {usage_error_line(error, args)}", file=sys.stderr)
        return 1
    return code or 0


# What typer says of a value that is not of the option's type, and the words captionkit's own checks use for it.
EXPECTED = {
    "Input should be a valid integer": "an integer",
    "Input should be a valid number": "a number",
    "Input should be a valid boolean": "true or false",
}


def usage_error_line(error: Exception, args: list[str]) -> str:
    """A usage error in one line, as every other error: click's message (which names the option or argument) and
    where the help is, instead of click's usage block and blank line."""
    format_message = getattr(error, "format_message", None)
    message = _value_error(error, args) or " ".join(
        (format_message() if callable(format_message) else str(error)).split()
    )
    message += _dash_file_hint(error, args)
    context = getattr(error, "ctx", None)
    if context is not None:
        command = context.command_path
    else:  # an option without its value fails before click makes the command's context
        command = "captionkit" + (f" {args[0]}" if args and args[0] in COMMANDS else "")
    return f"{message.rstrip('.')} (see '{command} --help')"


def _dash_file_hint(error: Exception, args: list[str]) -> str:
    """For an unknown option that is a file's name (``-dash.jpg``, which click reads as the options -d -a ...): how
    to give it; "No such option: -d" alone left the user guessing."""
    if type(error).__name__ != "NoSuchOption":  # click's, by name: typer vendors click
        return ""
    named = next((arg for arg in args if arg.startswith("-") and len(arg) > 1 and os.path.lexists(arg)), None)
    return "" if named is None else f"; {named!r} is a file: write ./{named}"


def _value_error(error: Exception, args: list[str]) -> str | None:
    """``--beams: must be an integer, got 'many'``, as captionkit's own checks word a bad value, for an option whose
    value is not of its type; None for any other error."""
    param, reason = getattr(error, "param", None), getattr(error, "message", "")
    kind = next((kind for prefix, kind in EXPECTED.items() if str(reason).startswith(prefix)), None)
    flags = [opt for opt in getattr(param, "opts", ()) if opt.startswith("-")]
    if kind is None or not flags:
        return None
    values: list[str] = []
    for index, arg in enumerate(args):
        for flag in flags:
            if arg == flag and index + 1 < len(args):
                values.append(args[index + 1])
            elif arg.startswith(f"{flag}="):
                values.append(arg.removeprefix(f"{flag}="))
    got = f", got {values[-1]!r}" if values else ""  # the last one given is the one that counts
    return f"{flags[0]}: must be {kind}{got}"
