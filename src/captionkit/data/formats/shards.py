"""Web-scale collections as datasets: WebDataset tar shards and Parquet files (see :mod:`captionkit.shards`), and
img2dataset's "files" layout (``00000/KEY.jpg`` + ``KEY.txt`` + ``KEY.json``).

Each sample's key is its ``image_id``; its captions come from ``KEY.txt`` (one a line), else from the ``caption``
field of ``KEY.json`` (or the Parquet ``caption`` column). A sample without a caption is dropped and counted, and so
is a Parquet row without image bytes (a download img2dataset failed), by its ``status``.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats.base import UNREADABLE_FOLDER, Collector, Probe, ReadOptions, ReadResult, sidecar_lines
from captionkit.errors import InputError
from captionkit.files import read_text
from captionkit.jsontext import parse_json
from captionkit.shards import (
    container_files,
    directory_containers,
    is_container_input,
    iter_samples,
    sample_captions,
)
from captionkit.shards.parquet import parquet_index
from captionkit.shards.patterns import IMAGE_SUFFIXES
from captionkit.shards.tar import tar_index

NO_CAPTION = "sample without a caption"
NO_IMAGE = "sample without an image member (its captions unused)"


def detect_tar(probe: Probe) -> bool:
    return probe.suffix == ".tar"


def detect_parquet(probe: Probe) -> bool:
    return probe.suffix == ".parquet"


def detect_tar_dir(directory: Path) -> bool:
    # is_container_input: a folder of photos with a .tar beside them (a backup, an earlier run's output) stays a
    # folder of photos, as the caption job takes it; read as shards, its sidecar captions would be silently ignored.
    return is_container_input(directory) and any(
        child.suffix.lower() == ".tar" for child in directory_containers(directory)
    )


def detect_parquet_dir(directory: Path) -> bool:
    # img2dataset writes a metadata 00000.parquet (URLs, no images) beside each 00000.tar or 00000/ folder: not data.
    return is_container_input(directory) and any(
        child.suffix.lower() == ".parquet" for child in directory_containers(directory)
    )


def read_containers(probe: Probe, options: ReadOptions) -> ReadResult:
    return collect_samples(container_files(probe.path)).result(probe.path)


def collect_samples(files: list[Path]) -> Collector:
    """The records of the containers ``files`` (one per caption), with the dropped ones counted."""
    collector = Collector()
    for container in files:
        for sample in iter_samples([container]):
            if sample.problem is not None:  # counted once, by what is wrong, even where that took its caption
                collector.drop(sample.problem)
                if sample.damaged or not sample.captions:
                    continue
            if not sample.captions:
                collector.drop(NO_CAPTION)
            for caption in sample.captions:
                collector.add(sample.image, caption, sample.key)
        if container.suffix.lower() == ".tar" and (imageless := _captioned_without_image(container)):
            collector.drop(NO_IMAGE, imageless)
        elif container.suffix.lower() == ".parquet":  # its rows without image bytes, which iter_samples skips
            for reason, count in parquet_index(container).dropped.items():
                collector.drop(reason, count)
    collector.files = files
    return collector


def _captioned_without_image(shard: Path) -> int:
    """Samples of ``shard`` with captions but no image member, which iter_samples skips: their captions are lost
    (an image member gone, or one of a kind no shard image is, ``KEY.gif``), as a sample's missing caption is
    counted (from the shard's cached index: read just now)."""
    samples = tar_index(shard).samples
    return sum(1 for s in samples if s.image is None and sample_captions(s.captions, s.meta))


def _numbered_folders(directory: Path) -> list[Path]:
    return sorted(child for child in directory.iterdir() if child.name.isdigit() and child.is_dir())


def detect_files_dir(directory: Path) -> bool:
    """img2dataset's files layout: numbered folders whose images have ``.json`` sidecars."""
    for folder in _numbered_folders(directory)[:1]:
        return any(path.with_suffix(".json").is_file() for path in _images(folder) or ())
    return False


def detect_files(probe: Probe) -> bool:
    return False


def _images(folder: Path) -> list[Path] | None:
    """The image files in ``folder``; None when it cannot be listed or its files looked at (permission denied)."""
    try:
        return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    except OSError:
        return None


def read_files(probe: Probe, options: ReadOptions) -> ReadResult:
    if not probe.path.is_dir():
        raise InputError(probe.path, "img2dataset's files layout needs a directory")
    collector = Collector()
    for folder in _numbered_folders(probe.path):
        images = _images(folder)
        if images is None:
            collector.drop(f"{folder}: {UNREADABLE_FOLDER}")
            continue
        for image in images:
            try:
                lines = _sidecar_lines(image)
            except InputError as error:  # its captions are unknown: the sample is dropped, counted by the reason
                collector.drop(str(error))
                continue
            try:  # read only for its caption, where the .txt gives none: a broken one beside a good .txt is unused
                meta = {} if lines else _sidecar_json(image.with_suffix(".json"))
            except InputError as error:  # its caption is unknown: the sample is dropped, counted by the reason
                collector.drop(str(error))
                continue
            captions = sample_captions(lines, meta)
            if not captions:
                collector.drop(NO_CAPTION)
            for caption in captions:
                collector.add(image, caption, image.stem)
    return collector.result(probe.path)


def _sidecar_lines(image: Path) -> tuple[str, ...]:
    """The captions of ``KEY.txt``; none when there is none, or it holds no caption (empty, or only whitespace), so
    that ``KEY.json``'s caption is used, as a WebDataset sample's is without a ``.txt`` member."""
    path = image.with_suffix(".txt")
    return tuple(sidecar_lines(path)) if path.is_file() else ()


def _sidecar_json(path: Path) -> dict:
    """The metadata of ``KEY.json``; none when there is none or it is empty (0 bytes, as an empty ``.txt``)."""
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    meta = parse_json(read_text(path), path)
    return meta if isinstance(meta, dict) else {}
