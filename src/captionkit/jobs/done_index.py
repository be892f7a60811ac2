"""What a resumed run finds in its output: the images it already holds records of, and how many of those records are
errors, looked up by image name in an SQLite file in a temporary directory (stdlib ``sqlite3``).

A set of names cost ~190 bytes per image held (~780 at its peak, every record read at once); the index keeps memory
to SQLite's page cache whatever the number of records, for ~25 µs per lookup (a shared 2-core machine). Names are
stored as UTF-8 bytes, lone surrogates (file names that are not UTF-8) included.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from captionkit.jobs.outputs import Record
from captionkit.jobs.scratch_index import ScratchIndex, image_key

INSERT_BATCH = 1000  # records per executemany while building
# A name met twice (a retried image) adds up its error records.
INSERT = "INSERT INTO done VALUES (?, ?) ON CONFLICT (image) DO UPDATE SET errors = errors + excluded.errors"


class DoneIndex(ScratchIndex):
    """The images of ``records`` (an output's, read as a stream), each with its count of error records."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        super().__init__(
            "captionkit-resume-", ["CREATE TABLE done (image BLOB PRIMARY KEY, errors INTEGER NOT NULL) WITHOUT ROWID"]
        )
        rows = (
            (image_key(image), int("error" in record))
            for record in records
            if isinstance(image := record.get("image"), str)
        )
        with self._db:
            while chunk := list(itertools.islice(rows, INSERT_BATCH)):
                self._db.executemany(INSERT, chunk)

    def __contains__(self, image: str) -> bool:
        return self._errors(image) is not None

    def errors(self, image: str) -> int:
        """The error records ``image`` has (0 when it has none, or no record)."""
        return self._errors(image) or 0

    def _errors(self, image: str) -> int | None:
        row = self._db.execute("SELECT errors FROM done WHERE image = ?", (image_key(image),)).fetchone()
        return None if row is None else int(row[0])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM done").fetchone()[0])
