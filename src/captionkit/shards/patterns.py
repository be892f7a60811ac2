"""What a user types for a collection -> its container files: a ``.tar``/``.parquet`` file, a brace pattern
``shards/{00000..00099}.tar`` (numbers keep their zero padding; ``{a,b}`` lists are expanded too) or a directory
holding such files (not recursive: img2dataset writes them side by side)."""

from __future__ import annotations

import re
from pathlib import Path

from captionkit.errors import InputError

CONTAINER_SUFFIXES = (".tar", ".parquet")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(text: str) -> list[str]:
    """``a{01..03}.tar`` -> ``a01.tar a02.tar a03.tar``; ``{x,y}`` -> both; several groups expand left to right,
    as a shell does. A range counting down is an error naming the pattern."""
    groups = [found for found in (_RANGE.search(text), _LIST.search(text)) if found is not None]
    if not groups:
        return [text]
    found = min(groups, key=lambda match: match.start())
    head, tail = text[: found.start()], text[found.end() :]
    if found.re is _LIST:
        return [out for choice in found.group(1).split(",") for out in expand_braces(head + choice + tail)]
    first, last = found.group(1), found.group(2)
    if int(last) < int(first):
        raise InputError(text, f"brace range {found.group(0)} counts down")
    width = len(first) if first.startswith("0") else 0
    return [
        out for number in range(int(first), int(last) + 1) for out in expand_braces(f"{head}{number:0{width}d}{tail}")
    ]


def _is_container(path: Path) -> bool:
    return path.suffix.lower() in CONTAINER_SUFFIXES


def is_container_input(item: str | Path) -> bool:
    """True when ``item`` names a collection: a container file, a brace pattern of them, or a directory of them."""
    text = str(item)
    if "{" in text and _is_container(Path(text)):
        return True
    path = Path(text)
    if path.is_file():
        return _is_container(path)
    return path.is_dir() and any(_is_container(child) and child.is_file() for child in path.iterdir())


def container_files(item: str | Path) -> list[Path]:
    """The container files ``item`` names, sorted within a directory, in pattern order otherwise; a missing file
    (of a pattern too) is an error naming it."""
    text = str(item)
    path = Path(text)
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if _is_container(child) and child.is_file())
        if not files:
            raise InputError(path, f"directory holds no {' or '.join(CONTAINER_SUFFIXES)} files")
        return files
    files = [Path(name) for name in expand_braces(text)] if "{" in text else [path]
    for file in files:
        if not file.is_file():
            raise InputError(file, "no such file")
    return files
