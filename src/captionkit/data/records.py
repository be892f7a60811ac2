"""The dataset record every reader produces, and captionkit's own simple format (images + ``captions.jsonl``).

``captions.jsonl`` holds one JSON object a line, one line per caption::

    {"image": "images/000001.png", "caption": "a red circle", "image_id": "000001", "style": "neutral",
     "split": "train"}

``image`` is relative to the file's directory (or absolute). ``image_id`` defaults to ``image``; ``style`` to
``neutral``; ``split`` is optional (readers then split by image, seeded).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captionkit.errors import InputError
from captionkit.files import read_text, write_atomic
from captionkit.jsontext import parse_json

STYLES = ("neutral", "positive", "negative")
JSONL_KEYS = ("image", "caption", "image_id", "style", "split")  # the keys of captions.jsonl (write_jsonl)


def check_style(style: object, where: object) -> str:
    """``style`` as captionkit names it: case and surrounding spaces are ignored (a spreadsheet's "Positive"), as
    for splits; missing or empty is neutral; anything else is an ``InputError`` naming ``where``."""
    name = style.strip().lower() if isinstance(style, str) else style
    if name is None or name == "":
        return "neutral"
    if name not in STYLES:
        raise InputError(where, f"unknown style {style!r} (expected one of {', '.join(STYLES)})")
    return str(name)


# Split names as datasets spell them -> captionkit's three. Karpathy's "restval" is training data by convention.
SPLIT_ALIASES = {
    "train": "train",
    "restval": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}


def normalize_split(split: str | None) -> str | None:
    """``dev``/``validation`` -> ``val``, ``restval`` -> ``train``; other names are kept (lower-cased)."""
    if split is None:
        return None
    name = split.strip().lower()
    return SPLIT_ALIASES.get(name, name) or None


def check_split(split: str | None, where: str) -> str | None:
    """``split`` as captionkit names it (see :data:`SPLIT_ALIASES`); any other name is an error, since training reads
    only train and val records and would silently leave out a misspelt split's captions."""
    name = normalize_split(split)
    if name is not None and name not in SPLIT_ALIASES.values():
        raise InputError(where, f"unknown split {split!r} (expected {', '.join(SPLIT_ALIASES)})")
    return name


@dataclass(frozen=True)
class CaptionRecord:
    """One caption of one image. Splits are made by ``image_id``, never by caption. ``domain`` is a dataset's own
    grouping that evaluation reports separately (nocaps: in-domain, near-domain, out-domain)."""

    image_path: Path
    caption: str
    style: str = "neutral"
    image_id: str = ""
    split: str | None = None
    domain: str | None = None


def write_jsonl(records: Iterable[CaptionRecord], path: str | Path) -> Path:
    """Write ``records`` as ``captions.jsonl`` with image paths relative to the file's directory."""
    path = Path(path)
    root = path.parent.resolve()
    lines = []
    for record in records:
        image = record.image_path.resolve()
        row = {
            "image": image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image),
            "caption": record.caption,
            "image_id": record.image_id,
            "style": record.style,
        }
        if record.split is not None:
            row["split"] = record.split
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return write_atomic(path, "".join(lines))


def json_objects(text: str, path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Each non-blank line of a JSON-lines text as an object, with ``path:line`` to name it in errors."""
    # Split on newlines only: str.splitlines would also break at U+2028 and friends, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = parse_json(line, where)
        if not isinstance(row, dict):
            raise InputError(where, "expected a JSON object")
        yield row, where


def read_jsonl(path: str | Path) -> list[CaptionRecord]:
    """Read captionkit's ``captions.jsonl``; one clear error naming the file and line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    root = path.parent
    records: list[CaptionRecord] = []
    for row, where in json_objects(_jsonl_text(path), path):
        unknown = sorted(set(row) - set(JSONL_KEYS))
        if unknown:  # a misspelt key ("syle") would silently lose what it holds
            raise InputError(where, f"unknown key {unknown[0]!r} (expected {', '.join(JSONL_KEYS)})")
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image:
            raise InputError(where, "missing 'image' (a path)")
        if not isinstance(caption, str) or not caption.strip():
            raise InputError(where, "missing or empty 'caption'")
        style = check_style(row.get("style"), where)
        split = row.get("split")
        if split is not None and not isinstance(split, str):
            raise InputError(where, "'split' must be a string")
        split = check_split(split, where)  # as the dataset readers do: "trian" is no split, "Test" is test
        image_path = Path(image) if Path(image).is_absolute() else root / image
        records.append(CaptionRecord(image_path, caption.strip(), style, str(row.get("image_id") or image), split))
    if not records:
        raise InputError(path, "no captions in file")
    return records


def _jsonl_text(path: Path) -> str:
    """The text of a JSONL file as :func:`read_text` reads every text input (a byte-order mark allowed, UTF-16 named
    as such); an empty one is no error here but a file without captions."""
    try:
        return read_text(path)
    except InputError as error:
        if error.reason != "empty file":
            raise
        return ""
