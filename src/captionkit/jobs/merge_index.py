"""The records ``merge`` keeps, one per image, and the inputs it expects, in an SQLite file in a temporary directory
(stdlib ``sqlite3``), so that merging holds a few records at a time whatever the number of images.

Images are stored as UTF-8 bytes with lone surrogates kept (``surrogatepass``): their byte order is the code point
order of Python's ``sorted``, so ``ORDER BY image`` sorts as the in-memory merge did. Records are stored as JSON
text (``NaN`` and infinities included), which gives back equal records.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from captionkit.jobs.outputs import Record
from captionkit.jobs.scratch_index import ScratchIndex, image_key, image_name

SHOWN = 5  # names kept of each finding, for the one-line report
INSERT_BATCH = 1000  # inputs per executemany

SCHEMA = (
    "CREATE TABLE kept (image BLOB PRIMARY KEY, record TEXT NOT NULL, error INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE duplicates (seq INTEGER PRIMARY KEY, image BLOB UNIQUE NOT NULL)",
    "CREATE TABLE inputs (image BLOB PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID",
)


@dataclass
class Names:
    """How many images a finding concerns, and the first few of them."""

    count: int = 0
    shown: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.count


class MergeIndex(ScratchIndex):
    """One record per image (a captioned record wins over an error record, else the first met), the images met
    more than once, and the expected inputs in their order."""

    def __init__(self) -> None:
        super().__init__("captionkit-merge-", SCHEMA)

    def add(self, records: Iterable[Record]) -> None:
        with self._db:
            for record in records:
                self._add(record)

    def _add(self, record: Record) -> None:
        image = image_key(str(record.get("image", "")))
        error = int("error" in record)
        row = self._db.execute("SELECT error FROM kept WHERE image = ?", (image,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO kept VALUES (?, ?, ?)", (image, json.dumps(record), error))
            return
        self._db.execute("INSERT OR IGNORE INTO duplicates (image) VALUES (?)", (image,))
        if row[0] and not error:
            self._db.execute("UPDATE kept SET record = ?, error = 0 WHERE image = ?", (json.dumps(record), image))

    def expect(self, inputs: Iterable[str]) -> None:
        """Note ``inputs`` in order (one met twice keeps its first place)."""
        rows = ((image_key(image), position) for position, image in enumerate(inputs))
        with self._db:
            while chunk := list(itertools.islice(rows, INSERT_BATCH)):
                self._db.executemany("INSERT OR IGNORE INTO inputs VALUES (?, ?)", chunk)

    def records(self, expected: bool) -> Iterator[Record]:
        """The kept records: those of expected inputs in their order, then the others by image (``expected``), or
        all by image."""
        if expected:
            yield from self._records(
                "SELECT kept.record FROM inputs JOIN kept ON kept.image = inputs.image ORDER BY inputs.position"
            )
            query = "SELECT record FROM kept WHERE image NOT IN (SELECT image FROM inputs) ORDER BY image"
        else:
            query = "SELECT record FROM kept ORDER BY image"
        yield from self._records(query)

    def _records(self, query: str) -> Iterator[Record]:
        for (text,) in self._db.execute(query):
            yield json.loads(text)

    def duplicates(self) -> Names:
        return self._names("FROM duplicates", "ORDER BY seq")

    def missing(self) -> Names:
        """Expected inputs without a record, in input order."""
        return self._names("FROM inputs WHERE image NOT IN (SELECT image FROM kept)", "ORDER BY position")

    def unexpected(self) -> Names:
        """Records of images that are not expected, by image."""
        return self._names("FROM kept WHERE image NOT IN (SELECT image FROM inputs)", "ORDER BY image")

    def _names(self, source: str, order: str) -> Names:
        (count,) = self._db.execute(f"SELECT count(*) {source}").fetchone()
        shown = [image_name(image) for (image,) in self._db.execute(f"SELECT image {source} {order} LIMIT {SHOWN}")]
        return Names(int(count), shown)

    def counts(self) -> tuple[int, int]:
        """``(records kept, of which errors)``."""
        kept, errors = self._db.execute("SELECT count(*), coalesce(sum(error), 0) FROM kept").fetchone()
        return int(kept), int(errors)
