"""Readers for the files ``captionkit score`` takes, detecting the format; one clear error when nothing fits.

References (:func:`read_references`):

- COCO captions JSON: ``{"annotations": [{"image_id": 139, "caption": "..."}], "images": [{"id": 139,
  "file_name": "000000000139.jpg"}]}``; images are named by ``image_id``, and also by ``file_name`` and its stem;
- a plain JSON object ``{"image id": ["caption", ...]}`` (ids that look like file names also match by name/stem);
- a Flickr token file, ``NAME.jpg#N<TAB>caption`` a line; images are named ``NAME.jpg`` (or its stem).

Candidates (:func:`read_candidates`):

- COCO results JSON: ``[{"image_id": 139, "caption": "..."}]``;
- a plain JSON object ``{"image id": "caption"}``;
- the JSONL that ``captionkit caption`` writes, ``{"image": "path/x.jpg", "caption": "...", "score": ...}`` a
  line; the image's file name names it. A failed image (``{"image": ..., "error": ...}``) is an error here.

Files must be UTF-8 (a byte-order mark is allowed). :meth:`ReferenceSet.match` maps candidate names onto reference
image ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from captionkit.errors import InputError
from captionkit.files import read_text, text_lines
from captionkit.jsontext import parse_json

_FLICKR_LINE = re.compile(r"(?P<name>[^\t#]+)#(?P<number>\d+)\t(?P<caption>.*)")
_REFERENCE_FORMATS = (
    'expected COCO captions JSON ({"annotations": [{"image_id", "caption"}]}), a JSON object {"id": [captions]} '
    "or a Flickr token file (NAME.jpg#N<TAB>caption)"
)
_CANDIDATE_FORMATS = (
    'expected COCO results JSON ([{"image_id", "caption"}]), a JSON object {"id": "caption"} or the JSONL of '
    '"captionkit caption" ({"image": ..., "caption": ...} a line)'
)


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


@dataclass
class ReferenceSet:
    """Reference captions by image id, with the other names (file names, stems) each image answers to."""

    captions: dict[str, list[str]]
    source: str = "references"
    #: ``(path, image id)``: the image also answers to the path's file name and stem (see :attr:`aliases`).
    paths: list[tuple[str, str]] = field(default_factory=list)

    @cached_property
    def aliases(self) -> dict[str, str | None]:
        """The file names and stems of :attr:`paths` -> their image id (``None``: the name fits several images),
        but names that are image ids themselves. Built on first use: candidates named by image id never need it."""
        aliases: dict[str, str | None] = {}
        for path, image_id in self.paths:
            for name in (_basename(path), _stem(path)):
                if name not in self.captions:
                    aliases[name] = image_id if aliases.get(name, image_id) == image_id else None
        return aliases

    def resolve(self, name: str) -> str | None:
        """The image id a candidate's name refers to, or ``None``."""
        for key in (name, _basename(name)):
            if key in self.captions:
                return key
            if self.aliases.get(key):
                return self.aliases[key]
        if name.isdigit() and str(int(name)) in self.captions:
            return str(int(name))
        return None

    def image_files(self, directory: Path) -> dict[str, Path]:
        """Each image's file in ``directory``, found under its id or any file name the references give it."""
        names: dict[str, list[str]] = {image_id: [image_id] for image_id in self.captions}
        for name, image_id in self.aliases.items():
            if image_id is not None:
                names[image_id].append(name)
        files: dict[str, Path] = {}
        for image_id, candidates in names.items():
            found = next((directory / n for n in candidates if (directory / n).is_file()), None)
            if found is None:
                raise InputError(directory, f"no image file for image {image_id!r} (tried {_examples(candidates)})")
            files[image_id] = found
        return files

    def match(self, candidates: Mapping[str, str], source: str) -> dict[str, str]:
        """Candidates keyed by reference image ids; names that match no image are kept (scoring reports them)."""
        matched: dict[str, str] = {}
        named: dict[str, str] = {}
        for name, caption in candidates.items():
            image_id = self.resolve(name) or name
            if image_id in matched:
                raise InputError(
                    source, f"two candidates for image {image_id!r} (named {named[image_id]!r} and {name!r})"
                )
            matched[image_id] = caption
            named[image_id] = name
        return matched


def _basename(name: str) -> str:
    """The last part of a POSIX or Windows path."""
    return name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]


def _stem(name: str) -> str:
    """The file name without its last suffix (``"a.b.jpg"`` -> ``"a.b"``), as ``PurePath.stem``."""
    base = _basename(name)
    head, dot, _ = base.rpartition(".")
    return head if dot and head.strip(".") and not base.endswith(".") else base


def _parse_json(text: str, path: Path) -> Any:
    data = parse_json(text, path)
    if isinstance(data, dict) and "annotations" not in data:
        # Keys are image ids here, and json.loads silently keeps the last of duplicates: parse again, checking.
        data = parse_json(text, path, unique_keys=True)
    return data


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


# ----------------------------------------------------------------------------------------------------------------
def read_references(path: str | Path) -> ReferenceSet:
    """Reference captions from a COCO captions JSON, a ``{"id": [captions]}`` JSON or a Flickr token file."""
    path = Path(path)
    text = read_text(path)
    if not _looks_like_json(text):
        return _flickr_references(text, path)
    data = _parse_json(text, path)
    if isinstance(data, dict) and "annotations" in data:
        return _coco_references(data, path)
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        references = ReferenceSet({}, str(path))
        for image_id, captions in data.items():
            if not all(isinstance(c, str) for c in captions):
                raise InputError(path, f"image {image_id!r}: captions must be strings")
            references.captions[image_id] = list(captions)
        references.paths.extend((image_id, image_id) for image_id in references.captions)
        return references
    raise InputError(path, f"not a references file: {_REFERENCE_FORMATS}")


def _coco_references(data: dict[str, Any], path: Path) -> ReferenceSet:
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise InputError(path, '"annotations" must be a list of {"image_id", "caption"} objects')
    references = ReferenceSet({}, str(path))
    captions = references.captions
    for number, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "image_id" not in annotation or "caption" not in annotation:
            raise InputError(path, f'annotation {number}: expected an object with "image_id" and "caption"')
        caption = annotation["caption"]
        if not isinstance(caption, str):
            raise InputError(path, f"annotation {number}: caption must be a string")
        image_id = str(annotation["image_id"])
        if image_id in captions:
            captions[image_id].append(caption)
        else:
            captions[image_id] = [caption]
    images = data.get("images", [])
    if isinstance(images, list):
        references.paths.extend(
            (image["file_name"], image_id)
            for image in images
            if isinstance(image, dict) and isinstance(image.get("file_name"), str) and "id" in image
            if (image_id := str(image["id"])) in captions
        )
    return references


def _flickr_references(text: str, path: Path) -> ReferenceSet:
    references = ReferenceSet({}, str(path))
    for number, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        match = _FLICKR_LINE.fullmatch(line.rstrip("\r"))
        if match is None:
            raise InputError(path, f"line {number} is not NAME#N<TAB>caption ({_REFERENCE_FORMATS})")
        references.captions.setdefault(match["name"], []).append(match["caption"])
    references.paths.extend((name, name) for name in references.captions)
    return references


# ----------------------------------------------------------------------------------------------------------------
def read_candidates(path: str | Path) -> dict[str, str]:
    """Candidate captions by the name each file gives its images (see :meth:`ReferenceSet.match`)."""
    path = Path(path)
    text = read_text(path)
    if not _looks_like_json(text):
        raise InputError(path, f"not a candidates file: {_CANDIDATE_FORMATS}")
    first_line = text.lstrip().split("\n", 1)[0]
    if text.lstrip().startswith("{") and '"image"' in first_line and _is_jsonl(text):
        return _jsonl_candidates(text, path)
    data = _parse_json(text, path)
    if isinstance(data, list):
        return _coco_candidates(data, path)
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return dict(data)
    raise InputError(path, f"not a candidates file: {_CANDIDATE_FORMATS}")


def _is_jsonl(text: str) -> bool:
    try:
        record = parse_json(text.lstrip().split("\n", 1)[0], "first line")
    except InputError:
        return False
    return isinstance(record, dict) and "image" in record and ("caption" in record or "error" in record)


def _coco_candidates(data: list[Any], path: Path) -> dict[str, str]:
    candidates: dict[str, str] = {}
    for number, result in enumerate(data):
        if not isinstance(result, dict) or "image_id" not in result or "caption" not in result:
            raise InputError(path, f'result {number}: expected an object with "image_id" and "caption"')
        image_id, caption = str(result["image_id"]), result["caption"]
        if not isinstance(caption, str):
            raise InputError(path, f"result {number} (image {image_id!r}): caption must be a string")
        if image_id in candidates:
            raise InputError(path, f"duplicate image_id {image_id!r} (result {number})")
        candidates[image_id] = caption
    return candidates


def _jsonl_candidates(text: str, path: Path) -> dict[str, str]:
    candidates: dict[str, str] = {}
    failed: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}: line {number}")
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise InputError(path, f'line {number}: expected an object with "image" and "caption"')
        name = _basename(record["image"])
        if "error" in record:
            failed.append(f"{name}: {record['error']}")
            continue
        caption = record.get("caption")
        if not isinstance(caption, str):
            raise InputError(path, f"line {number} ({name}): caption must be a string")
        if name in candidates:
            raise InputError(path, f"line {number}: duplicate image {name!r}")
        candidates[name] = caption
    if failed:
        raise InputError(
            path, f"{len(failed)} image(s) failed to caption, e.g. {failed[0]}; every image needs a caption to score"
        )
    return candidates
