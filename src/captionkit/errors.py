"""The error types captionkit raises for bad input.

Every error a user can cause derives from :class:`CaptionkitError`; its message is one line that names the input and
the reason, so the CLI prints ``str(error)`` and the server returns it as the JSON ``detail``.
"""

from __future__ import annotations

from typing import Any


class CaptionkitError(Exception):
    """Base class of every error caused by input: files, parameters, configs, requests."""

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle rebuilt an error by calling its class with its args, the one message: InputError(message) failed
        # ("missing 1 required positional argument: 'reason'"), so a ProcessPoolExecutor whose worker raised it died
        # as "BrokenProcessPool: ... terminated abruptly", and copy.deepcopy failed. Rebuilt without __init__ here,
        # its attributes (source, reason, and a subclass's own) copied as they are.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(kind: type[CaptionkitError], args: tuple[Any, ...], state: dict[str, Any]) -> CaptionkitError:
    error = kind.__new__(kind, *args)
    error.__dict__.update(state)
    return error


class InputError(CaptionkitError):
    """A file or parameter a user gave cannot be used.

    ``source`` names the input (a path, a parameter name, a request field); ``reason`` says what is wrong.
    """

    def __init__(self, source: object, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class ImageError(InputError):
    """An image cannot be read safely: unsupported format, corrupt, too large, a decompression bomb."""


class ConfigError(InputError):
    """A config file or ``--set`` override is invalid: unknown key, wrong type, bad value."""


class ModelLoadError(InputError):
    """A model name, directory or hub id cannot be loaded (missing files, offline, unsafe format)."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (or its type name): what a one-line error can quote."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
