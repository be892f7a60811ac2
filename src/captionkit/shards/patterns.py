"""What a user types for a collection -> its container files: a ``.tar``/``.parquet`` file, a brace pattern
``shards/{00000..00099}.tar`` (numbers keep their zero padding; ``{a,b}`` lists are expanded too) or a directory
holding such files (not recursive: img2dataset writes them side by side).

In a directory, a ``.parquet`` file named like a ``.tar`` shard or a folder beside it (``00000.parquet`` next to
``00000.tar`` or ``00000/``) is img2dataset's per-shard metadata (urls, keys, statuses; no image bytes), which it
writes by default: it is no collection, and reading it would fail the whole run on its url column."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from captionkit.errors import InputError

CONTAINER_SUFFIXES = (".tar", ".parquet")
# The image files a folder walk takes: the caption job's (captionkit.jobs.inputs) and the data readers' (folder, files).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(text: str) -> list[str]:
    """``a{01..03}.tar`` -> ``a01.tar a02.tar a03.tar``; ``{x,y}`` -> both; several groups expand left to right,
    as a shell does. A range counting down is an error naming the pattern."""
    return list(iter_braces(text))


def iter_braces(text: str) -> Iterator[str]:
    """:func:`expand_braces` one name at a time, so that a pattern checked name by name (a typo's extra digit,
    ``{00000..0999999}``) fails at its first missing shard rather than after building millions of names."""
    groups = [found for found in (_RANGE.search(text), _LIST.search(text)) if found is not None]
    if not groups:
        yield text
        return
    found = min(groups, key=lambda match: match.start())
    head, tail = text[: found.start()], text[found.end() :]
    if found.re is _LIST:
        for choice in found.group(1).split(","):
            yield from iter_braces(head + choice + tail)
        return
    first, last = found.group(1), found.group(2)
    if int(last) < int(first):
        raise InputError(text, f"brace range {found.group(0)} counts down")
    width = len(first) if first.startswith("0") else 0
    for number in range(int(first), int(last) + 1):
        yield from iter_braces(f"{head}{number:0{width}d}{tail}")


def _is_container(path: Path) -> bool:
    return path.suffix.lower() in CONTAINER_SUFFIXES


def directory_containers(directory: Path) -> list[Path]:
    """The container files of ``directory``, sorted, without img2dataset's metadata Parquet files."""
    # Names first, the disk only for containers: a folder of 100,000 photos is not stat'ed file by file.
    containers = sorted(child for child in directory.iterdir() if _is_container(child) and child.is_file())
    parquet_stems = {child.stem for child in containers if child.suffix.lower() == ".parquet"}
    shard_stems = {child.stem for child in containers if child.suffix.lower() == ".tar"}
    shard_stems |= {stem for stem in parquet_stems - shard_stems if (directory / stem).is_dir()}
    return [child for child in containers if not (child.suffix.lower() == ".parquet" and child.stem in shard_stems)]


def is_container_input(item: str | Path) -> bool:
    """True when ``item`` names a collection: a container file, a brace pattern of them, or a directory of them
    that holds no image file itself (a folder of photos stays one, whatever else lies in it)."""
    text = str(item)
    if "{" in text and _is_container(Path(text)):
        return True
    path = Path(text)
    if path.is_file():
        return _is_container(path)
    return path.is_dir() and not _holds_images(path) and bool(directory_containers(path))


def _holds_images(directory: Path) -> bool:
    """Whether ``directory`` holds image files itself: a folder of photos, which a ``.tar`` or ``.parquet`` beside them
    (a backup, the results of an earlier run written there) must not turn into a collection that hides them.
    img2dataset writes no image beside its shards."""
    try:
        return any(child.suffix.lower() in IMAGE_SUFFIXES and _named_file(child) for child in directory.iterdir())
    except OSError:  # a folder that cannot be listed is no collection: the folder walk says what it cannot read
        return True


def _named_file(child: Path) -> bool:
    """Whether ``child`` (named as an image) is a file; one that cannot be looked at (a folder without search
    permission) counts as one, as the folder walk gives it its error record."""
    try:
        return child.is_file()
    except OSError:
        return True


def container_files(item: str | Path) -> list[Path]:
    """The container files ``item`` names, sorted within a directory, in pattern order otherwise; a missing file
    (of a pattern too) is an error naming it."""
    text = str(item)
    path = Path(text)
    if path.is_dir():
        files = directory_containers(path)
        if not files:
            raise InputError(path, f"directory holds no {' or '.join(CONTAINER_SUFFIXES)} files")
        return files
    files = []
    for name in iter_braces(text) if "{" in text else [text]:
        file = Path(name)
        if not file.is_file() and not files and name != text:
            # Nothing of the pattern found (a wrong folder, a number of the wrong width): the pattern is the typo.
            raise InputError(text, f"its first shard, {file}, does not exist")
        if not file.is_file():
            raise InputError(file, "no such file")
        if file.suffix.lower() not in CONTAINER_SUFFIXES:  # a format forced on another file (webdataset:notes.txt)
            expected = " or ".join(CONTAINER_SUFFIXES)
            raise InputError(file, f"not a shard: a WebDataset or Parquet shard is a {expected} file")
        files.append(file)
    return files
