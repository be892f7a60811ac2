"""Join the output parts of a sharded captioning run into one result, checking that every input is there once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captionkit.errors import InputError
from captionkit.files import UTF16_REASON, is_utf16
from captionkit.jobs.merge_index import SHOWN, MergeIndex, Names
from captionkit.jobs.outputs import Located, Record, iter_located_records
from captionkit.jobs.parquet_records import journal_owner, journal_path
from captionkit.jobs.run_settings import differing, kept_settings, settings_path, shown
from captionkit.jobs.sharding import part_of

SUFFIX_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".json": "json", ".parquet": "parquet"}


@dataclass
class MergeResult:
    """The merged records (:meth:`records`, a stream from the index) and everything found wrong on the way (each
    finding names images or parts). Close it (or use it in a ``with``) to drop the index."""

    index: MergeIndex
    expected: bool  # whether the inputs were given: records come in their order
    parts: int = 0  # distinct parts read (a part named twice, or by its journal too, is read once)
    count: int = 0  # records kept, one per image
    errors: int = 0  # of which error records
    duplicates: Names = field(default_factory=Names)  # images met more than once; one record kept
    missing: Names = field(default_factory=Names)  # inputs with no record (only when the inputs are known)
    unexpected: Names = field(default_factory=Names)  # records of images that are not among the inputs
    missing_parts: list[str] = field(default_factory=list)  # "K/N" of parts absent from the list
    repeated_parts: list[str] = field(default_factory=list)  # "K/N (FILE, FILE)" of parts named by several files
    shard_counts: list[int] = field(default_factory=list)  # the N of each run the parts come from
    torn: list[str] = field(default_factory=list)  # parts whose unfinished last line was left out

    def records(self) -> Iterator[Record]:
        return self.index.records(self.expected)

    @property
    def complete(self) -> bool:
        """Every expected input and part is there, and no part lost an unfinished line (``merge`` exits 2 if not)."""
        return not (self.missing or self.missing_parts or len(self.shard_counts) > 1 or self.torn)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> MergeResult:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def format_of(path: Path, default: str = "jsonl") -> str:
    return SUFFIX_FORMATS.get(path.suffix.lower(), default)


def merge_parts(parts: Sequence[Path], inputs: Iterable[str] | None = None, default_fmt: str = "jsonl") -> MergeResult:
    """Read ``parts`` and join their records, one per image, in an index on disk (memory does not grow with them).

    A duplicate keeps its captioned record over an error record, else the first met. With ``inputs`` (the
    records' ``image`` values a full run would give, read as a stream), records come in that order and missing
    inputs are counted; without, records are sorted by image. Part names (``.part-K-of-N``) are checked for gaps and
    mixed N. A Parquet part's journal (what an interrupted run leaves, ``OUT.part-K-of-N.parquet.partial.jsonl``)
    counts as part K.
    """
    # An interrupted Parquet part is its journal: it stands for the part (read with its file, if one was written).
    # A file named twice (``out/p`` and ``./out/p``, a link to it) is one part, read once.
    distinct: dict[Path, Path] = {}
    for part in parts:
        owner = journal_owner(part) or part
        distinct.setdefault(owner.resolve(), owner)
    parts = list(distinct.values())
    _check_same_settings(parts)
    result = MergeResult(MergeIndex(), inputs is not None, len(parts))
    try:
        for part in parts:
            fmt = format_of(part, default_fmt)
            _check_not_blank(part, fmt)
            _check_not_utf16(part, fmt)
            records, tail = iter_located_records(part, fmt)
            if tail:  # named by the file that holds the line: a Parquet part's is its journal
                result.torn.append(str(journal_path(part) if fmt == "parquet" else part))
            result.index.add(_result_records(records, part))
        if inputs is not None:
            result.index.expect(inputs)
            result.missing, result.unexpected = result.index.missing(), result.index.unexpected()
    except BaseException:
        result.close()
        raise
    result.duplicates = result.index.duplicates()
    result.count, result.errors = result.index.counts()
    _check_part_names(parts, result)
    return result


def _check_same_settings(parts: Sequence[Path]) -> None:
    """Parts captioned with another model or decoding would mix two kinds of captions in one result, as a resumed
    run would: refuse them before reading any. A part whose run kept no settings beside it (copied alone) is not
    compared."""
    first: tuple[Path, dict[str, Any]] | None = None
    for part in parts:
        settings = kept_settings(part)
        if settings is None:
            continue
        if first is None:
            first = (part, settings)
            continue
        differ = differing(first[1], settings)
        if differ:
            raise InputError(
                part,
                f"captioned with {shown(settings, differ)}, but {first[0]} with {shown(first[1], differ)}: merge "
                f"parts of runs with the same settings (deleting {settings_path(part).name} merges it unchecked)",
            )


def _check_not_blank(part: Path, fmt: str) -> None:
    """A JSON or CSV part of 0 bytes is cut off: a caption run writes ``[]`` or the header row even for a shard with
    no images (an empty JSON lines part, though, is a shard with none)."""
    if fmt in ("json", "csv") and part.is_file() and part.stat().st_size == 0:
        written = "[]" if fmt == "json" else "a header row"
        raise InputError(
            part,
            f"empty file: caption writes {written} even for no images, so this {fmt} part is damaged or its run was "
            "cut off: caption its shard again",
        )


def _check_not_utf16(part: Path, fmt: str) -> None:
    """A text part saved as UTF-16 (a CSV round trip through Excel's "Unicode Text") would read as garbage from its
    first byte and fail on some later line for a reason that names everything but its encoding."""
    if fmt == "parquet":
        return
    try:
        with part.open("rb") as file:
            head = file.read(2)
    except OSError:
        return  # the reader names what is wrong with the file
    if is_utf16(head):
        raise InputError(part, UTF16_REASON)


def _result_records(records: Iterable[Located], part: Path) -> Iterator[Record]:
    """The records of ``part``, each checked to be a result: an image with its caption(s) or its error. Anything else
    (a table that is not captionkit's, a row cut short) would be counted as an image done with nothing to show."""
    for where, record in records:
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise InputError(part, f"{where} has no image")
        # A null is no more a caption than a missing key: counting it would pass an image as done with nothing.
        if all(record.get(name) is None for name in ("caption", "captions", "error")):
            raise InputError(part, f"{where} ({image[:60]!r}) has neither a caption nor an error")
        yield record


def _check_part_names(parts: Sequence[Path], result: MergeResult) -> None:
    files: dict[tuple[int, int], list[str]] = {}
    for part in parts:
        shard = part_of(part)
        if shard is not None:
            files.setdefault((shard.count, shard.index), []).append(str(part))
    counts = sorted({count for count, _ in files})
    result.shard_counts = counts
    for count in counts:
        result.missing_parts.extend(f"{index}/{count}" for index in range(count) if (count, index) not in files)
    # Two files of one part are two runs' (or a copy's): their images are met twice, and only the files say why.
    result.repeated_parts = [
        f"{index}/{count} ({', '.join(names)})" for (count, index), names in sorted(files.items()) if len(names) > 1
    ]


def some(names: Sequence[str] | Names, limit: int = SHOWN) -> str:
    """``a, b, c and 7 more``: a list short enough for one line."""
    shown, count = (names.shown, names.count) if isinstance(names, Names) else (names, len(names))
    return ", ".join(shown[:limit]) + (f" and {count - limit} more" if count > limit else "")
