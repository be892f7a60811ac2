"""TextCaps (``TextCaps_0.1_train.json``, ``TextCaps_0.1_val.json``): ``{"dataset_name": "textcaps", "data": [...]}``
with one entry per caption: ``image_id``, ``image_path`` (``train/ID.jpg``), ``caption_str`` and ``set_name``.

Images are TextVQA's: looked for under ``train_images/`` (or ``train_val_images/train_images/``) beside the file, by
``image_path`` and by its file name, unless image roots are given. Test entries carry no caption and are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captionkit.data.formats.base import Collector, ImageResolver, Probe, ReadOptions, ReadResult, check_split, require
from captionkit.errors import InputError

NO_CAPTION = "entry without caption_str (test split)"


def detect_document(document: Any) -> bool:
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return False
    first = document["data"][0] if document["data"] else {}
    return document.get("dataset_name") == "textcaps" or (isinstance(first, dict) and "caption_str" in first)


def detect_file(probe: Probe) -> bool:
    return probe.suffix == ".json" and detect_document(probe.json())


def detect_dir(directory: Path) -> bool:
    return False


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    path = probe.path
    document = probe.json()
    if not detect_document(document):
        raise InputError(path, "not TextCaps JSON (expected a 'data' list of entries with caption_str)")
    here = path.parent
    roots = options.image_roots or (here / "train_images", here / "train_val_images" / "train_images", here)
    resolve = ImageResolver(roots, lambda name: (name, Path(name).name))
    collector = Collector()
    for index, entry in enumerate(document["data"]):
        where = f"{path}: data[{index}]"
        image_id = require(entry, "image_id", str, where)
        image = require(entry, "image_path", str, where)
        caption = entry.get("caption_str")
        if not isinstance(caption, str):
            collector.drop(NO_CAPTION)
            continue
        split = check_split(entry.get("set_name") if isinstance(entry.get("set_name"), str) else None, where)
        collector.add(resolve(image), caption, image_id, split=split)
    return collector.result(path)
