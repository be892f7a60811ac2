"""A folder of images with sidecar text files: ``photo.jpg`` + ``photo.txt`` holding one caption a line.

Images are found at any depth; a first-level folder named train, val (dev, validation) or test gives the split
of everything under it. An image without a sidecar file is dropped and counted; blank lines in a sidecar are
skipped, and a sidecar with no caption at all counts as one empty caption. ``image_id`` is the image's path
relative to the folder.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats.base import (
    EMPTY_CAPTION,
    SPLIT_ALIASES,
    Collector,
    Probe,
    ReadOptions,
    ReadResult,
    sidecar_lines,
)
from captionkit.errors import InputError
from captionkit.shards.patterns import IMAGE_SUFFIXES

NO_SIDECAR = "image without a caption file"


def _images(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def detect_dir(directory: Path) -> bool:
    return any(path.with_suffix(".txt").is_file() for path in _images(directory))


def detect_file(probe: Probe) -> bool:
    return False


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    directory = probe.path
    if not directory.is_dir():
        raise InputError(directory, "an image folder format needs a directory")
    collector = Collector()
    for image in _images(directory):
        sidecar = image.with_suffix(".txt")
        if not sidecar.is_file():
            collector.drop(NO_SIDECAR)
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
