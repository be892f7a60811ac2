"""Conceptual Captions (CC3M ``Train_GCC-training.tsv``, CC12M ``cc12m.tsv``): ``caption<TAB>url``, no header.

The file holds only URLs. Without ``?images=DIR`` reading it is an error saying how to download the images with
img2dataset (then read its shards instead); with it, row N's image is ``DIR/N.jpg`` with N as img2dataset writes
keys (nine digits, ``000000042.jpg``) or plain (``42.jpg``), and its image id is the nine-digit key.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats.base import Collector, ImageResolver, Probe, ReadOptions, ReadResult
from captionkit.errors import InputError
from captionkit.shards.parquet import download_hint


def _is_row(line: str) -> bool:
    fields = line.split("\t")
    return len(fields) == 2 and fields[1].strip().startswith(("http://", "https://"))


def detect_file(probe: Probe) -> bool:
    return probe.suffix in (".tsv", ".txt") and _is_row(probe.first_line())


def detect_dir(directory: Path) -> bool:
    return False


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    path = probe.path
    if not options.image_roots:
        hint = download_hint(path, "tsv", "url")
        raise InputError(path, f"{hint} (add the header line caption<TAB>url first: the file has none)")
    collector = Collector()
    resolve = ImageResolver(options.image_roots, lambda name: (name, f"{int(name.partition('.')[0])}.jpg"))
    for number, line in enumerate(probe.text().split("\n")):
        if not line.strip():
            continue
        if not _is_row(line):
            raise InputError(f"{path}:{number + 1}", "expected caption<TAB>url")
        collector.add(resolve(f"{number:09d}.jpg"), line.split("\t")[0], f"{number:09d}")
    return collector.result(path)
