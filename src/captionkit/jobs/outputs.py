"""Result records of a captioning run, written as JSONL, CSV, JSON or Parquet, and read back for ``--resume``.

A record is ``{"image", "caption", "score"}`` (plus ``"captions"`` for n-best) or ``{"image", "error"}``.
JSONL and CSV are appended and flushed batch by batch, so an interrupted run keeps what it finished (a write
cut short leaves at most one unfinished last line, which reading skips and ``--resume`` removes); JSON (one
array) is written whole at the end, atomically, so only JSON keeps every record in memory. Parquet goes through a
JSONL journal while the run goes (see :mod:`captionkit.jobs.parquet_records`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from captionkit.errors import InputError
from captionkit.files import write_atomic
from captionkit.jobs.parquet_records import journal_path, read_parquet_records, write_parquet_records
from captionkit.jsontext import parse_json

FORMATS = ("jsonl", "csv", "json", "parquet")
CSV_FIELDS = ("image", "caption", "score", "error")

Record = dict[str, Any]
# File names that are not valid UTF-8 reach Python as lone surrogates ("caf\udce9.jpg"). CSV writes their
# original bytes back (as the file system has them) and reads them back the same way; JSON escapes them instead.
PATH_ERRORS = "surrogateescape"


def _to_json(value: Any, indent: int | None = None) -> str:
    """JSON text with non-ASCII kept readable, or escaped as ``\\udce9`` where a name is not valid UTF-8."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, indent=indent)
    return text


def read_records(path: Path, fmt: str) -> list[Record]:
    """Records already in ``path`` (for resuming and merging); an empty list when the file does not exist.

    An unfinished last line (see :func:`split_torn_tail`) is left out; anything else invalid is an error.
    """
    return read_records_and_tail(path, fmt)[0]


def read_records_and_tail(path: Path, fmt: str) -> tuple[list[Record], str]:
    """``(records, torn)``: the records in ``path`` and the unfinished last line left out ('' if none)."""
    if fmt == "parquet":  # the file's rows, then those an interrupted run left in its journal
        journal, torn = read_records_and_tail(journal_path(path), "jsonl")
        return [*(read_parquet_records(path) if path.exists() else ()), *journal], torn
    if not path.exists():
        return [], ""
    text = path.read_text(encoding="utf-8", errors=PATH_ERRORS)
    body, torn = split_torn_tail(text, fmt)
    try:
        if fmt == "jsonl":
            records = [_parse(line, path, fmt) for line in body.split("\n") if line.strip()]
        elif fmt == "json":
            records, torn = (_parse(text, path, fmt) if text.strip() else []), ""
            if not isinstance(records, list):
                raise InputError(path, "not a results file (expected a JSON list of records)")
        else:
            # The csv module's own reading: a caption may hold \x1c, \x85 or \u2028, which splitlines() breaks at.
            return [_csv_record(row) for row in csv.DictReader(io.StringIO(body, newline=""))], torn
    except csv.Error as error:
        raise InputError(path, f"not valid {fmt} ({error})") from None
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise InputError(path, f"record {number} is not a JSON object")
    return records, torn


def _parse(text: str, path: Path, fmt: str) -> Any:
    """A JSON document of results file ``path``: anything malformed or hostile is one line naming the file."""
    try:
        return parse_json(text, path, non_finite=True)
    except InputError as error:
        raise InputError(path, f"not valid {fmt} ({error.reason})") from None


def split_torn_tail(text: str, fmt: str) -> tuple[str, str]:
    """Split JSONL/CSV ``text`` into its complete lines and an unfinished last line left by an interrupted write.

    Records are written whole lines at a time, so a last line without its newline is a torn write, unless (JSONL
    only) it parses as a whole JSON object: a truncated object never does, while a truncated CSV row can.
    """
    if fmt == "json" or not text or text.endswith("\n"):
        return text, ""
    cut = text.rfind("\n") + 1
    body, tail = text[:cut], text[cut:]
    if fmt == "jsonl":
        try:
            if isinstance(parse_json(tail, "last line", non_finite=True), dict):
                return text + "\n", ""
        except InputError:
            pass
    return body, tail


def repair_torn_tail(path: Path, fmt: str) -> str:
    """Make ``path`` end with a whole line before appending to it: drop a torn last line (returned), or add the
    missing newline after a complete one. Nothing to do for JSON, which is rewritten whole."""
    if fmt == "parquet":
        return repair_torn_tail(journal_path(path), "jsonl")
    if fmt == "json" or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors=PATH_ERRORS)
    body, torn = split_torn_tail(text, fmt)
    if body != text:
        write_atomic(path, body, errors=PATH_ERRORS)
    return torn


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
    """Writes records to a file (or stdout) in one of :data:`FORMATS`."""

    def __init__(self, path: Path | None, fmt: str, existing: Iterable[Record] = ()) -> None:
        if fmt not in FORMATS:
            raise InputError("--format", f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
        if fmt == "parquet" and path is None:
            raise InputError("--format", "parquet output needs --output (a .parquet file)")
        self.path, self.fmt = path, fmt
        # Only JSON (one array, written at the end) needs every record in memory; JSONL/CSV stream them.
        self._all: list[Record] = list(existing) if fmt == "json" else []
        self._handle: TextIO | None = None
        if fmt != "json":
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
        records = list(records)
        if self._handle is None:
            self._all.extend(records)
            return
        for record in records:
            if self.fmt in ("jsonl", "parquet"):
                self._handle.write(_to_json(record) + "\n")
            else:
                csv.writer(self._handle).writerow([record.get(name, "") for name in CSV_FIELDS])
        self._handle.flush()

    def close(self) -> None:
        if self.fmt == "json":
            text = _to_json(self._all, indent=2) + "\n"
            if self.path is None:
                sys.stdout.write(text)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, text)
        elif self._handle is not None and self._handle is not sys.stdout:
            self._handle.close()
            if self.fmt == "parquet" and self.path is not None:
                write_parquet_records(self.path)
