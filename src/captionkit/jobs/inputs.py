"""Collect the image files a user names: files, directories (recursive) and .txt lists of paths."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from captionkit.errors import InputError
from captionkit.files import text_lines
from captionkit.shards import container_files, is_container_input, is_files_layout_image, iter_samples

# Extensions picked up when walking a directory; a file named explicitly is always tried, whatever its name.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


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
    """Image paths in a stable order, without duplicates (see :func:`collect_inputs`)."""
    return [item.path for item in collect_inputs(inputs)]


def collect_inputs(inputs: Iterable[str | Path]) -> list[InputImage]:
    """Images in a stable order, without duplicates, each with its sharding key.

    A collection (a ``.tar`` or ``.parquet`` file, a brace pattern of them or a directory of them) contributes its
    samples as member paths, each keyed by its sample key. A directory contributes its image files (by extension,
    recursively, sorted); a ``.txt`` file is a list of paths, one a line (relative to the list's directory; blank
    lines and ``#`` comments skipped); any other file is taken as an image. A missing input is an error naming it.
    A path met twice keeps its first key.
    """
    found: dict[Path, InputImage] = {}
    for item in inputs:
        path = Path(item)
        if is_container_input(item):
            samples = iter_samples(container_files(item))
            images = [InputImage(sample.image, sample.key) for sample in samples]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            images = [InputImage(p, _folder_key(p, path)) for p in files]
        elif path.is_file() and path.suffix.lower() == ".txt":
            images = _read_list(path)
        elif path.exists():
            images = [InputImage(path, path.as_posix())]
        else:
            raise InputError(path, "no such file or directory")
        for image in images:
            found.setdefault(image.path, image)
    return list(found.values())


def _folder_key(image: Path, folder: Path) -> str:
    """An image's key: its sample key in img2dataset's "files" layout (as in shards), else its relative path."""
    return image.stem if is_files_layout_image(image) else image.relative_to(folder).as_posix()


def _read_list(path: Path) -> list[InputImage]:
    try:
        lines = text_lines(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "image list is not UTF-8 text") from None
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line)
            entries.append(InputImage(entry if entry.is_absolute() else path.parent / entry, entry.as_posix()))
    return entries
