"""A folder of images with sidecar text files: ``photo.jpg`` + ``photo.txt`` holding one caption a line.

Images are found at any depth (through links to folders too; the images of a folder that cannot be read are
counted as dropped, under its name); a first-level folder named train, val (dev, validation) or test gives the split
of everything under it. An image without a sidecar file is dropped and counted; blank lines in a sidecar are
skipped, and a sidecar with no caption at all counts as one empty caption. ``image_id`` is the image's path relative
to the folder.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats.base import (
    EMPTY_CAPTION,
    SPLIT_ALIASES,
    UNREADABLE_FOLDER,
    Collector,
    Probe,
    ReadOptions,
    ReadResult,
    sidecar_lines,
)
from captionkit.errors import InputError
from captionkit.files import FolderFiles, folder_files
from captionkit.shards.patterns import IMAGE_SUFFIXES

NO_SIDECAR = "image without a caption file"


def _images(directory: Path) -> FolderFiles:
    """The image files under ``directory`` (through links to folders too, and those that cannot be looked at), and
    the folders that cannot be listed."""
    found = folder_files(directory, IMAGE_SUFFIXES)
    found.files = [path for path in found.files if _is_file(path) is not False]
    return found


def _is_file(path: Path) -> bool | None:
    """Whether ``path`` is a file; None when its folder refuses to say (no search permission)."""
    try:
        return path.is_file()
    except OSError:
        return None


def detect_dir(directory: Path) -> bool:
    return any(_is_file(path.with_suffix(".txt")) for path in _images(directory).files)


def detect_file(probe: Probe) -> bool:
    return False


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    directory = probe.path
    if not directory.is_dir():
        raise InputError(directory, "an image folder format needs a directory")
    collector = Collector()
    found = _images(directory)
    for folder in found.unlisted:
        collector.drop(f"{folder}: {UNREADABLE_FOLDER}")
    for image in found.files:
        sidecar = image.with_suffix(".txt")
        has_sidecar = _is_file(sidecar)
        if not has_sidecar:
            collector.drop(NO_SIDECAR if has_sidecar is False else f"{image.parent}: {UNREADABLE_FOLDER}")
            continue
        relative = image.relative_to(directory)
        top = relative.parts[0].lower() if len(relative.parts) > 1 else ""
        split = SPLIT_ALIASES.get(top) if top != "restval" else None
        lines = sidecar_lines(sidecar)
        if not lines:
            collector.drop(EMPTY_CAPTION)
        for line in lines:
            collector.add(image, line, relative.as_posix(), split=split)
    return collector.result(directory)
