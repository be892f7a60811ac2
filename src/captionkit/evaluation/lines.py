"""Finding things in captions joined one a line, at C speed: where a string occurs, and on which lines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import AnyStr


def occurrences(text: AnyStr, needle: AnyStr) -> Iterator[int]:
    """The offsets at which ``needle`` starts in ``text``, found with ``find``."""
    at = text.find(needle)
    while at != -1:
        yield at
        at = text.find(needle, at + 1)


def line_numbers(text: AnyStr, offsets: Iterable[int]) -> list[int]:
    """The line of ``text`` (``str`` or ``bytes``, lines split at ``\\n``) each offset falls in, in offset order:
    newlines are counted once over the text, between one offset and the next."""
    newline = b"\n" if isinstance(text, bytes) else "\n"
    numbers, line, counted = [], 0, 0
    for offset in sorted(offsets):
        line += text.count(newline, counted, offset)  # type: ignore[arg-type]
        counted = offset
        numbers.append(line)
    return numbers
