"""WebDataset tar shards: members ``KEY.jpg|png|webp`` with ``KEY.txt`` (captions, one a line) and/or ``KEY.json``
(img2dataset's metadata; its ``caption`` field is used when there is no ``.txt``).

A shard is indexed once (headers only, plus the small text members) with the standard library's ``tarfile``; an
image's bytes are read at its offset when asked for. Indexes are cached for the few shards last used, so memory
does not grow with the number of shards. A torn tar (a copy cut short) keeps every sample before the cut; the
member the cut went through reads as an error naming it (its sample's problem says so too: the cut may have taken
its caption), and a cut between members (no end-of-archive blocks) as a
damage record ``SHARD/@OFFSET``. A garbage header is such a record too, and reading goes on at the next valid ustar
header (headers sit on 512-byte boundaries), so the members after the damage are still read.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from captionkit.errors import InputError, first_line

IMAGE_MEMBER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_TEXT_LIMIT = 1 << 20  # a caption or metadata member larger than this is not text
BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)
_SCAN_CHUNK = 1 << 20  # bytes read at a time while looking for the next header past damage


@dataclass
class TarSample:
    """One sample of a shard: its key, its image member (offset and size of the bytes) and its captions."""

    key: str
    image: str | None = None
    offset: int = 0
    size: int = 0
    captions: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why its text members could not be read, or the damage it stands for
    damaged: bool = False  # not a sample: damage to the shard (a garbage header, a cut between members)


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
        with path.open("rb") as handle:
            _walk(path, handle, size, samples)
    except OSError as error:
        if not samples:
            raise InputError(path, f"not a readable tar file ({first_line(error)})") from None
    return TarIndex(list(samples.values()), {s.image: s for s in samples.values() if s.image is not None})


def _walk(path: Path, handle: BinaryIO, size: int, samples: dict[str, TarSample]) -> None:
    """Index the members at 512-byte header offsets; where a header is garbage, resync at the next ustar header.

    Damage that no member's record reports (a garbage header, a cut between members) becomes a damage sample.
    """
    archive = _reader(handle)
    offset = 0
    last: tuple[TarSample, str] | None = None  # the sample the last member went to (an image or text), and it
    while True:
        handle.seek(offset)
        block = handle.read(BLOCK)
        if not block or len(block) < BLOCK:
            if offset == 0:
                what = f"{size} bytes: shorter than one tar header" if size else "empty file"
                raise InputError(path, f"not a readable tar file ({what})")
            if not block and offset == size:
                _damage(samples, offset, f"torn tar: cut at byte {offset}, between members (no end-of-archive blocks)")
            elif block or last is None:
                _damage(samples, offset, f"torn tar: cut at byte {size}, inside the member at byte {offset}")
            else:  # the cut went through the last member: its sample says so (its caption may be what was lost)
                sample, name = last
                sample.problem = sample.problem or f"torn tar: cut at byte {size}, inside {name}"
            return
        if block == ZERO_BLOCK:  # the end of the archive, unless members follow (a hole left by a broken copy)
            found = _next_header(handle, offset + BLOCK)
            if found is None:
                return
            _damage(samples, offset, f"damaged tar: zero blocks at byte {offset}, {found - offset} bytes skipped")
            offset = found
            continue
        try:
            handle.seek(offset)
            archive.offset = offset
            member = tarfile.TarInfo.fromtarfile(archive)
        except (tarfile.TarError, EOFError, ValueError) as error:  # HeaderError and the like: a garbage header
            found = _next_header(handle, offset + BLOCK)
            if offset == 0 and found is None:
                raise InputError(path, f"not a readable tar file ({first_line(error)})") from None
            skipped = f"{found - offset} bytes skipped to the next member" if found else "no member after it"
            _damage(samples, offset, f"damaged tar: bad header at byte {offset} ({first_line(error)}), {skipped}")
            if found is None:
                return
            offset = found
            continue
        indexed = _add_member(archive, member, samples) if member.isfile() else None
        last = (indexed, member.name) if indexed is not None else None
        offset = archive.offset  # past the member's data (tarfile rounds it up to whole blocks)


def _reader(handle: BinaryIO) -> tarfile.TarFile:
    """A ``TarFile`` whose header parsing (pax and GNU long names included) reads ``handle`` wherever we seek.

    It is opened on an empty archive, so that a garbage first header of the real file is ours to handle.
    """
    archive = tarfile.TarFile(fileobj=io.BytesIO(ZERO_BLOCK * 2))
    archive.fileobj = handle
    return archive


def _next_header(handle: BinaryIO, offset: int) -> int | None:
    """The offset of the first valid ustar header at or after ``offset`` (on a block boundary), if any."""
    handle.seek(offset)
    while chunk := handle.read(_SCAN_CHUNK):
        for start in range(0, len(chunk) - BLOCK + 1, BLOCK):
            block = chunk[start : start + BLOCK]
            if block[257:262] == b"ustar" and _parses(block):
                return offset + start
        offset += len(chunk)
    return None


def _parses(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _damage(samples: dict[str, TarSample], offset: int, reason: str) -> None:
    """A sample standing for the damage at ``offset``: reading its image member raises ``reason``."""
    name = f"@{offset}"
    samples[name] = TarSample(name, image=name, problem=reason, damaged=True)


def _member_name(name: str) -> str:
    """A member's name as a member path gives it back: ``tar -C DIR .`` writes ``./KEY.jpg``, and a path joined with
    ``./KEY.jpg`` (or ``a//b.jpg``, or ``/KEY.jpg``) loses the ``./`` (or the doubled or leading slash), so the index
    keeps the name in that form, or no image of such a shard could be found again."""
    return PurePosixPath(name.lstrip("/")).as_posix()


def _add_member(archive: tarfile.TarFile, member: tarfile.TarInfo, samples: dict[str, TarSample]) -> TarSample | None:
    """Index ``member``; the sample it went to, if it is an image or text member (None: a member of no sample)."""
    # WebDataset's key is everything before the first dot of the file name (in its folder).
    name = _member_name(member.name)
    folder, _, file_name = name.rpartition("/")
    stem, dot, extension = file_name.partition(".")
    if not dot:
        return None
    key = f"{folder}/{stem}" if folder else stem
    sample = samples.setdefault(key, TarSample(key))
    suffix = f".{extension.lower()}"
    if suffix in IMAGE_MEMBER_SUFFIXES and sample.image is None:
        sample.image, sample.offset, sample.size = name, member.offset_data, member.size
        return sample
    if suffix in (".txt", ".json"):
        try:
            text = _read_text(archive, member)
            if suffix == ".txt":
                sample.captions = tuple(line.strip() for line in text.split("\n") if line.strip())
            else:
                meta = json.loads(text)
                sample.meta = meta if isinstance(meta, dict) else {}
        except (ValueError, OSError, tarfile.TarError, EOFError) as error:
            sample.problem = f"{member.name}: unreadable ({first_line(error)})"
        return sample
    return None


def _read_text(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    if member.size > _TEXT_LIMIT:
        raise ValueError(f"{member.size} bytes is too large for text")
    handle = archive.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) < member.size:
        raise ValueError("cut short (torn tar)")
    return data.decode("utf-8-sig")  # a BOM (Windows editors write one) is no part of the caption, nor JSON


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
    if sample.damaged:
        raise InputError(f"{path}/{member}", sample.problem or "damaged tar")
    with path.open("rb") as handle:
        handle.seek(sample.offset)
        data = handle.read(min(sample.size, limit + 1))
    if len(data) < min(sample.size, limit + 1):
        raise InputError(f"{path}/{member}", f"cut short: {len(data)} of {sample.size} bytes (torn tar)")
    return data
