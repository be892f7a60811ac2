"""Result records of a captioning run, written as JSONL, CSV, JSON or Parquet, and read back for ``--resume``.

A record is ``{"image", "caption", "score"}`` (plus ``"captions"`` for n-best) or ``{"image", "error"}``.
JSONL and CSV are appended and flushed batch by batch, so an interrupted run keeps what it finished (a write
cut short leaves at most one unfinished last line, which reading skips and ``--resume`` removes); JSON (one
array) goes to a staging file, record by record, that replaces the output whole at the end
(:mod:`captionkit.jobs.json_array`). Reading is a stream too: no format holds every record in memory. Parquet goes
through a JSONL journal while the run goes (see :mod:`captionkit.jobs.parquet_records`).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from captionkit.errors import InputError
from captionkit.files import atomic_writer
from captionkit.jobs.json_array import JsonArrayWriter, iter_json_array
from captionkit.jobs.parquet_records import check_utf8, journal_path, read_parquet_records, write_parquet_records
from captionkit.jsontext import parse_json

FORMATS = ("jsonl", "csv", "json", "parquet")
CSV_FIELDS = ("image", "caption", "score", "error")

Record = dict[str, Any]
# File names that are not valid UTF-8 reach Python as lone surrogates ("caf\udce9.jpg"). CSV writes their
# original bytes back (as the file system has them) and reads them back the same way; JSON escapes them instead.
PATH_ERRORS = "surrogateescape"
TAIL_CHUNK = 1 << 16  # bytes read at a time, looking back for the last newline or copying


def _to_json(value: Any, indent: int | None = None) -> str:
    """JSON text with non-ASCII kept readable, or escaped as ``\\udce9`` where a name is not valid UTF-8."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, indent=indent)
    return text


def read_records(path: Path, fmt: str) -> list[Record]:
    """Records already in ``path`` as a list; an empty list when the file does not exist (see :func:`iter_records`)."""
    return read_records_and_tail(path, fmt)[0]


def read_records_and_tail(path: Path, fmt: str) -> tuple[list[Record], str]:
    """``(records, torn)``: :func:`iter_records` as a list."""
    records, torn = iter_records(path, fmt)
    return list(records), torn


def iter_records(path: Path, fmt: str) -> tuple[Iterator[Record], str]:
    """``(records, torn)``: the records in ``path``, read one at a time, and its unfinished last line, which is left
    out ('' if none). No records when the file does not exist; anything else invalid is an error naming the file, met
    as the records are read.

    Records are written whole lines at a time, so a JSONL/CSV last line without its newline is a torn write, unless
    (JSONL only) it parses as a whole JSON object: a truncated object never does, while a truncated CSV row can.
    """
    if fmt == "parquet":  # the file's rows, then those an interrupted run left in its journal
        journal, torn = iter_records(journal_path(path), "jsonl")
        return itertools.chain(read_parquet_records(path) if path.exists() else (), journal), torn
    if not path.exists():
        return iter(()), ""
    if fmt == "json":
        return _checked(iter_json_array(path), path), ""
    cut, tail = _torn_tail(path)
    if fmt == "jsonl":
        records = (_parse(line, path, fmt) for line in _lines(path, cut) if line.strip())
        if tail and _whole_record(tail):
            records, tail = itertools.chain(records, [_parse(tail, path, fmt)]), ""
        return _checked(records, path), tail
    return _csv_records(_lines(path, cut), path), tail


def _checked(records: Iterable[Any], path: Path) -> Iterator[Record]:
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise InputError(path, f"record {number} is not a JSON object")
        yield record


def _csv_records(lines: Iterable[str], path: Path) -> Iterator[Record]:
    # The csv module's own reading: a caption may hold \x1c, \x85 or \u2028, which splitlines() breaks at.
    try:
        yield from (_csv_record(row) for row in csv.DictReader(lines))
    except csv.Error as error:
        raise InputError(path, f"not valid csv ({error})") from None


def _lines(path: Path, length: int) -> Iterator[str]:
    """The lines (split at ``\n`` only) of the first ``length`` bytes of ``path``, which end with a newline."""
    with path.open("rb") as handle:
        left = length
        for line in handle:
            if left <= 0:
                return
            left -= len(line)
            yield line.decode("utf-8", PATH_ERRORS)


def _parse(text: str, path: Path, fmt: str) -> Any:
    """A JSON document of results file ``path``: anything malformed or hostile is one line naming the file."""
    try:
        return parse_json(text, path, non_finite=True)
    except InputError as error:
        raise InputError(path, f"not valid {fmt} ({error.reason})") from None


def _whole_record(line: str) -> bool:
    """Whether a JSONL last line without its newline is a whole record: a truncated object never parses."""
    try:
        return isinstance(parse_json(line, "last line", non_finite=True), dict)
    except InputError:
        return False


def _torn_tail(path: Path) -> tuple[int, str]:
    """``(cut, tail)``: the bytes of ``path`` up to its last newline, and the text after it (read from the end)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        cut, end = size, size
        while end > 0:
            start = max(0, end - TAIL_CHUNK)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            end = cut = start
        handle.seek(cut)
        tail = handle.read().decode("utf-8", PATH_ERRORS)
    return cut, tail


def repair_torn_tail(path: Path, fmt: str) -> str:
    """Make ``path`` end with a whole line before appending to it: drop a torn last line (returned), or add the
    missing newline after a complete one; the file is replaced whole, streamed. Nothing to do for JSON, which is
    rewritten whole."""
    if fmt == "parquet":
        return repair_torn_tail(journal_path(path), "jsonl")
    if fmt == "json" or not path.exists():
        return ""
    cut, tail = _torn_tail(path)
    if not tail:
        return ""
    whole = fmt == "jsonl" and _whole_record(tail)
    _replace_with_prefix(path, path.stat().st_size if whole else cut, b"\n" if whole else b"")
    return "" if whole else tail


def _replace_with_prefix(path: Path, length: int, suffix: bytes) -> None:
    """Replace ``path`` atomically by its first ``length`` bytes and ``suffix``, copied a chunk at a time."""
    with path.open("rb") as source, atomic_writer(path) as target:
        left = length
        while left > 0 and (chunk := source.read(min(left, TAIL_CHUNK))):
            target.write(chunk)
            left -= len(chunk)
        target.write(suffix)


def discard_output(path: Path, fmt: str) -> None:
    """Remove what an earlier run wrote to ``path`` (and, for Parquet, its journal) before a fresh run."""
    path.unlink(missing_ok=True)
    if fmt == "parquet":
        journal_path(path).unlink(missing_ok=True)


def _csv_record(row: dict[str, str | None]) -> Record:
    record: Record = {key: value for key, value in row.items() if value not in ("", None)}
    if "score" in record:
        with contextlib.suppress(ValueError):  # else keep what the file says; merge passes it through
            record["score"] = float(record["score"])
    return record


class RecordWriter:
    """Writes records to a file (or stdout) in one of :data:`FORMATS`, as they come: none is kept in memory."""

    def __init__(self, path: Path | None, fmt: str, existing: Iterable[Record] = ()) -> None:
        """``existing``: for JSON, the records the array starts with (a resumed run's, read again as a stream);
        the other formats append to the file."""
        if fmt not in FORMATS:
            raise InputError("--format", f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
        if fmt == "parquet" and path is None:
            raise InputError("--format", "parquet output needs --output (a .parquet file)")
        self.path, self.fmt = path, fmt
        self._array: JsonArrayWriter | None = None
        self._handle: TextIO | None = None
        if fmt == "json":
            self._array = JsonArrayWriter(path, _to_json)
            for record in existing:
                self._array.write(record)
            return
        if path is None:
            self._handle = sys.stdout
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists() or path.stat().st_size == 0
            target = journal_path(path) if fmt == "parquet" else path
            self._handle = target.open("a", encoding="utf-8", errors=PATH_ERRORS, newline="")
            if fmt == "csv" and fresh:
                csv.writer(self._handle).writerow(CSV_FIELDS)
        if fmt == "csv" and path is None:
            csv.writer(self._handle).writerow(CSV_FIELDS)

    def write(self, records: Iterable[Record]) -> None:
        """Append ``records`` (Parquet: to the journal, which :meth:`close` turns into the file)."""
        if self._array is not None:
            for record in records:
                self._array.write(record)
            return
        assert self._handle is not None
        for record in records:
            if self.fmt == "parquet" and self.path is not None:
                check_utf8(record, self.path)
            if self.fmt in ("jsonl", "parquet"):
                self._handle.write(_to_json(record) + "\n")
            else:
                csv.writer(self._handle).writerow([record.get(name, "") for name in CSV_FIELDS])
        self._handle.flush()

    def close(self) -> None:
        if self._array is not None:
            self._array.close()
        elif self._handle is not None and self._handle is not sys.stdout:
            self._handle.close()
            if self.fmt == "parquet" and self.path is not None:
                write_parquet_records(self.path)
