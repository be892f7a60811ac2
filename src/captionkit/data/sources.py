"""Turn a data spec (what a user types after --data) into caption records.

Formats today: captionkit's own ``captions.jsonl`` (a file, or a directory holding one). The datasets issue adds
COCO, Karpathy, Flickr, SentiCap, CSV and image folders behind this same function.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.records import CaptionRecord, read_jsonl
from captionkit.errors import InputError


def load_records(spec: str | Path) -> list[CaptionRecord]:
    """Records of the dataset at ``spec``; one clear error when it is missing or of an unknown format."""
    path = Path(spec)
    if path.is_dir():
        candidate = path / "captions.jsonl"
        if not candidate.is_file():
            raise InputError(path, "directory has no captions.jsonl")
        return read_jsonl(candidate)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    raise InputError(path, "unknown dataset format (expected captions.jsonl or a directory holding one)")
