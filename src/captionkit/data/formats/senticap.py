"""SentiCap: positive and negative captions of COCO val2014 images, as JSON or as the release's CSV.

- JSON (the file later SentiCap work ships, e.g. ADS-Cap's ``senticap.json``): ``{"images": [{"filename",
  "imgid", "split", "sentences": [{"raw", "tokens", "sentiment"}]}]}``; sentiment 1 is positive, 0 negative.
- CSV (the release's ``senticap_dataset.csv``): header ``filename,is_positive_sentiment,caption``; no splits.

Images are named ``COCO_val2014_<12 digits>.jpg``; the COCO 2017 files are the same photos named
``<12 digits>.jpg``, so both names are tried under each image root (``val2014/``, ``val2017/``, ``images/`` beside
the file, or the roots given).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captionkit.data.formats.base import (
    NO_SENTENCES,
    Collector,
    ImageResolver,
    Probe,
    ReadOptions,
    ReadResult,
    check_split,
    csv_rows,
    first_sentence,
    require,
    require_file_name,
    sentence_text,
)
from captionkit.errors import InputError

CSV_COLUMNS = ("filename", "is_positive_sentiment", "caption")
_COCO_2014 = re.compile(r"^COCO_(?:train|val)2014_(\d{12}\.jpg)$")
# The sentence-level ``sentiment`` (JSON) and ``is_positive_sentiment`` (CSV) values -> captionkit style names.
SENTIMENTS: dict[object, str] = {1: "positive", 0: "negative", "1": "positive", "0": "negative"}


def coco_aliases(name: str) -> Iterator[str]:
    """The name as written, then for a COCO 2014 file its bare file name and its COCO 2017 name (the same photo).

    The bare name is for Karpathy's ``val2014/COCO_val2014_...jpg``: whoever gives the 2014 folders themselves as
    image roots (``?images=train2014&images=val2014``, as with the 2017 ones) names no folder above them. Only a
    COCO name is looked for without its folder: it names one photo in any folder, where ``a/1.jpg`` and ``b/1.jpg``
    are two.
    """
    yield name
    match = _COCO_2014.match(Path(name).name)
    if match:
        yield match[0]
        yield match[1]


def detect_document(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    images = document.get("images")
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        return False
    first = first_sentence(images)
    return isinstance(first, dict) and "sentiment" in first


def _csv_header(probe: Probe) -> list[str]:
    return [name.strip().lower() for name in probe.first_line().split(",")]


def detect_file(probe: Probe) -> bool:
    if probe.suffix == ".json":
        return detect_document(probe.json())
    return probe.suffix in (".csv", ".txt") and _csv_header(probe) == list(CSV_COLUMNS)


def _files(directory: Path) -> list[Path]:
    return sorted([*directory.glob("senticap*.json"), *directory.glob("senticap*.csv")])


def detect_dir(directory: Path) -> bool:
    return bool(_files(directory))


def _roots(here: Path, options: ReadOptions) -> list[Path]:
    if options.image_roots:
        return list(options.image_roots)
    candidates = [here / "images", here / "val2014", here.parent / "val2014", here / "val2017", here.parent / "val2017"]
    return [root for root in candidates if root.is_dir()] or [here]


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    if probe.path.is_dir():
        files = _files(probe.path)
        if not files:
            raise InputError(probe.path, "no SentiCap file (senticap*.json, senticap*.csv)")
        if len(files) != 1:
            names = ", ".join(path.name for path in files)
            raise InputError(probe.path, f"several SentiCap files ({names}); name one")
        probe = Probe(files[0])
    collector = Collector()
    collector.files.append(probe.path)
    resolve = ImageResolver(_roots(probe.path.parent, options), coco_aliases)
    if probe.suffix == ".json":
        _read_json(probe, resolve, collector)
    else:
        _read_csv(probe, resolve, collector)
    return collector.result(probe.path)


def _read_json(probe: Probe, resolve: ImageResolver, collector: Collector) -> None:
    if not detect_document(probe.json()):
        raise InputError(probe.path, "not SentiCap JSON (expected 'images' with 'sentences' that carry 'sentiment')")
    for index, image in enumerate(probe.json()["images"]):
        where = f"{probe.path}: images[{index}]"
        name = require_file_name(image, "filename", where)
        split = image.get("split")
        if split is not None and not isinstance(split, str):
            raise InputError(where, f"'split' must be a string, got {type(split).__name__}")
        split = check_split(split, where)
        sentences = require(image, "sentences", list, where)
        if not sentences:
            collector.drop(NO_SENTENCES)
        for number, sentence in enumerate(sentences):
            here = f"{where}.sentences[{number}]"
            sentiment = require(sentence, "sentiment", (int, str), here)
            if sentiment not in SENTIMENTS:
                raise InputError(here, f"sentiment must be 1 (positive) or 0 (negative), got {sentiment!r}")
            caption = sentence_text(sentence, here)
            collector.add(resolve(name), caption, coco_image_id(name), SENTIMENTS[sentiment], split)


def coco_image_id(name: str) -> str:
    """The COCO image id of a SentiCap file name ("COCO_val2014_000000000139.jpg" -> "139"), as the COCO and Karpathy
    readers give it, so that COCO and SentiCap captions of one photo are one image (splits, references); other
    names are their own id."""
    match = _COCO_2014.match(Path(name).name)
    return str(int(match.group(1)[:12])) if match else name


def _read_csv(probe: Probe, resolve: ImageResolver, collector: Collector) -> None:
    rows = csv_rows(probe)
    header = [name.strip().lower() for name in next(rows)[0]]
    if header != list(CSV_COLUMNS):
        raise InputError(probe.path, f"unknown columns {', '.join(header)} (expected {', '.join(CSV_COLUMNS)})")
    for row, where in rows:
        if not row:
            continue
        if len(row) != 3:
            raise InputError(where, f"expected 3 fields (filename, is_positive_sentiment, caption), got {len(row)}")
        name, sentiment, caption = (field.strip() for field in row)
        if sentiment not in SENTIMENTS:
            raise InputError(where, f"is_positive_sentiment must be 1 or 0, got {sentiment!r}")
        if not name:
            raise InputError(where, "empty filename")
        collector.add(resolve(name), caption, coco_image_id(name), SENTIMENTS[sentiment])
