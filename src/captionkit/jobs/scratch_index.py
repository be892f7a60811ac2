"""A scratch SQLite database (stdlib ``sqlite3``) in a temporary directory, for the lookups a job makes over every
image it has met without holding a Python object per image: ``--resume``'s images done, ``merge``'s records kept.

Image names are stored as UTF-8 bytes with lone surrogates kept (``surrogatepass``, file names that are not UTF-8):
their byte order is the code point order of Python's ``sorted``.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path


def image_key(image: str) -> bytes:
    return image.encode("utf-8", "surrogatepass")


def image_name(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


class ScratchIndex:
    """The database ``_db`` with ``schema`` created, deleted with its directory on :meth:`close`."""

    def __init__(self, prefix: str, schema: Iterable[str]) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix=prefix)
        self._db = sqlite3.connect(Path(self._directory.name) / "index.sqlite")
        self._db.execute("PRAGMA journal_mode = OFF")  # a scratch file: nothing to recover after a crash
        self._db.execute("PRAGMA synchronous = OFF")
        for statement in schema:
            self._db.execute(statement)

    def close(self) -> None:
        self._db.close()
        self._directory.cleanup()
