"""Result records of a captioning run, written as JSONL, CSV or JSON, and read back for ``--resume``.

A record is ``{"image", "caption", "score"}`` (plus ``"captions"`` for n-best) or ``{"image", "error"}``.
JSONL and CSV are appended and flushed batch by batch, so an interrupted run keeps what it finished;
JSON (one array) is written whole at the end.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from captionkit.errors import InputError

FORMATS = ("jsonl", "csv", "json")
CSV_FIELDS = ("image", "caption", "score", "error")

Record = dict[str, Any]


def read_records(path: Path, fmt: str) -> list[Record]:
    """Records already in ``path`` (for resuming); an empty list when the file does not exist."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    try:
        if fmt == "jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if fmt == "json":
            return json.loads(text) if text.strip() else []
        rows = list(csv.DictReader(text.splitlines()))
        return [{key: value for key, value in row.items() if value not in ("", None)} for row in rows]
    except (json.JSONDecodeError, csv.Error) as error:
        raise InputError(path, f"cannot resume: existing output is not valid {fmt} ({error})") from None


class RecordWriter:
    """Writes records to a file (or stdout) in one of :data:`FORMATS`."""

    def __init__(self, path: Path | None, fmt: str, existing: Iterable[Record] = ()) -> None:
        if fmt not in FORMATS:
            raise InputError("--format", f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
        self.path, self.fmt = path, fmt
        self._all: list[Record] = list(existing)
        self._handle: TextIO | None = None
        if fmt != "json":
            if path is None:
                self._handle = sys.stdout
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                fresh = not path.exists() or path.stat().st_size == 0
                self._handle = path.open("a", encoding="utf-8", newline="")
                if fmt == "csv" and fresh:
                    csv.writer(self._handle).writerow(CSV_FIELDS)
            if fmt == "csv" and path is None:
                csv.writer(self._handle).writerow(CSV_FIELDS)

    def write(self, records: Iterable[Record]) -> None:
        records = list(records)
        self._all.extend(records)
        if self._handle is None:
            return
        for record in records:
            if self.fmt == "jsonl":
                self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                csv.writer(self._handle).writerow([record.get(name, "") for name in CSV_FIELDS])
        self._handle.flush()

    def close(self) -> None:
        if self.fmt == "json":
            text = json.dumps(self._all, ensure_ascii=False, indent=2) + "\n"
            if self.path is None:
                sys.stdout.write(text)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(text, encoding="utf-8")
        elif self._handle is not None and self._handle is not sys.stdout:
            self._handle.close()
