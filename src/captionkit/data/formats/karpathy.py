"""Karpathy's split files (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``).

``{"images": [{"filename", "filepath"?, "split", "cocoid"?, "sentences": [{"raw", "tokens"}]}], "dataset"}``.
``split`` is train/val/test (``restval`` counts as train). The caption is ``raw`` (else the tokens joined). COCO
images live in ``<root>/<filepath>/<filename>``, or in the image roots given: under ``<filepath>/``, directly (roots
that are the 2014 folders themselves) or under their COCO 2017 names (``000000000139.jpg``); Flickr ones in the
usual image folder beside the file.
"""

from __future__ import annotations

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
    first_sentence,
    pick_root,
    require,
    require_file_name,
    sentence_text,
)
from captionkit.data.formats.senticap import coco_aliases
from captionkit.errors import InputError

IMAGE_FOLDERS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "flickr30k_images")


def detect_document(document: Any) -> bool:
    if not isinstance(document, dict) or "annotations" in document:
        return False
    images = document.get("images")
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        return False
    sentences = images[0].get("sentences")
    if not isinstance(sentences, list) or "filename" not in images[0]:
        return False
    # SentiCap's json has the same outline, with a sentiment on every sentence.
    first = first_sentence(images)
    return not (isinstance(first, dict) and "sentiment" in first)


def detect_file(probe: Probe) -> bool:
    return probe.suffix == ".json" and detect_document(probe.json())


def split_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("dataset_*.json"))


def detect_dir(directory: Path) -> bool:
    return bool(split_files(directory))


def image_folders(here: Path) -> list[Path]:
    """Where a caption file's images usually are: beside it, in an image folder beside it, or one folder up."""
    candidates = [here, *(here / folder for folder in IMAGE_FOLDERS), here.parent]
    return candidates + [here.parent / folder for folder in IMAGE_FOLDERS]


def image_roots(here: Path, names: list[str], options: ReadOptions) -> list[Path]:
    return pick_root(image_folders(here), names, options.image_roots)


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    path = probe.path
    if path.is_dir():
        files = split_files(path)
        if len(files) != 1:
            raise InputError(path, f"several Karpathy split files ({', '.join(f.name for f in files)}); name one")
        path, probe = files[0], Probe(files[0])
    document = probe.json()
    if not detect_document(document):
        raise InputError(path, "not a Karpathy split file (expected 'images' with 'filename' and 'sentences')")
    collector = Collector()
    collector.files.append(path)
    entries = []
    for index, image in enumerate(document["images"]):
        where = f"{path}: images[{index}]"
        name = require_file_name(image, "filename", where)
        folder = require(image, "filepath", str, where) if image.get("filepath") is not None else ""
        entries.append((where, image, f"{folder}/{name}" if folder else name))
    # dataset_coco.json names the 2014 files; whoever has only COCO 2017 (the same photos, renamed) gives
    # ?images=train2017&images=val2017 and each image is found under its 2017 name, as it is found in
    # ?images=train2014&images=val2014 under its 2014 name without the filepath folder.
    resolve = ImageResolver(image_roots(path.parent, [entry[2] for entry in entries], options), coco_aliases)
    for where, image, relative in entries:
        split = check_split(require(image, "split", str, where), where)
        # A null cocoid would make every such image one image "None" (a split by image would keep them together).
        image_id = str(require(image, "cocoid", (int, str), where) if "cocoid" in image else image["filename"])
        sentences = require(image, "sentences", list, where)
        if not sentences:
            collector.drop(NO_SENTENCES)
        for number, sentence in enumerate(sentences):
            caption = sentence_text(sentence, f"{where}.sentences[{number}]")
            collector.add(resolve(relative), caption, image_id, split=split)
    return collector.result(path)
