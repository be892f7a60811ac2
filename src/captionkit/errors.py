"""The error types captionkit raises for bad input.

Every error a user can cause derives from :class:`CaptionkitError`; its message is one line that names the input and
the reason, so the CLI prints ``str(error)`` and the server returns it as the JSON ``detail``.
"""

from __future__ import annotations


class CaptionkitError(Exception):
    """Base class of every error caused by input: files, parameters, configs, requests."""


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
