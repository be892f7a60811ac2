"""What every format reader shares: the file probe, the record collector, image-root resolution and errors.

Readers never raise on a single bad caption they can skip (an empty caption is dropped and counted); anything that
makes the file unusable (bad JSON, a missing key, an unknown column, an empty file) is one :class:`InputError`
naming the file (and line, where there is one) and the reason.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The split names live beside the record (and check_style), so that records.read_jsonl checks splits as the
# readers do without importing this module; the readers keep importing them from here.
from captionkit.data.records import SPLIT_ALIASES as SPLIT_ALIASES
from captionkit.data.records import CaptionRecord, normalize_split
from captionkit.data.records import check_split as check_split
from captionkit.errors import InputError
from captionkit.files import UTF16_REASON, is_utf16, read_text, text_lines
from captionkit.jsontext import parse_json
from captionkit.shards import split_member
from captionkit.wording import tally

EMPTY_CAPTION = "empty caption"
# Why the images under a folder are dropped, after the folder's name: it cannot be listed (no read permission) or
# its files cannot be looked at (no search permission).
UNREADABLE_FOLDER = "a folder whose files cannot be read (permission denied): its images are left out"
NO_SENTENCES = "image entry without sentences"


@dataclass(frozen=True)
class ReadOptions:
    """What a spec adds to a path: image roots searched in order (else each format's usual places)."""

    image_roots: tuple[Path, ...] = ()


@dataclass
class ReadResult:
    """Records one reader produced, what it dropped (reason -> count) and the files it read."""

    records: list[CaptionRecord]
    dropped: dict[str, int]
    files: list[Path]


class Collector:
    """Builds records, dropping (and counting) empty captions; fails once nothing is left."""

    def __init__(self) -> None:
        self.records: list[CaptionRecord] = []
        self.dropped: Counter[str] = Counter()
        self.files: list[Path] = []

    def add(
        self,
        image_path: Path,
        caption: str,
        image_id: str,
        style: str = "neutral",
        split: str | None = None,
    ) -> None:
        text = " ".join(caption.split())  # one line, single spaces: captions with CR/LF inside stay one record
        if not text:
            self.dropped[EMPTY_CAPTION] += 1
            return
        self.records.append(CaptionRecord(image_path, text, style, image_id, normalize_split(split)))

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def result(self, source: Path) -> ReadResult:
        if not self.records:
            empties = sum(self.dropped.values())
            detail = f" ({empties} dropped: {tally(dict(sorted(self.dropped.items())))})" if empties else ""
            raise InputError(source, f"no captions{detail}")
        return ReadResult(self.records, dict(self.dropped), self.files or [source])


def first_sentence(images: list[Any]) -> Any:
    """The first sentence of the first image entry that has any: SentiCap and Karpathy files share one outline and
    only a sentence (SentiCap's carry a sentiment) tells them apart; an image without sentences tells nothing."""
    for image in images:
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if isinstance(sentences, list) and sentences:
            return sentences[0]
    return None


class Probe:
    """A path under inspection; its text and parsed JSON are read once and shared by detection and reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._text: str | None = None
        self._json: Any = None
        self._json_read = False

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def text(self) -> str:
        if self._text is None:
            self._text = read_text(self.path)
        return self._text

    def first_line(self, limit: int = 65536) -> str:
        """The first line, read without loading the whole file (for sniffing headers)."""
        if self._text is not None:
            return self._text.split("\n", 1)[0].rstrip("\r")
        try:
            with self.path.open("rb") as handle:
                head = handle.read(limit)
        except OSError as error:
            raise InputError(self.path, f"cannot read ({error.strerror or error})") from None
        if is_utf16(head):
            raise InputError(self.path, UTF16_REASON)
        return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig", errors="replace")

    def json(self) -> Any:
        if not self._json_read:
            try:
                self._json = parse_json(self.text(), self.path)
            except InputError as error:
                raise InputError(self.path, f"{error.reason}{self._json_lines_hint()}") from None
            self._json_read = True
        return self._json

    def _json_lines_hint(self) -> str:
        """What to do when the text is JSON Lines (as Hugging Face's ``to_json`` writes to a ``.json``), which as one
        JSON document fails at line 2 with a puzzling "Extra data"; nothing for other text."""
        lines = self.text().strip().split("\n")
        try:
            first = parse_json(lines[0], self.path)
        except InputError:
            return ""
        if len(lines) < 2 or not isinstance(first, dict):
            return ""
        return "; one JSON object a line is JSON Lines: name the file .jsonl or force the format, jsonl:PATH"


def csv_rows(probe: Probe, delimiter: str = ",") -> Iterator[tuple[list[str], str]]:
    """Each row of a CSV file with ``path:line`` (the line it ends on); a blank line (nothing, or only spaces, as an
    editor leaves at the end) is no row. Strict: a quote left open is one error naming the line its row starts on,
    where the csv module's default would swallow the rest of the file into one field."""
    rows = csv.reader(io.StringIO(probe.text(), newline=""), delimiter=delimiter, strict=True)
    start = 1  # the line the row being read starts on
    try:
        for fields in rows:
            if len(fields) > 1 or (fields and fields[0].strip()):
                yield fields, f"{probe.path}:{rows.line_num}"
            start = rows.line_num + 1
    except csv.Error as error:
        if str(error) == "unexpected end of data":
            opened = "unterminated quote: the quoted field opened in this row"
            reason = f"{opened} is still open at the end (line {rows.line_num})"
        else:
            reason = f"malformed CSV at line {rows.line_num} ({error}); is a quote in this row left open?"
        raise InputError(f"{probe.path}:{start}", reason) from None


def sidecar_lines(path: Path) -> list[str]:
    """The non-blank lines of the caption file ``path`` beside an image, stripped. One that is empty or holds only
    whitespace holds no caption (img2dataset writes an empty one for an image without a caption), which is not a
    broken file; one that cannot be read (not UTF-8, UTF-16, unreadable) is an :class:`InputError` naming it."""
    try:
        text = read_text(path)
    except InputError as error:
        if error.reason != _EMPTY_FILE:
            raise
        return []
    return [line.strip() for line in text_lines(text) if line.strip()]


_EMPTY_FILE = "empty file"  # read_text's reason for a file of nothing but whitespace


def require(mapping: object, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``mapping[key]`` checked to be of ``kind``; one clear error otherwise."""
    if not isinstance(mapping, dict):
        raise InputError(where, "expected a JSON object")
    if key not in mapping:
        raise InputError(where, f"missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        expected = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise InputError(where, f"{key!r} must be {expected}, got {type(value).__name__}")
    return value


def require_file_name(mapping: object, key: str, where: str) -> str:
    """``mapping[key]``, the name of an image file: a string that is not empty (an empty one would name the image
    folder itself)."""
    name = require(mapping, key, str, where)
    if not name.strip():
        raise InputError(where, f"{key!r} is empty: it names no image file")
    return name


def sentence_text(sentence: Any, where: str) -> str:
    """The caption of a Karpathy or SentiCap sentence: its ``raw`` text, else its ``tokens`` joined by spaces. A
    ``raw`` that is there but no string is an error saying so (not that ``tokens`` is missing)."""
    if isinstance(sentence, dict) and sentence.get("raw") is not None:
        return require(sentence, "raw", str, where)
    tokens = require(sentence, "tokens", list, where)
    return " ".join(str(token) for token in tokens)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def spellings(name: str) -> list[str]:
    """The ways a file name written in a table may be spelt on disk, most likely first: Windows separators as ``/``
    (a table written on Windows says ``Images\\a.jpg``), then its NFC and NFD forms (macOS file systems store NFD
    names, most tools write NFC, and the two look identical)."""
    name = name.replace("\\", "/")
    if name.isascii():
        return [name]
    return list(dict.fromkeys([name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)]))


class ImageResolver:
    """Finds each image under the first root (and first alias name and spelling) where it exists.

    A missing image still gets a path (under the first root) so that ``data check`` can name it and training can
    skip it; the reader does not decide that a dataset with a few missing files is unusable. Each name is looked up
    once: a file names the same image once per caption (five times in COCO), and a lookup may ask the disk.
    """

    def __init__(self, roots: Sequence[Path], aliases: Callable[[str], Iterable[str]] | None = None) -> None:
        self.roots = list(roots) or [Path(".")]
        self.aliases = aliases
        self._found: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        found = self._found.get(name)
        if found is None:
            found = self._found[name] = self._find(name)
        return found

    def _find(self, name: str) -> Path:
        aliases = list(self.aliases(name)) if self.aliases is not None else [name]
        names = list(dict.fromkeys(spelt for alias in aliases for spelt in spellings(alias)))
        if Path(names[0]).is_absolute():
            # The name as written first; a relative alias (COCO's bare 2017 name) is no place to look without a root.
            absolute = [Path(spelt) for spelt in names if Path(spelt).is_absolute()]
            if len(absolute) == 1:
                return absolute[0]
            return next((path for path in absolute if path.is_file()), absolute[0])
        # One root and one spelling: the path is known without asking the disk (a stat per image adds up).
        if len(self.roots) > 1 or len(names) > 1:
            for root in self.roots:
                for spelt in names:
                    candidate = root / spelt
                    if is_image_at(candidate):
                        return candidate
        return self.roots[0] / names[0]


def is_image_at(path: Path) -> bool:
    """Whether an image is at ``path``: a file, or a sample inside a shard (``shards/00000.tar/KEY.jpg``, as the
    results of ``captionkit caption`` over shards name their images), which is no file to ``is_file``."""
    return path.is_file() or split_member(path) is not None


def pick_root(candidates: Iterable[Path], names: Sequence[str], explicit: Sequence[Path] = ()) -> list[Path]:
    """The image roots to search: the explicit ones, else the first candidate holding one of the first names.

    When no candidate holds any of them, the first existing candidate (else the first) is used, so missing images
    are reported under the most likely place.
    """
    if explicit:
        return list(explicit)
    candidates = list(dict.fromkeys(candidates))
    sample = [spelt for name in names[:5] for spelt in spellings(name) if not Path(spelt).is_absolute()]
    for root in candidates:
        if any(is_image_at(root / name) for name in sample):
            return [root]
    existing = [root for root in candidates if root.is_dir()]
    return [existing[0] if existing else candidates[0]]
