"""Collect the image files a user names: files, directories (recursive) and .txt lists of paths."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from captionkit.data.formats.base import spellings
from captionkit.errors import InputError
from captionkit.files import folder_files, is_url, not_utf8_at, text_lines
from captionkit.shards import (
    container_files,
    is_container_input,
    is_files_layout_image,
    iter_samples,
    split_member,
)
from captionkit.shards.parquet import parquet_index
from captionkit.shards.patterns import IMAGE_SUFFIXES
from captionkit.shards.tar import tar_index

# Extensions picked up when walking a directory; a file named explicitly is always tried, whatever its name. HEIC
# and AVIF (what phones save) are not read, but are walked all the same: each gets a record saying so, where
# skipping them would leave a folder of phone photos half captioned without a word.
IMAGE_EXTENSIONS = IMAGE_SUFFIXES | {".heic", ".heif", ".avif"}


@dataclass(frozen=True)
class InputImage:
    """An image to caption: ``path`` as records name it, and ``key``, its path relative to the input it came from.

    The key is what sharding hashes: ``photos/a/b.jpg`` found under ``photos/`` has key ``a/b.jpg`` whether the
    folder is mounted at ``/data/photos`` or ``/mnt/photos``; an image of img2dataset's "files" layout
    (``00000/KEY.jpg`` beside ``KEY.json``) has its sample key ``KEY``, as in shards; a list entry's key is the entry
    as written; a file named on the command line is its own key.
    """

    path: Path
    key: str


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image paths in a stable order, without duplicates (see :func:`iter_inputs`)."""
    return [item.path for item in iter_inputs(inputs)]


def collect_inputs(inputs: Iterable[str | Path]) -> list[InputImage]:
    """:func:`iter_inputs` as a list, for callers that need every image at hand."""
    return list(iter_inputs(inputs))


# Why a sample of a shard is no image to caption (a Parquet row's reason is the index's: its img2dataset status).
NO_IMAGE_MEMBER = "tar sample without an image member"
REPEATED_KEY = "Parquet row whose key repeats an earlier row's (the key names the first row's image)"


def iter_inputs(inputs: Iterable[str | Path], left_out: Counter[str] | None = None) -> Iterator[InputImage]:
    """Images in a stable order, without duplicates, each with its sharding key, made one at a time as read.

    A collection (a ``.tar`` or ``.parquet`` file, a brace pattern of them or a directory of them) contributes its
    samples as member paths, each keyed by its sample key, read one container at a time: what the stream holds for
    collections is the names of the containers met, not their samples. A directory contributes its image files (by
    extension, recursively through links too, sorted; a broken link so named and a folder that cannot be listed too,
    for their error records); a ``.txt`` file is a list of paths, one a line (relative to the list's directory; blank
    lines and ``#`` comments skipped); any other file is taken as an image. A missing input is an error naming it,
    and so is a URL, as given (on the command line or in a list): only local files are read. A path met twice keeps
    its first key.

    Samples of collections that hold no image to caption are counted by reason into ``left_out`` when given: tar
    samples without an image member, Parquet rows without image bytes (img2dataset's failed downloads) and Parquet
    rows whose key repeats an earlier row's.
    """
    seen = _Seen()
    left_out = Counter() if left_out is None else left_out
    for item in inputs:
        if isinstance(item, str) and _is_url(item):
            raise InputError(item, _url_reason())
        path = Path(item)
        if is_container_input(item):
            yield from _container_images(container_files(item), seen, left_out)
            continue
        if path.is_dir():
            images = [InputImage(p, _folder_key(p, path)) for p in _folder_images(path)]
        elif path.is_file() and path.suffix.lower() == ".txt":
            images = _read_list(path)
        elif path.exists():
            images = [InputImage(path, path.as_posix())]
        else:
            raise InputError(path, "no such file or directory" + _glob_hint(str(item)))
        yield from (image for image in images if seen.first_loose(image.path))


class _Seen:
    """What the stream has given, to give each path once: loose paths one by one (their number grows with the loose
    files), containers by name only (a container's members are unique within it)."""

    def __init__(self) -> None:
        self.loose: set[Path] = set()
        self.containers: set[Path] = set()

    def first_loose(self, path: Path) -> bool:
        """Whether ``path`` (a file, or a member path a list names) is met for the first time; remembers it."""
        if path in self.loose:
            return False
        found = split_member(path) if self.containers else None
        if found is not None and found[0] in self.containers and _holds(*found):
            return False
        self.loose.add(path)
        return True


def _holds(container: Path, member: str) -> bool:
    """Whether reading ``container`` gives the image ``member`` (from its cached index)."""
    if container.suffix.lower() == ".tar":
        return member in tar_index(container).by_member
    return member in parquet_index(container).rows


def _container_images(containers: Iterable[Path], seen: _Seen, left_out: Counter[str]) -> Iterator[InputImage]:
    """The samples of ``containers`` not met before, one container in memory at a time; those with no image of
    their own are counted into ``left_out`` by reason (see :func:`iter_inputs`)."""
    for container in containers:
        if container in seen.containers:
            continue
        seen.containers.add(container)
        members: set[Path] = set()
        for sample in iter_samples([container]):
            if sample.image in members:  # a Parquet key met before in this file names that row's image
                left_out[REPEATED_KEY] += 1
            elif sample.image not in seen.loose:
                members.add(sample.image)
                yield InputImage(sample.image, sample.key)
        if container.suffix.lower() == ".tar":
            if imageless := sum(1 for sample in tar_index(container).samples if sample.image is None):
                left_out[NO_IMAGE_MEMBER] += imageless
        else:
            left_out.update(parquet_index(container).dropped)


def _folder_images(folder: Path) -> list[Path]:
    """The entries under ``folder`` named as images that are no directory (see :func:`folder_files`), and the
    folders under it that cannot be listed: each gets its error record rather than vanishing from the job."""
    found = folder_files(folder, IMAGE_EXTENSIONS)
    return sorted(found.files + found.unlisted)


def _folder_key(image: Path, folder: Path) -> str:
    """An image's key: its sample key in img2dataset's "files" layout (as in shards), else its relative path."""
    return image.stem if is_files_layout_image(image) else image.relative_to(folder).as_posix()


def _glob_hint(text: str) -> str:
    """For a missing input that is a glob (quoted, so the shell left it): how to name many files instead."""
    if not any(character in text for character in "*?["):
        return ""
    return (
        " (a glob is not expanded here: leave it unquoted for the shell, or name shards by a brace pattern, "
        "shards/{00000..00099}.tar, or by their folder)"
    )


def _is_url(text: str, folder: Path | None = None) -> bool:
    """Whether an input, or a line of a list in ``folder``, is a URL (see :func:`captionkit.files.is_url`) and no
    path there."""
    return is_url(text) and (folder is None or not (folder / text).exists())


def _url_reason() -> str:
    from captionkit.images.loading import URL_REASON

    return URL_REASON


def _list_lines(path: Path) -> list[str]:
    """The lines of the image list ``path``, without the byte-order mark Windows' Notepad starts a UTF-8 file with
    (it would be taken into the first path); a file in another encoding is an error saying where (line, column)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(path, f"cannot read the image list ({error.strerror or error})") from None
    try:
        return text_lines(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        reason = f"image list is not UTF-8 text ({not_utf8_at(data, error.start)}); save it as UTF-8"
        raise InputError(path, reason) from None


def _read_list(path: Path) -> list[InputImage]:
    lines = _list_lines(path)
    entries = []
    urls: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if _is_url(line, path.parent):  # Path() would mangle it, and it would fail later as a missing file
            urls.append((number, line))
            continue
        entries.append(InputImage(_list_entry(path.parent, line), Path(line).as_posix()))
    if urls:
        (number, url), more = urls[0], len(urls) - 1
        others = f" (and {more} more line{'s' if more > 1 else ''})" if more else ""
        raise InputError(path, f"line {number}{others}: {url}: {_url_reason()}")
    return entries


def _list_entry(folder: Path, line: str) -> Path:
    """The file a list's line names (relative to the list's ``folder``): as written, else as a list written on
    Windows (``photos\\a.jpg``) or a name in the other Unicode normalization (macOS stores NFD) spells it, as the
    dataset readers find them; as written when none is there. A plain ASCII line costs no look on the disk."""
    written, *others = (_beside(folder, spelt) for spelt in dict.fromkeys([line, *spellings(line)]))
    if not others or os.path.lexists(written):
        return written
    return next((other for other in others if os.path.lexists(other)), written)


def _beside(folder: Path, name: str) -> Path:
    entry = Path(name)
    return entry if entry.is_absolute() else folder / entry
