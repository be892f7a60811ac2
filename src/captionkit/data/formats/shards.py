"""Web-scale collections as datasets: WebDataset tar shards and Parquet files (see :mod:`captionkit.shards`), and
img2dataset's "files" layout (``00000/KEY.jpg`` + ``KEY.txt`` + ``KEY.json``).

Each sample's key is its ``image_id``; its captions come from ``KEY.txt`` (one a line), else from the ``caption``
field of ``KEY.json`` (or the Parquet ``caption`` column). A sample without a caption is dropped and counted.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats.base import Collector, Probe, ReadOptions, ReadResult
from captionkit.errors import InputError
from captionkit.files import read_text, text_lines
from captionkit.jsontext import parse_json
from captionkit.shards import container_files, directory_containers, iter_samples, sample_captions
from captionkit.shards.patterns import IMAGE_SUFFIXES

NO_CAPTION = "sample without a caption"


def detect_tar(probe: Probe) -> bool:
    return probe.suffix == ".tar"


def detect_parquet(probe: Probe) -> bool:
    return probe.suffix == ".parquet"


def detect_tar_dir(directory: Path) -> bool:
    return any(child.suffix.lower() == ".tar" for child in directory_containers(directory))


def detect_parquet_dir(directory: Path) -> bool:
    # img2dataset writes a metadata 00000.parquet (URLs, no images) beside each 00000.tar or 00000/ folder: not data.
    return any(child.suffix.lower() == ".parquet" for child in directory_containers(directory))


def read_containers(probe: Probe, options: ReadOptions) -> ReadResult:
    return collect_samples(container_files(probe.path)).result(probe.path)


def collect_samples(files: list[Path]) -> Collector:
    """The records of the containers ``files`` (one per caption), with the dropped ones counted."""
    collector = Collector()
    for sample in iter_samples(files):
        if sample.problem is not None:  # counted once, by what is wrong, even where that took its caption
            collector.drop(sample.problem)
            if sample.damaged or not sample.captions:
                continue
        if not sample.captions:
            collector.drop(NO_CAPTION)
        for caption in sample.captions:
            collector.add(sample.image, caption, sample.key)
    collector.files = files
    return collector


def _numbered_folders(directory: Path) -> list[Path]:
    return sorted(child for child in directory.iterdir() if child.name.isdigit() and child.is_dir())


def detect_files_dir(directory: Path) -> bool:
    """img2dataset's files layout: numbered folders whose images have ``.json`` sidecars."""
    for folder in _numbered_folders(directory)[:1]:
        return any(path.with_suffix(".json").is_file() for path in _images(folder))
    return False


def detect_files(probe: Probe) -> bool:
    return False


def _images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def read_files(probe: Probe, options: ReadOptions) -> ReadResult:
    if not probe.path.is_dir():
        raise InputError(probe.path, "img2dataset's files layout needs a directory")
    collector = Collector()
    for folder in _numbered_folders(probe.path):
        for image in _images(folder):
            try:
                captions = sample_captions(_sidecar_lines(image), _sidecar_json(image.with_suffix(".json")))
            except InputError as error:  # one bad sidecar drops its sample, as an unreadable tar member does
                collector.drop(str(error))
                continue
            if not captions:
                collector.drop(NO_CAPTION)
            for caption in captions:
                collector.add(image, caption, image.stem)
    return collector.result(probe.path)


def _sidecar_lines(image: Path) -> tuple[str, ...]:
    path = image.with_suffix(".txt")
    if not path.is_file() or path.stat().st_size == 0:  # img2dataset writes an empty one for an empty caption
        return ()
    return tuple(line.strip() for line in text_lines(read_text(path)) if line.strip())


def _sidecar_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    meta = parse_json(read_text(path), path)
    return meta if isinstance(meta, dict) else {}
