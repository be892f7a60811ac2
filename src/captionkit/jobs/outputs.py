"""Result records of a captioning run, written as JSONL, CSV, JSON or Parquet, and read back for ``--resume``.

A record is ``{"image", "caption", "score"}`` (plus ``"captions"`` for n-best) or ``{"image", "error"}``.
JSONL and CSV are appended and flushed batch by batch, so an interrupted run keeps what it finished (a write
cut short leaves at most one unfinished last line, which reading skips and ``--resume`` removes; ``--resume`` first
checks that a CSV has the header it writes and no quoted field left open); JSON (one
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
from typing import Any, BinaryIO, TextIO

from captionkit.errors import InputError
from captionkit.files import atomic_writer, cannot_write
from captionkit.jobs.json_array import JsonArrayWriter, iter_json_array
from captionkit.jobs.parquet_records import check_utf8, journal_path, read_parquet_records, write_parquet_records
from captionkit.jsontext import parse_json

FORMATS = ("jsonl", "csv", "json", "parquet")
CSV_FIELDS = ("image", "caption", "score", "error")

Record = dict[str, Any]
Located = tuple[str, Record]  # where a record is in its file ("line 3", "record 2", "row 7"), and the record
# File names that are not valid UTF-8 reach Python as lone surrogates ("caf\udce9.jpg"). CSV writes their
# original bytes back (as the file system has them) and reads them back the same way; JSON escapes them instead.
PATH_ERRORS = "surrogateescape"
TAIL_CHUNK = 1 << 16  # bytes read at a time, looking back for the last newline or copying


def to_json(value: Any, indent: int | None = None) -> str:
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
    located, torn = iter_located_records(path, fmt)
    return (record for _, record in located), torn


def iter_located_records(path: Path, fmt: str) -> tuple[Iterator[Located], str]:
    """:func:`iter_records` with where each record is in its file (``line 3``, ``record 2``, ``row 7``), for errors
    about one record that the reader of the file can find."""
    if fmt == "parquet":  # the file's rows, then those an interrupted run left in its journal
        journal = journal_path(path)
        lines, torn = iter_located_records(journal, "jsonl")
        rows = _numbered(read_parquet_records(path), "row") if path.exists() else iter(())
        return itertools.chain(rows, ((f"{where} of {journal.name}", record) for where, record in lines)), torn
    if not path.exists():
        return iter(()), ""
    if fmt == "json":
        return _checked(_numbered(iter_json_array(path), "record"), path), ""
    cut, tail = _cut_and_tail(path, fmt)
    if fmt == "jsonl":
        return _checked(_jsonl_records(path, cut, tail), path), "" if _whole_record(tail) else tail
    return _csv_records(_lines(path, cut), path), tail


def _numbered(records: Iterable[Any], noun: str) -> Iterator[tuple[str, Any]]:
    return ((f"{noun} {number}", record) for number, record in enumerate(records, start=1))


def _checked(records: Iterable[tuple[str, Any]], path: Path) -> Iterator[Located]:
    for where, record in records:
        if not isinstance(record, dict):
            raise InputError(path, f"{where} is not a JSON object")
        yield where, record


def _jsonl_records(path: Path, cut: int, tail: str) -> Iterator[tuple[str, Any]]:
    """The JSON documents of the first ``cut`` bytes' lines, by line number, and ``tail`` if it is a whole record."""
    number = 0
    for number, line in enumerate(_lines(path, cut), start=1):
        if number == 1:
            line = line.removeprefix("\ufeff")  # the BOM some editors start a file with
        if line.strip():
            yield f"line {number}", _parse(line, path, "jsonl")
    if tail and _whole_record(tail):
        yield f"line {number + 1}", _parse(tail, path, "jsonl")


def _csv_rows(lines: Iterable[str], path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of each row that is not blank. The csv module's own reading: a caption may hold
    \x1c, \x85 or \u2028, which splitlines() breaks at, or a quoted newline."""
    reader = csv.reader(lines)
    start = 1
    try:
        for fields in reader:
            if fields:
                yield start, fields
            start = reader.line_num + 1
    except csv.Error as error:
        raise InputError(path, f"not valid csv ({error})") from None


def _csv_records(lines: Iterable[str], path: Path) -> Iterator[Located]:
    """The rows under the header as records; a row with more or fewer fields than the header is an error, as the
    columns it would fill are a guess."""
    rows = _csv_rows(lines, path)
    header = next(rows, None)
    if header is None:
        return
    names = _header_names(header[1])
    for line, fields in rows:
        if len(fields) != len(names):
            reason = f"line {line} has {len(fields)} fields, the header {len(names)}"
            raise InputError(path, f"not valid csv ({reason})")
        yield f"line {line}", _csv_record(dict(zip(names, fields, strict=True)))


class _CountedLines:
    """The lines of a binary file, decoded, for the csv module, counting the bytes taken: a row the reader gives
    after the file ran out is one that the end of the file cut inside a quoted field."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.taken = 0  # bytes of the lines given so far
        self.last = b""  # the last line given
        self.ran_out = False

    def __iter__(self) -> _CountedLines:
        return self

    def __next__(self) -> str:
        line = self._handle.readline()
        if not line:
            self.ran_out = True
            raise StopIteration
        self.taken += len(line)
        self.last = line
        return line.decode("utf-8", PATH_ERRORS)


def _csv_end(path: Path) -> tuple[int, int]:
    """``(cut, unclosed)``: the bytes of ``path`` up to the end of its last whole row (ended by a newline outside
    quotes), and the line of a row whose quoted field is still open where the file ends with a newline (0 if none).

    The last newline is not the end of the last row when a quoted caption holds one, so the csv module decides. A
    torn write ends without a newline and is dropped; a file that ends with one inside quotes was not torn but is
    broken, and appending to it would put the new rows inside that field."""
    cut, start = 0, 1
    with path.open("rb") as handle:
        lines = _CountedLines(handle)
        reader = csv.reader(lines)
        try:
            for _ in reader:
                if lines.ran_out:
                    return cut, start if lines.last.endswith(b"\n") else 0
                if lines.last.endswith(b"\n"):
                    cut = lines.taken
                start = reader.line_num + 1
        except csv.Error as error:
            raise InputError(path, f"not valid csv ({error})") from None
    return cut, 0


def _cut_and_tail(path: Path, fmt: str) -> tuple[int, str]:
    """``(cut, tail)``: the bytes of the whole lines (CSV: rows) at the start of ``path``, and the text after them."""
    if fmt != "csv":
        return _torn_tail(path)
    return _csv_cut_and_tail(path, _csv_end(path))


def _csv_cut_and_tail(path: Path, end: tuple[int, int]) -> tuple[int, str]:
    """:func:`_cut_and_tail` of a CSV whose :func:`_csv_end` is ``end``; an error when a quoted field never closes."""
    cut, unclosed = end
    if unclosed:
        raise InputError(path, f"not valid csv (the quoted field of the row on line {unclosed} is never closed)")
    return cut, _text_from(path, cut)


def _text_from(path: Path, start: int) -> str:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read().decode("utf-8", PATH_ERRORS)


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
    if not line:
        return False
    try:
        return isinstance(parse_json(line, "last line", non_finite=True), dict)
    except InputError:
        return False


def _torn_tail(path: Path) -> tuple[int, str]:
    """``(cut, tail)``: the bytes of ``path`` up to its last newline, and the text after it (read from the end)."""
    with path.open("rb") as handle:
        cut = end_of_last_line(handle, path.stat().st_size)
    return cut, _text_from(path, cut)


def end_of_last_line(handle: BinaryIO, size: int) -> int:
    """Where the last whole line among the first ``size`` bytes of ``handle`` ends: just past its last newline (0 if
    there is none), found reading back from ``size`` a chunk at a time."""
    end = size
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        handle.seek(start)
        newline = handle.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def repair_torn_tail(path: Path, fmt: str) -> str:
    """Make ``path`` fit to append to: check what the records will be appended to (CSV: the header is the columns
    written, no quoted field left open), then drop a torn last line (returned), or add the missing newline after a
    complete one; the file is replaced whole, streamed, and left as it was when a check fails. Nothing to do for
    JSON, which is rewritten whole."""
    if fmt == "parquet":
        return repair_torn_tail(journal_path(path), "jsonl")
    cut, tail, whole = _appendable_end(path, fmt)
    if not tail:
        return ""
    _replace_with_prefix(path, path.stat().st_size if whole else cut, b"\n" if whole else b"")
    return "" if whole else tail


def check_appendable(path: Path, fmt: str) -> None:
    """:func:`repair_torn_tail`'s checks, the file left as it is, so that a run can refuse to resume before it
    changes anything."""
    _appendable_end(journal_path(path) if fmt == "parquet" else path, "jsonl" if fmt == "parquet" else fmt)


def _appendable_end(path: Path, fmt: str) -> tuple[int, str, bool]:
    """``(cut, tail, whole)`` of a JSONL or CSV results file, after checking that records may be appended to it: the
    bytes of its whole lines (rows), the text after them, and whether that text is a whole JSONL record whose newline
    is missing. Nothing for JSON or a file that is not there."""
    if fmt == "json" or not path.exists():
        return 0, "", False
    if fmt == "csv":
        end = _csv_end(path)  # one pass over the file for the header's check and the cut
        _check_csv_header(path, end[0])
        cut, tail = _csv_cut_and_tail(path, end)
    else:
        _check_jsonl_start(path)
        cut, tail = _torn_tail(path)
    return cut, tail, fmt == "jsonl" and _whole_record(tail)


def _check_csv_header(path: Path, cut: int) -> None:
    """Rows are appended under the header already there (in the first ``cut`` bytes, the file's whole rows): one that
    is not :data:`CSV_FIELDS` would misname them. A file whose only line is torn has no header yet (the repair
    empties it and the writer writes one)."""
    header = next(_csv_rows(_lines(path, cut), path), None)
    if (cut or header) and (header is None or _header_names(header[1]) != list(CSV_FIELDS)):
        found = ",".join(header[1]) if header else ""
        shown = found if len(found) <= 60 else found[:57] + "..."
        raise InputError(path, f"not captionkit csv results (header {shown!r}, expected {','.join(CSV_FIELDS)!r})")


def _header_names(fields: list[str]) -> list[str]:
    """A CSV header's column names, without the BOM Excel's "CSV UTF-8" starts the file with."""
    return [fields[0].removeprefix("\ufeff"), *fields[1:]]


def _check_jsonl_start(path: Path) -> None:
    """Every record line starts with "{": a file that does not (an image, a list of paths, a JSON array) is no
    results file, and its last line must not be dropped as torn before the records fail to read."""
    with path.open("rb") as handle:
        while (chunk := handle.read(TAIL_CHUNK)) and not chunk.strip():
            pass
    start = chunk.lstrip()[:1]
    if start and start != b"{":
        raise InputError(path, f"not captionkit jsonl results (it starts with {start!r}, not a JSON object)")


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


def _csv_record(row: dict[str, str]) -> Record:
    record: Record = {key: value for key, value in row.items() if value != ""}
    if "score" in record:
        with contextlib.suppress(ValueError):  # else keep what the file says; merge passes it through
            record["score"] = float(record["score"])
        if "error" not in record:  # a scored row was captioned: CSV cannot tell an empty caption from none
            record.setdefault("caption", "")
    return record


@contextlib.contextmanager
def _writing(path: Path | None) -> Iterator[None]:
    """An OSError writing ``path`` (a full disk, a directory removed midway, a file system that refuses the name) as
    one line naming the file, not a traceback; the records flushed before it stay there for ``--resume``."""
    try:
        yield
    except OSError as error:
        if path is None:  # stdout: a closed pipe is the reader's doing, not a file to name
            raise
        raise InputError(path, cannot_write(error)) from None


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
        self.count = 0  # records written, a JSON array's ``existing`` ones included
        self._array: JsonArrayWriter | None = None
        self._handle: TextIO | None = None
        with _writing(path):
            self._open(existing)

    def _open(self, existing: Iterable[Record]) -> None:
        path, fmt = self.path, self.fmt
        if fmt == "json":
            self._array = JsonArrayWriter(path, to_json)
            for record in existing:
                self._array.write(record)
                self.count += 1
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
        with _writing(self.path):
            self._write(records)

    def _write(self, records: Iterable[Record]) -> None:
        if self._array is not None:
            for record in records:
                self._array.write(record)
                self.count += 1
            return
        assert self._handle is not None
        for record in records:
            if self.fmt == "parquet" and self.path is not None:
                check_utf8(record, self.path)
            if self.fmt in ("jsonl", "parquet"):
                self._handle.write(to_json(record) + "\n")
            else:
                csv.writer(self._handle).writerow([record.get(name, "") for name in CSV_FIELDS])
            self.count += 1
        self._handle.flush()

    def close(self) -> None:
        with _writing(self.path):
            if self._array is not None:
                self._array.close()
            elif self._handle is not None and self._handle is not sys.stdout:
                self._handle.close()
                if self.fmt == "parquet" and self.path is not None:
                    write_parquet_records(self.path)

    def abort(self) -> None:
        """Stop without finishing, after a failure: close the file as it is, leave a Parquet journal unconverted and a
        JSON array's staging file unplaced (deleted). The caller removes what it wrote to ``path``."""
        if self._array is not None:
            self._array.abort()
        elif self._handle is not None and self._handle is not sys.stdout:
            self._handle.close()
