"""WebDataset tar shards: members ``KEY.jpg|png|webp`` with ``KEY.txt`` (captions, one a line) and/or ``KEY.json``
(img2dataset's metadata; its ``caption`` field is used when there is no ``.txt``).

A shard is indexed once (headers only, plus the small text members) with the standard library's ``tarfile``; an
image's bytes are read at its offset when asked for. Indexes are cached for the few shards last used, so memory
does not grow with the number of shards. A torn tar (a copy cut short) keeps every sample before the cut; the
member the cut went through reads as an error naming it.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from captionkit.errors import InputError, first_line

IMAGE_MEMBER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_TEXT_LIMIT = 1 << 20  # a caption or metadata member larger than this is not text


@dataclass
class TarSample:
    """One sample of a shard: its key, its image member (offset and size of the bytes) and its captions."""

    key: str
    image: str | None = None
    offset: int = 0
    size: int = 0
    captions: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why its text members could not be read


@dataclass
class TarIndex:
    """A shard's samples in member order, and the image member name -> its sample."""

    samples: list[TarSample]
    by_member: dict[str, TarSample]


def tar_index(path: Path) -> TarIndex:
    """The (cached) index of the shard at ``path``; re-read when the file changed."""
    info = path.stat()
    return _cached_index(path.resolve(), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=4)
def _cached_index(path: Path, mtime_ns: int, size: int) -> TarIndex:  # mtime and size: the cache key
    samples: dict[str, TarSample] = {}
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                if member.isfile():
                    _add_member(archive, member, samples)
    except (tarfile.TarError, OSError, EOFError) as error:
        if not samples:
            raise InputError(path, f"not a readable tar file ({first_line(error)})") from None
    return TarIndex(list(samples.values()), {s.image: s for s in samples.values() if s.image is not None})


def _add_member(archive: tarfile.TarFile, member: tarfile.TarInfo, samples: dict[str, TarSample]) -> None:
    # WebDataset's key is everything before the first dot of the file name (in its folder).
    folder, _, name = member.name.rpartition("/")
    stem, dot, extension = name.partition(".")
    if not dot:
        return
    key = f"{folder}/{stem}" if folder else stem
    sample = samples.setdefault(key, TarSample(key))
    suffix = f".{extension.lower()}"
    if suffix in IMAGE_MEMBER_SUFFIXES and sample.image is None:
        sample.image, sample.offset, sample.size = member.name, member.offset_data, member.size
    elif suffix in (".txt", ".json"):
        try:
            text = _read_text(archive, member)
            if suffix == ".txt":
                sample.captions = tuple(line.strip() for line in text.split("\n") if line.strip())
            else:
                meta = json.loads(text)
                sample.meta = meta if isinstance(meta, dict) else {}
        except (ValueError, OSError, tarfile.TarError, EOFError) as error:
            sample.problem = f"{member.name}: unreadable ({first_line(error)})"


def _read_text(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    if member.size > _TEXT_LIMIT:
        raise ValueError(f"{member.size} bytes is too large for text")
    handle = archive.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) < member.size:
        raise ValueError("cut short (torn tar)")
    return data.decode("utf-8")


def sample_captions(lines: tuple[str, ...], meta: dict[str, Any]) -> list[str]:
    """A sample's captions: its ``.txt`` lines, else its ``.json``'s ``caption`` (a string or a list of them)."""
    if lines:
        return list(lines)
    caption = meta.get("caption")
    if isinstance(caption, str):
        return [caption] if caption.strip() else []
    if isinstance(caption, list):
        return [text for text in caption if isinstance(text, str) and text.strip()]
    return []


def read_tar_member(path: Path, member: str, limit: int) -> bytes:
    """The bytes of image ``member`` of the shard at ``path`` (at most ``limit + 1``, so a cap can be checked)."""
    sample = tar_index(path).by_member.get(member)
    if sample is None:
        raise InputError(f"{path}/{member}", "no such image member in the tar")
    with path.open("rb") as handle:
        handle.seek(sample.offset)
        data = handle.read(min(sample.size, limit + 1))
    if len(data) < min(sample.size, limit + 1):
        raise InputError(f"{path}/{member}", f"cut short: {len(data)} of {sample.size} bytes (torn tar)")
    return data
