"""Join the output parts of a sharded captioning run into one result, checking that every input is there once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from captionkit.jobs.outputs import Record, read_records_and_tail
from captionkit.jobs.parquet_records import journal_owner
from captionkit.jobs.sharding import part_of

SUFFIX_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".json": "json", ".parquet": "parquet"}


@dataclass
class MergeResult:
    """The merged records and everything found wrong on the way (each list names images or parts)."""

    records: list[Record]
    duplicates: list[str] = field(default_factory=list)  # images met more than once; one record kept
    missing: list[str] = field(default_factory=list)  # inputs with no record (only when the inputs are known)
    unexpected: list[str] = field(default_factory=list)  # records of images that are not among the inputs
    missing_parts: list[str] = field(default_factory=list)  # "K/N" of parts absent from the list
    shard_counts: list[int] = field(default_factory=list)  # the N of each run the parts come from
    torn: list[str] = field(default_factory=list)  # parts whose unfinished last line was left out

    @property
    def errors(self) -> int:
        return sum("error" in record for record in self.records)

    @property
    def complete(self) -> bool:
        """Every expected input and part is there, and no part lost an unfinished line (``merge`` exits 2 if not)."""
        return not (self.missing or self.missing_parts or len(self.shard_counts) > 1 or self.torn)


def format_of(path: Path, default: str = "jsonl") -> str:
    return SUFFIX_FORMATS.get(path.suffix.lower(), default)


def merge_parts(parts: Sequence[Path], inputs: Sequence[str] | None = None, default_fmt: str = "jsonl") -> MergeResult:
    """Read ``parts`` and join their records, one per image.

    A duplicate keeps its captioned record over an error record, else the first met. With ``inputs`` (the
    records' ``image`` values a full run would give), records come in that order and missing inputs are listed;
    without, records are sorted by image. Part names (``.part-K-of-N``) are checked for gaps and mixed N. A Parquet
    part's journal (what an interrupted run leaves, ``OUT.part-K-of-N.parquet.partial.jsonl``) counts as part K.
    """
    # An interrupted Parquet part is its journal: it stands for the part (read with its file, if one was written).
    parts = list(dict.fromkeys(journal_owner(part) or part for part in parts))
    kept: dict[str, Record] = {}
    duplicates: dict[str, None] = {}
    torn: list[str] = []
    for part in parts:
        records, tail = read_records_and_tail(part, format_of(part, default_fmt))
        if tail:
            torn.append(str(part))
        for record in records:
            image = str(record.get("image", ""))
            if image in kept:
                duplicates[image] = None
                if "error" in kept[image] and "error" not in record:
                    kept[image] = record
            else:
                kept[image] = record
    result = MergeResult([], list(duplicates), torn=torn)
    _check_part_names(parts, result)
    if inputs is None:
        result.records = [kept[image] for image in sorted(kept)]
        return result
    wanted = dict.fromkeys(inputs)
    result.missing = [image for image in wanted if image not in kept]
    result.unexpected = sorted(image for image in kept if image not in wanted)
    result.records = [kept[image] for image in wanted if image in kept] + [kept[i] for i in result.unexpected]
    return result


def _check_part_names(parts: Sequence[Path], result: MergeResult) -> None:
    shards = [shard for shard in map(part_of, parts) if shard is not None]
    counts = sorted({shard.count for shard in shards})
    result.shard_counts = counts
    for count in counts:
        present = {shard.index for shard in shards if shard.count == count}
        result.missing_parts.extend(f"{index}/{count}" for index in range(count) if index not in present)


def some(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c and 7 more``: a list short enough for one line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
