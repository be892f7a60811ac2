"""The index of an ``--attention-maps`` directory: ``DIR/index.jsonl``, one ``{"image", "folder"}`` line per image
whose maps go there (written before they are drawn), ``image`` as the records name it and ``folder`` a child of DIR.

Same-named images get folders ``x``, ``x-2``, ...; the index is what says which is whose. It lives with the maps and
outlives any one run: a later run into DIR (resumed, a shard, torchrun rank, or another set of images) keeps every
indexed image's folder and never gives that folder to another image. Lines are appended a batch at a time, each
batch one ``write`` to a file opened for appending, under an exclusive ``flock`` where the system has one, so shards
and torchrun ranks that share DIR append side by side; a run killed mid-write leaves at most one unfinished last line,
which reading leaves out and the next run cuts (under the same lock) before it appends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from captionkit.errors import InputError
from captionkit.files import cannot_write
from captionkit.jobs.outputs import PATH_ERRORS, end_of_last_line, to_json
from captionkit.jsontext import parse_json

try:
    import fcntl
except ImportError:  # Windows: no flock; one process a DIR is safe there
    fcntl = None  # type: ignore[assignment]

INDEX_NAME = "index.jsonl"
# A folder name the index may hold: a plain child of DIR, as overlays.safe_folder_name makes them.
MAX_NAME_BYTES = 255


def index_path(directory: Path) -> Path:
    return directory / INDEX_NAME


def read_index(directory: Path) -> dict[str, str]:
    """``{image: folder}`` from ``DIR/index.jsonl`` (none when there is no index yet); an unfinished last line is left
    out, and anything else that is not an entry is one error naming the file and the line."""
    path = index_path(directory)
    if not path.is_file():
        return {}
    entries: dict[str, str] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                break  # a run killed while appending: that image was not drawn
            text = raw.decode("utf-8", PATH_ERRORS)
            if text.strip():
                image, folder = _entry(parse_json(text, f"{path}: line {number}"), path, number)
                entries[image] = folder
    return entries


def _entry(value: object, path: Path, number: int) -> tuple[str, str]:
    """``(image, folder)`` of one parsed line, which must name a plain folder inside DIR."""
    if isinstance(value, dict):
        image, folder = value.get("image"), value.get("folder")
        if isinstance(image, str) and isinstance(folder, str) and plain_folder(folder):
            return image, folder
    reason = f'line {number} is not an entry {{"image": ..., "folder": ...}} naming a folder inside the directory'
    raise InputError(path, f"{reason}; mend or remove the index (it says which folder is whose)")


def plain_folder(name: str) -> bool:
    """Whether ``name`` is one plain, visible child of DIR other than the index itself."""
    unsafe = any(character in name for character in "/\\\0") or name.startswith(".") or not name
    return not unsafe and name.casefold() != INDEX_NAME and len(os.fsencode(name)) <= MAX_NAME_BYTES


def drop_unfinished_line(directory: Path) -> None:
    """Cut an unfinished last line (a killed run's) off the index, so that the lines appended next stand alone."""
    path = index_path(directory)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with _writing(path), path.open("rb+") as handle:
        _lock(handle.fileno())  # another process's append must not land between the look and the cut
        handle.truncate(end_of_last_line(handle, handle.seek(0, os.SEEK_END)))


def append_entries(directory: Path, entries: Mapping[str, str]) -> None:
    """Append ``{image: folder}`` to the index in one write (made with DIR if need be)."""
    if not entries:
        return
    lines = "".join(to_json({"image": image, "folder": folder}) + "\n" for image, folder in entries.items())
    data = lines.encode("utf-8", PATH_ERRORS)
    path = index_path(directory)
    with _writing(path):
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            _lock(descriptor)
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
        finally:
            os.close(descriptor)  # and the lock with it


def _lock(descriptor: int) -> None:
    """Hold an exclusive lock on the open index until it is closed (nothing where the system has no flock)."""
    if fcntl is not None:
        fcntl.flock(descriptor, fcntl.LOCK_EX)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError (a full disk, a read-only DIR) as one line naming the index: without it the maps are not told
    apart, so the job stops there; the records written so far stay, for ``--resume``."""
    try:
        yield
    except OSError as error:
        raise InputError(path, cannot_write(error)) from None
