"""Conceptual Captions (CC3M ``Train_GCC-training.tsv``, CC12M ``cc12m.tsv``): ``caption<TAB>url``, no header.

The file holds only URLs. Without ``?images=DIR`` reading it is an error saying how to download the images with
img2dataset (then read its shards instead); with it, row N's image is ``DIR/N.jpg`` with N as img2dataset writes
keys (nine digits, ``000000042.jpg``) or plain (``42.jpg``), and its image id is the nine-digit key. N counts
caption rows as img2dataset does: a ``caption<TAB>url`` header line (which img2dataset needs) and blank lines are not
rows.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats.base import Collector, ImageResolver, Probe, ReadOptions, ReadResult
from captionkit.errors import InputError
from captionkit.files import text_lines
from captionkit.shards.parquet import download_hint

HEADER = ["caption", "url"]


def _is_header(line: str) -> bool:
    return [field.strip().lower() for field in line.split("\t")] == HEADER


def _is_row(line: str) -> bool:
    fields = line.split("\t")
    return len(fields) == 2 and fields[1].strip().startswith(("http://", "https://"))


def detect_file(probe: Probe) -> bool:
    first = probe.first_line()
    return probe.suffix in (".tsv", ".txt") and (_is_row(first) or _is_header(first))


def detect_dir(directory: Path) -> bool:
    return False


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    path = probe.path
    if not options.image_roots:
        hint = download_hint(path, "tsv", "url")
        if _is_header(probe.first_line()):
            raise InputError(path, hint)
        raise InputError(path, f"{hint} (add the header line caption<TAB>url first: the file has none)")
    collector = Collector()
    resolve = ImageResolver(options.image_roots, lambda name: (name, f"{int(name.partition('.')[0])}.jpg"))
    lines = text_lines(probe.text())
    start = 1 if lines and _is_header(lines[0]) else 0
    key = 0
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        if not _is_row(line):
            raise InputError(f"{path}:{number}", "expected caption<TAB>url")
        collector.add(resolve(f"{key:09d}.jpg"), line.split("\t")[0], f"{key:09d}")
        key += 1
    return collector.result(path)
