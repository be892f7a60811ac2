"""COCO captions JSON (``captions_train2017.json``) and the VizWiz-Captions files that share its layout.

``{"images": [{"id": 139, "file_name": "000000000139.jpg"}], "annotations": [{"image_id": 139, "caption": "..."}]}``.
VizWiz adds ``is_rejected`` (such captions are dropped and counted) and ``is_precanned`` (kept: they are real
references); a caption whose ``image_id`` is not in ``images`` is dropped and counted, and so is an image that no
caption names. Images are looked for in a sibling folder named after the file's split tag (``val2017/`` next to
``captions_val2017.json`` or next to its ``annotations/`` folder; ``train/`` for VizWiz's ``train.json``), unless image
roots are given.

A single file carries no split: every record's split is ``None`` (split by image, seeded, later). A directory with
several caption files (``captions_train2017.json`` and ``captions_val2017.json``) takes each file's split from its
name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from captionkit.data.formats.base import (
    Collector,
    ImageResolver,
    Probe,
    ReadOptions,
    ReadResult,
    pick_root,
    require,
    require_file_name,
)
from captionkit.errors import InputError

_SPLIT_TAG = re.compile(r"(?:^|_)(?P<tag>(?P<split>train|val|test)(?:\d{4})?)(?:_|$)")
_VIZWIZ_NAMES = ("train.json", "val.json")
REJECTED = "rejected caption (is_rejected)"
NO_IMAGE = "caption of an image_id not in 'images'"
NO_CAPTIONS = "image without captions"


def detect_document(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    annotations, images = document.get("annotations"), document.get("images")
    if not isinstance(annotations, list) or not isinstance(images, list):
        return False
    return not annotations or (isinstance(annotations[0], dict) and "caption" in annotations[0])


def detect_file(probe: Probe) -> bool:
    return probe.suffix == ".json" and detect_document(probe.json())


def caption_files(directory: Path) -> list[Path]:
    found = [*sorted(directory.glob("captions_*.json")), *sorted(directory.glob("annotations/captions_*.json"))]
    if not found:
        folder = directory / "annotations"
        found = [folder / name for name in _VIZWIZ_NAMES if (folder / name).is_file()]
    return found


def separate_files(directory: Path) -> list[Path]:
    """The caption files of ``directory`` when they are not one dataset: several, without one split each (such as
    ``captions_val2017.json`` beside ``captions_val2017_subset.json``); empty otherwise."""
    files = caption_files(directory)
    splits = [tag[0] if (tag := split_tag(path)) else None for path in files]
    return files if len(files) > 1 and (None in splits or len(set(splits)) < len(splits)) else []


def detect_dir(directory: Path) -> bool:
    return bool(caption_files(directory))


def split_tag(path: Path) -> tuple[str, str] | None:
    """``(split, folder)`` from a file name: ``captions_val2017.json`` -> ``("val", "val2017")``."""
    match = _SPLIT_TAG.search(path.stem)
    return (match["split"], match["tag"]) if match else None


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    collector = Collector()
    if probe.path.is_dir():
        files = caption_files(probe.path)
        splits = [tag[0] if (tag := split_tag(path)) else None for path in files]
        if separate_files(probe.path):
            names = ", ".join(path.name for path in files)
            raise InputError(probe.path, f"several COCO caption files without one split each ({names}); name one")
        for path, split in zip(files, splits, strict=True):
            read_document(Probe(path).json(), path, split if len(files) > 1 else None, options, collector)
    else:
        read_document(probe.json(), probe.path, None, options, collector)
    return collector.result(probe.path)


def _image_roots(path: Path, names: list[str], options: ReadOptions) -> list[Path]:
    here = path.parent
    tag = split_tag(path)
    candidates: list[Path] = []
    if tag:
        folder = tag[1]
        candidates += [here / folder, here.parent / folder, here / "images" / folder, here.parent / "images" / folder]
    candidates += [here / "images", here]
    return pick_root(candidates, names, options.image_roots)


def read_document(document: Any, path: Path, split: str | None, options: ReadOptions, collector: Collector) -> None:
    if not detect_document(document):
        raise InputError(path, "not COCO captions JSON (expected 'images' and 'annotations' lists with captions)")
    collector.files.append(path)
    # Ids as strings: one tool writes "image_id": "139" for the image whose "id" is 139, and records carry str ids.
    file_names: dict[str, str] = {}
    first_index: dict[str, int] = {}
    for index, image in enumerate(document["images"]):
        where = f"{path}: images[{index}]"
        image_id = str(require(image, "id", (int, str), where))
        file_name = require_file_name(image, "file_name", where)
        known = file_names.setdefault(image_id, file_name)
        if known != file_name:
            reason = f"id {image_id!r} is also the id of {known} (images[{first_index[image_id]}]), not of {file_name}"
            raise InputError(where, reason)
        first_index.setdefault(image_id, index)
    resolve = ImageResolver(_image_roots(path, list(file_names.values()), options))
    uncaptioned = set(file_names)
    for index, annotation in enumerate(document["annotations"]):
        where = f"{path}: annotations[{index}]"
        image_id = str(require(annotation, "image_id", (int, str), where))
        caption = require(annotation, "caption", str, where)
        uncaptioned.discard(image_id)
        if image_id not in file_names:
            # A subset whose images were filtered but not its annotations (pycocotools reads it too): the caption
            # has no file to go with, so it is dropped and counted rather than making the whole file unusable.
            collector.drop(NO_IMAGE)
            continue
        if annotation.get("is_rejected") is True:
            collector.drop(REJECTED)
            continue
        collector.add(resolve(file_names[image_id]), caption, image_id, split=split)
    if uncaptioned:  # a subset's or a test split's images give no record: counted, as Karpathy's reader counts its
        collector.drop(NO_CAPTIONS, len(uncaptioned))
