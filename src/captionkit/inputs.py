"""Collect the image files a user names: files, directories (recursive) and .txt lists of paths."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from captionkit.errors import InputError

# Extensions picked up when walking a directory; a file named explicitly is always tried, whatever its name.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image paths in a stable order, without duplicates.

    A directory contributes its image files (by extension, recursively, sorted); a ``.txt`` file is a list of
    paths, one a line (relative to the list's directory; blank lines and ``#`` comments skipped); any other file
    is taken as an image. A missing input is an error naming it.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file() and path.suffix.lower() == ".txt":
            found.extend(_read_list(path))
        elif path.exists():
            found.append(path)
        else:
            raise InputError(path, "no such file or directory")
    return list(dict.fromkeys(found))


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(path, "image list is not UTF-8 text") from None
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line)
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    return entries
