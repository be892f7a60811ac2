"""Results as one JSON array (``--format json``), written and read one record at a time.

The writer streams records into a staging file beside the output and renames it over the output on close, so the
file is always a whole array (the old one until the run ends) and no record waits in memory. The bytes are those of
``json.dumps(records, indent=2)`` (each record's text ASCII-escaped only where it holds a name that is not valid
UTF-8). The reader parses the array element by element from a buffer of a few chunks.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from captionkit.errors import InputError
from captionkit.files import atomic_writer
from captionkit.jsontext import parse_json

CHUNK = 1 << 20  # characters read at a time
PATH_ERRORS = "surrogateescape"  # as outputs.PATH_ERRORS: names that are not UTF-8 keep their bytes


class JsonArrayWriter:
    """Appends the text of each record (``to_json(record, indent)``) to an array in ``path`` (None: stdout)."""

    def __init__(self, path: Path | None, to_json: Callable[[Any, int], str]) -> None:
        self.path = path
        self.to_json = to_json
        self.count = 0
        self._staged = contextlib.ExitStack()  # for a file: the staging file, put in place on close
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = (
            sys.stdout if path is None else self._staged.enter_context(atomic_writer(path, "w", encoding="utf-8"))
        )

    def write(self, record: Any) -> None:
        text = self.to_json(record, 2).replace("\n", "\n  ")
        self._handle.write(("[\n  " if self.count == 0 else ",\n  ") + text)
        self.count += 1

    def close(self) -> None:
        """End the array and, for a file, put it in place of the old one at once. A write that fails (a full disk)
        leaves the old file as it was, the staging file deleted now: left to the garbage collector, closing it
        would fail again, with a traceback after the error's one line."""
        try:
            self._handle.write("\n]\n" if self.count else "[]\n")
            self._handle.flush()
        except OSError:
            self.abort()
            raise
        self._staged.close()

    def abort(self) -> None:
        """Stop after a failure: a file's staging file is deleted and the old file left as it was."""
        error = RuntimeError("aborted")  # atomic_writer deletes the staging file when its block ends in an error
        with contextlib.suppress(OSError):  # closing it flushes what is left, which a full disk refuses again
            self._staged.__exit__(type(error), error, None)


def iter_json_array(path: Path, what: str = "a JSON list of records") -> Iterator[Any]:
    """The elements of the JSON array in ``path``, one at a time; anything else is one error naming the file."""
    with path.open(encoding="utf-8-sig", errors=PATH_ERRORS) as handle:  # -sig: a BOM some editors write, dropped
        reader = _Reader(handle, path)
        if not reader.skip_space():
            return  # an empty file: no records, as before
        if not reader.take("["):
            raise InputError(path, f"not a results file (expected {what})")
        if reader.skip_space() and reader.take("]"):
            reader.expect_end()
            return
        while True:
            yield reader.element()
            reader.skip_space()
            if reader.take("]"):
                reader.expect_end()
                return
            if not reader.take(","):
                raise reader.invalid("expected ',' or ']' after a record")


class _Reader:
    """A window on the file's text: ``buffer[at:]`` is what is not parsed yet."""

    def __init__(self, handle: TextIO, path: Path) -> None:
        self.handle, self.path = handle, path
        self.buffer, self.at, self.done = "", 0, False
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        """Read another chunk (dropping what is parsed); False at the end of the file."""
        chunk = "" if self.done else self.handle.read(CHUNK)
        self.done = not chunk
        self.buffer, self.at = self.buffer[self.at :] + chunk, 0
        return bool(chunk)

    def skip_space(self) -> bool:
        """Skip whitespace; False when the file ends first."""
        while True:
            while self.at < len(self.buffer) and self.buffer[self.at] in " \t\r\n":
                self.at += 1
            if self.at < len(self.buffer) or not self.more():
                return self.at < len(self.buffer)

    def take(self, char: str) -> bool:
        if self.skip_space() and self.buffer[self.at] == char:
            self.at += 1
            return True
        return False

    def element(self) -> Any:
        """The next JSON value, read on until it is whole (checked by :func:`parse_json`)."""
        self.skip_space()
        while True:
            try:
                _, end = self.decoder.raw_decode(self.buffer, self.at)
            except (json.JSONDecodeError, RecursionError, ValueError) as error:
                if self.more():
                    continue
                if isinstance(error, json.JSONDecodeError):
                    raise self.invalid(f"invalid JSON: {error.msg}") from None
                end = len(self.buffer)  # parse_json says why
            text, self.at = self.buffer[self.at : end], end
            try:
                return parse_json(text, self.path, non_finite=True)
            except InputError as error:
                raise InputError(self.path, f"not valid json ({error.reason})") from None

    def expect_end(self) -> None:
        if self.skip_space():
            raise self.invalid("extra data after the list")

    def invalid(self, reason: str) -> InputError:
        return InputError(self.path, f"not valid json ({reason})")
