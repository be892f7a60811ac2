"""Caption dataset formats: one small module each, with a detection function and a reader.

:data:`FORMATS` lists them in detection order; :func:`detect` picks the first that claims a file or directory, and
:func:`get_format` looks one up by name (or alias) for an explicit ``FORMAT:PATH`` spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from captionkit.data.formats import (
    coco,
    conceptual,
    flickr,
    folder,
    karpathy,
    nocaps,
    senticap,
    shards,
    table,
    textcaps,
)
from captionkit.data.formats.base import Probe, ReadOptions, ReadResult
from captionkit.errors import InputError


@dataclass(frozen=True)
class Format:
    """A dataset format: how to recognise a file or directory of it, and how to read it."""

    name: str
    description: str
    detect_file: Callable[[Probe], bool]
    detect_dir: Callable[[Path], bool]
    read: Callable[[Probe, ReadOptions], ReadResult]
    aliases: tuple[str, ...] = ()
    # Whether a spec's images=DIR means anything to it: shards and folders carry their images, and would ignore it.
    takes_image_roots: bool = True


# Detection order matters where a directory holds several layouts (Flickr8k ships a token file, Kaggle's
# captions.txt and a Karpathy json side by side): the most specific, split-carrying one wins.
FORMATS: tuple[Format, ...] = (
    Format(
        "webdataset",
        "WebDataset tar shards (KEY.jpg + KEY.txt/KEY.json): a .tar, a brace pattern {00000..00099}.tar or a folder",
        shards.detect_tar,
        shards.detect_tar_dir,
        shards.read_containers,
        ("wds", "tar"),
        takes_image_roots=False,
    ),
    Format(
        "parquet",
        "Parquet with image bytes (img2dataset's jpg, key, caption columns): a .parquet file or a folder of them",
        shards.detect_parquet,
        shards.detect_parquet_dir,
        shards.read_containers,
        takes_image_roots=False,
    ),
    Format(
        "jsonl",
        "captionkit's captions.jsonl (the synthetic scenes) or any JSONL of {image, caption[, style][, split]}",
        table.detect_jsonl,
        table.detect_jsonl_dir,
        table.read_jsonl,
        ("captionkit", "synthetic"),
    ),
    Format(
        "flickr",
        "Flickr8k/30k token file (NAME.jpg#N<TAB>caption) with Flickr_8k.*Images.txt split lists",
        flickr.detect_file,
        flickr.detect_dir,
        flickr.read,
        ("flickr8k", "flickr30k"),
    ),
    Format(
        "karpathy",
        "Karpathy split json (dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json)",
        karpathy.detect_file,
        karpathy.detect_dir,
        karpathy.read,
    ),
    Format(
        "nocaps",
        "nocaps json (COCO-like; each image's in/near/out-domain kept, evaluate reports per domain)",
        nocaps.detect_file,
        nocaps.detect_dir,
        nocaps.read,
    ),
    Format(
        "textcaps",
        "TextCaps json (data entries with image_path, caption_str, set_name)",
        textcaps.detect_file,
        textcaps.detect_dir,
        textcaps.read,
    ),
    Format(
        "coco",
        "COCO captions json (captions_train2017.json; VizWiz-Captions train.json/val.json)",
        coco.detect_file,
        coco.detect_dir,
        coco.read,
        ("vizwiz",),
    ),
    Format(
        "senticap",
        "SentiCap json (images with sentences carrying sentiment) or CSV filename,is_positive_sentiment,caption",
        senticap.detect_file,
        senticap.detect_dir,
        senticap.read,
    ),
    Format(
        "conceptual",
        "Conceptual Captions TSV (caption<TAB>url, CC3M/CC12M): URLs only, so images=DIR of downloaded N.jpg",
        conceptual.detect_file,
        conceptual.detect_dir,
        conceptual.read,
        ("cc3m", "cc12m", "gcc"),
    ),
    Format(
        "csv",
        "CSV/TSV with image, caption[, style][, split] columns, Kaggle's captions.txt among them",
        table.detect_csv,
        table.detect_csv_dir,
        table.read_csv,
        ("kaggle", "tsv"),
    ),
    Format(
        "img2dataset",
        "img2dataset's files layout: numbered folders (00000/) of KEY.jpg + KEY.txt + KEY.json",
        shards.detect_files,
        shards.detect_files_dir,
        shards.read_files,
        ("files",),
        takes_image_roots=False,
    ),
    Format(
        "folder",
        "a folder of images with sidecar .txt files (one caption a line)",
        folder.detect_file,
        folder.detect_dir,
        folder.read,
        ("imagefolder",),
        takes_image_roots=False,
    ),
)


def get_format(name: str) -> Format | None:
    """The format called ``name`` (or one of its aliases), case-insensitive; ``None`` if there is none."""
    wanted = name.lower()
    for candidate in FORMATS:
        if wanted == candidate.name or wanted in candidate.aliases:
            return candidate
    return None


def format_names() -> list[str]:
    return [name for candidate in FORMATS for name in (candidate.name, *candidate.aliases)]


def detect(probe: Probe) -> Format:
    """The first format that claims ``probe``'s file or directory; one clear error when none does."""
    is_dir = probe.path.is_dir()
    for candidate in FORMATS:
        if candidate.detect_dir(probe.path) if is_dir else candidate.detect_file(probe):
            return candidate
    names = ", ".join(candidate.name for candidate in FORMATS)
    what = "directory holds no dataset this reads" if is_dir else "unknown dataset format"
    raise InputError(probe.path, f"{what} (formats: {names}; force one with FORMAT:PATH)")
