"""Checks of a caption dataset: counts per split, unreadable or missing images, caption lengths, duplicates, and
images that leak between splits. :func:`check_records` returns a plain dict (the JSON that ``captionkit data check
--json`` prints); ``errors`` counts the problems that make the data unfit to train or evaluate on as it is;
``long_captions`` (over :data:`LONG_CAPTION_WORDS` words) are a warning.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from captionkit.data.formats import detect, get_format
from captionkit.data.formats.base import Probe
from captionkit.data.formats.shards import collect_samples
from captionkit.data.records import STYLES, CaptionRecord
from captionkit.data.sources import DataSpec, LoadResult, as_specified, load_dataset, parse_spec
from captionkit.errors import ImageError, InputError
from captionkit.images import DEFAULT_LIMITS, ImageLimits, load_image
from captionkit.shards import container_files, is_container_input, iter_samples, read_member, split_member
from captionkit.shards.tar import tar_index

# Words for length statistics: runs of letters/digits, with an inner apostrophe ("man's"); punctuation is not a word.
_WORD = re.compile(r"\w+(?:'\w+)?")
NO_SPLIT = "none"
#: Captions of more words are listed as a warning: a real caption is a sentence or two, and a much longer one is
#: usually a parsing accident (a quote left open in a table swallowing the rows after it).
LONG_CAPTION_WORDS = 100
#: Words of a reason a shard reader dropped a sample for (``SHARD: REASON``) that mean damage to the shard itself, as
#: :mod:`captionkit.shards.tar` words it: a copy cut short, garbage between members. Not one bad sample but a file
#: that lost an unknown number of them, which the user must see as an error.
_SHARD_DAMAGE = ("torn tar", "damaged tar")


def caption_words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """min/mean/median/max of caption lengths in words (zeros for no captions)."""
    if not lengths:
        return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {
        "min": min(lengths),
        "mean": round(statistics.fmean(lengths), 2),
        "median": float(statistics.median(lengths)),
        "max": max(lengths),
    }


def split_counts(records: Sequence[CaptionRecord]) -> dict[str, Any]:
    styles = Counter(record.style for record in records)
    return {
        "images": len({record.image_id for record in records}),
        "captions": len(records),
        "styles": {style: styles.get(style, 0) for style in STYLES},
        "caption_words": length_stats([len(caption_words(record.caption)) for record in records]),
    }


def damaged_shards(dropped: Mapping[str, int], files: Sequence[Path]) -> list[dict[str, Any]]:
    """The reasons in ``dropped`` (a reader's reason -> count) that are damage to one of the tar shards ``files``:
    ``{"shard", "reason"}`` each (the reason names where), in the order of ``files``. The shard's other samples
    stay read."""
    shards = {str(path): position for position, path in enumerate(files) if path.suffix.lower() == ".tar"}
    found: list[tuple[int, dict[str, Any]]] = []
    for reason in dropped:
        if not any(words in reason for words in _SHARD_DAMAGE):
            continue
        # The reason names its shard first (``SHARD: ...``); a path may hold ": " itself, so each cut is tried.
        cut = reason.find(": ")
        while cut != -1 and reason[:cut] not in shards:
            cut = reason.find(": ", cut + 2)
        if cut != -1:
            entry = {"shard": reason[:cut], "reason": reason[cut + 2 :]}
            found.append((shards[reason[:cut]], entry))
    return [entry for _, entry in sorted(found, key=lambda item: item[0])]


def load_checked(spec: str) -> tuple[LoadResult, list[dict[str, str]]]:
    """The dataset at ``spec`` as :func:`~captionkit.data.sources.load_dataset` reads it, and the shards of a shard
    collection that could not be read at all, ``{"shard", "reason"}`` each in the collection's order. Those are left
    out and the other shards read, where the first of them ended the check: the others went unchecked and the rest
    of the unreadable ones unnamed, one run each. None readable: ``load_dataset``'s own error, the first one's."""
    parsed = parse_spec(spec)
    try:
        return load_dataset(parsed), []
    except InputError as error:
        shards = _collection_files(parsed)
        failed = Path(os.path.realpath(str(error.source)))
        if failed not in {Path(os.path.realpath(shard)) for shard in shards}:
            raise
        reasons = {shard: _unreadable(shard) for shard in shards}
        readable = [shard for shard, reason in reasons.items() if reason is None]
        if not readable:
            raise
    unreadable = [{"shard": str(shard), "reason": reason} for shard, reason in reasons.items() if reason is not None]
    return _load_shards(parsed, readable, shards), unreadable


def _collection_files(parsed: DataSpec) -> list[Path]:
    """The shards of a WebDataset or Parquet collection ``parsed`` names; none for any other data."""
    forced = get_format(parsed.format) if parsed.format else None
    if (forced is not None and forced.name not in ("webdataset", "parquet")) or not is_container_input(parsed.path):
        return []
    try:
        return container_files(parsed.path)
    except InputError:
        return []


def _unreadable(shard: Path) -> str | None:
    """Why ``shard`` cannot be read at all (its index fails, as the reader's would); None when it can."""
    try:
        next(iter_samples([shard]), None)  # the shard is indexed before its first sample: where reading it fails
    except InputError as error:
        return error.reason
    return None


def _load_shards(parsed: DataSpec, readable: list[Path], shards: list[Path]) -> LoadResult:
    """What ``load_dataset(parsed)`` gives when only the ``readable`` shards of the collection are read; its files
    are all the ``shards``, for :func:`damaged_shards`."""
    read = collect_samples(readable).result(parsed.path)
    chosen = (get_format(parsed.format) if parsed.format else None) or detect(Probe(parsed.path))
    return replace(as_specified(parsed, chosen.name, read), files=shards)


def _long_captions(records: Sequence[CaptionRecord]) -> list[dict[str, Any]]:
    words = ((record, len(caption_words(record.caption))) for record in records)
    return [{"image": str(record.image_path), "words": count} for record, count in words if count > LONG_CAPTION_WORDS]


def _split_of(record: CaptionRecord) -> str:
    return record.split or NO_SPLIT


def _inspect_image(path: Path, limits: ImageLimits) -> tuple[str | None, str | None]:
    """(sha256 of the bytes, None) for a good image, (None, reason) for a bad one; reason "missing" if absent."""
    try:
        data = read_member(path, limits.max_bytes)  # None: not a sample inside a tar or Parquet shard
        if data is None:
            if not path.exists():
                return None, "missing"
            if path.is_dir():  # there, so not missing: a hint to look in another folder would mislead
                return None, "is a directory, not an image file"
            if not path.is_file():  # a FIFO or a device: reading it may never end
                return None, "not a regular file"
            with path.open("rb") as handle:
                data = handle.read(limits.max_bytes + 1)
    except InputError as error:
        return None, error.reason
    except OSError as error:
        return None, f"cannot read ({error.strerror or error})"
    try:
        load_image(data, limits=limits, name=str(path))
    except ImageError as error:
        return None, error.reason
    return hashlib.sha256(data).hexdigest(), None


def _duplicate_captions(records: Sequence[CaptionRecord]) -> dict[str, Any]:
    per_image = Counter((record.image_id, " ".join(caption_words(record.caption))) for record in records)
    repeated = [(key, times) for key, times in per_image.items() if times > 1]
    images_per_caption = defaultdict(set)
    for record in records:
        images_per_caption[" ".join(caption_words(record.caption))].add(record.image_id)
    return {
        "repeated_on_one_image": sum(times - 1 for _, times in repeated),
        "examples": [
            {"image_id": image_id, "caption": text, "times": times} for (image_id, text), times in repeated[:5]
        ],
        "captions_on_several_images": sum(len(ids) > 1 for ids in images_per_caption.values()),
    }


def _shared_between_splits(records: Sequence[CaptionRecord], digests: dict[Path, str]) -> list[dict[str, Any]]:
    """Images in more than one split: by image id, by file, or by identical bytes under different names."""
    by_id: dict[str, set[str]] = defaultdict(set)
    by_file: dict[Path, set[str]] = defaultdict(set)
    first_path: dict[str, Path] = {}
    # The file each path names, absolute: "a.jpg" and "/data/a.jpg" (a table mixing both) are one file in two
    # splits, which compared as written only opening the images found, and then as "same bytes".
    files: dict[Path, Path] = {}
    written: dict[Path, Path] = {}  # a file -> the path it was first written as, to name it
    for record in records:
        by_id[record.image_id].add(_split_of(record))
        if record.image_path not in files:
            files[record.image_path] = Path(os.path.abspath(record.image_path))
        file = files[record.image_path]
        by_file[file].add(_split_of(record))
        written.setdefault(file, record.image_path)
        first_path.setdefault(record.image_id, record.image_path)
    shared = [
        {"image": str(first_path[image_id]), "image_id": image_id, "splits": sorted(splits), "by": "image id"}
        for image_id, splits in by_id.items()
        if len(splits) > 1
    ]
    reported = {entry["image"] for entry in shared}
    shared += [
        {"image": str(written[file]), "splits": sorted(splits), "by": "file"}
        for file, splits in by_file.items()
        if len(splits) > 1 and str(written[file]) not in reported
    ]
    by_bytes: dict[str, set[str]] = defaultdict(set)
    files_by_bytes: dict[str, set[Path]] = defaultdict(set)
    for path, file in files.items():
        if path in digests:
            by_bytes[digests[path]] |= by_file[file]
            files_by_bytes[digests[path]].add(file)
    shared += [
        {
            "image": ", ".join(sorted(str(written[file]) for file in files_by_bytes[digest])),
            "splits": sorted(splits),
            "by": "same bytes",
        }
        for digest, splits in by_bytes.items()
        if len(splits) > 1 and len(files_by_bytes[digest]) > 1
    ]
    return shared


def _leaks_of(
    records: Sequence[CaptionRecord],
    all_records: Sequence[CaptionRecord],
    digests: dict[Path, str],
    limits: ImageLimits,
) -> list[dict[str, Any]]:
    """The images of ``records`` (one split, say) that are also in another split of ``all_records``: by id, by file,
    or by bytes. For the last, the other splits' files of the same size as an opened one are read and hashed (not
    decoded): identical bytes have identical sizes, so the rest cannot match."""
    checked = {_split_of(record) for record in records}
    sizes = {size for size in (_image_size(path, limits) for path in digests) if size is not None}
    others = dict.fromkeys(record.image_path for record in all_records if record.image_path not in digests)
    all_digests = dict(digests)
    for path in others:
        if _image_size(path, limits) in sizes:
            digest = _file_digest(path, limits)
            if digest is not None:
                all_digests[path] = digest
    return [leak for leak in _shared_between_splits(all_records, all_digests) if checked & set(leak["splits"])]


def _image_size(path: Path, limits: ImageLimits) -> int | None:
    """The size of an image's bytes: of a regular file, or of a sample in a shard (a tar member's from the shard's
    index, a Parquet row's by reading it: a shard's byte copies in another split were never looked for); None for
    anything else (a file gone, a damaged member)."""
    found = split_member(path)
    if found is None:
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None
    container, member = found
    try:
        if container.suffix.lower() == ".tar":
            sample = tar_index(container).by_member.get(member)
            return sample.size if sample is not None and not sample.damaged else None
        data = read_member(path, limits.max_bytes)
    except (InputError, OSError):
        return None
    return len(data) if data else None


def _file_digest(path: Path, limits: ImageLimits) -> str | None:
    try:
        data = read_member(path, limits.max_bytes)  # None: not a sample inside a shard
        if data is None:
            with path.open("rb") as handle:
                data = handle.read(limits.max_bytes + 1)
    except (InputError, OSError):
        return None
    return hashlib.sha256(data).hexdigest()


def _record_outcome(
    path: Path,
    digest: str | None,
    problem: str | None,
    digests: dict[Path, str],
    missing: list[str],
    unreadable: list[dict[str, str]],
) -> None:
    if digest is not None:
        digests[path] = digest
    elif problem == "missing":
        missing.append(str(path))
    else:
        unreadable.append({"image": str(path), "reason": problem or ""})


def check_records(
    records: Sequence[CaptionRecord],
    *,
    all_records: Sequence[CaptionRecord] | None = None,
    open_images: bool = True,
    limits: ImageLimits = DEFAULT_LIMITS,
    workers: int = 4,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The check report of ``records``; ``all_records`` (default: the same) is what split leaks are sought in."""
    splits: dict[str, list[CaptionRecord]] = defaultdict(list)
    for record in records:
        splits[_split_of(record)].append(record)
    order = [name for name in ("train", "val", "test") if name in splits] + sorted(
        set(splits) - {"train", "val", "test"}
    )
    missing: list[str] = []
    unreadable: list[dict[str, str]] = []
    digests: dict[Path, str] = {}
    if open_images:
        paths = list(dict.fromkeys(record.image_path for record in records))
        # Threads: Pillow releases the GIL while it decodes, and reading files waits on the disk.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            outcomes = pool.map(lambda path: _inspect_image(path, limits), paths)
            for path, (digest, problem) in zip(paths, outcomes, strict=True):
                _record_outcome(path, digest, problem, digests, missing, unreadable)
                if advance is not None:
                    advance(1)
    same_bytes: dict[str, list[str]] = defaultdict(list)
    for path, digest in digests.items():
        same_bytes[digest].append(str(path))
    if all_records is None:
        shared = _shared_between_splits(records, digests)
    else:
        shared = _leaks_of(records, all_records, digests, limits)
    return {
        "splits": {name: split_counts(splits[name]) for name in order},
        "total": split_counts(records),
        "images_checked": open_images,
        "missing_images": missing,
        "unreadable_images": unreadable,
        "images_in_several_splits": shared,
        "duplicate_images": [paths for paths in same_bytes.values() if len(paths) > 1],
        "duplicate_captions": _duplicate_captions(records),
        "long_captions": _long_captions(records),
        "errors": len(missing) + len(unreadable) + len(shared),
    }
