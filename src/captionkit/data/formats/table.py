"""Tables of captions: CSV/TSV (Kaggle's Flickr ``captions.txt`` among them) and JSONL (captionkit's own
``captions.jsonl``, which the synthetic scenes write).

Columns (CSV header names or JSONL keys): ``image`` and ``caption``, optionally ``style`` (neutral, positive, negative),
``split`` and ``image_id``. Other common names are accepted too: ``image_name``, ``filename``, ``file_name``, ``path``
and ``image_path`` for ``image``; ``comment``, ``text`` and ``sentence`` for ``caption`` (Hugging Face ImageFolder's
``metadata.jsonl`` is ``file_name, text``); ``comment_number`` and ``score`` are ignored, and the ``|`` separator of
Kaggle's Flickr30k ``results.csv`` is read (such a table is not CSV-quoted: quotes are kept as part of the caption; a
row whose ``comment_number`` runs into its caption is mended). The results ``captionkit caption`` writes read as
pseudo-labels: each image's best ``caption`` (``score`` and the n-best ``captions`` ignored), and its ``error`` records
dropped and counted. Any other column is an error, so that a misspelt ``style`` is not silently lost. Image paths (``/``
or Windows ``\\`` separators, absolute or relative) are relative to the file, or to an image folder beside it
(``Images/``, ``flickr30k_images/``, ... as Kaggle lays Flickr out), or, when the first images are found from there
only, to the working directory, unless image roots are given. ``image_id`` defaults to the image path as written, with
``/`` separators and NFC Unicode.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from captionkit.data.formats.base import (
    Collector,
    ImageResolver,
    Probe,
    ReadOptions,
    ReadResult,
    check_split,
    csv_rows,
    pick_root,
    spellings,
)
from captionkit.data.formats.karpathy import image_folders
from captionkit.data.records import check_style, json_objects
from captionkit.errors import InputError
from captionkit.files import text_lines
from captionkit.shards.parquet import URL_COLUMNS, download_hint

ALIASES = {
    "image": "image",
    "image_name": "image",
    "filename": "image",
    "file_name": "image",
    "path": "image",
    "image_path": "image",
    "caption": "caption",
    "comment": "caption",
    "text": "caption",  # Hugging Face ImageFolder's metadata.csv / metadata.jsonl: file_name, text
    "sentence": "caption",
    "style": "style",
    "split": "split",
    "image_id": "image_id",
    "error": "error",
}
# Kaggle's caption numbers, and the score and n-best list of `captionkit caption` results (so they can be trained on:
# pseudo-labels, the best caption of each image; its error records are dropped and counted).
IGNORED = frozenset({"comment_number", "score", "captions"})
FAILED_IMAGE = "error record (an image captioning failed on)"
EXPECTED = "expected image, caption[, style][, split][, image_id]"
CSV_SUFFIXES = (".csv", ".tsv")
KAGGLE_FILES = ("captions.txt", "captions.csv", "results.csv")


def _columns(names: list[str], where: object) -> dict[int, str] | None:
    """Field index -> captionkit column; ``None`` without image and caption columns; unknown names are errors."""
    lowered = [name.strip().lower() for name in names]
    if not {"image", "caption"} <= {ALIASES.get(name) for name in lowered}:
        return None
    unknown = [name for name in lowered if name not in ALIASES and name not in IGNORED]
    if "" in unknown:  # "unknown column ''" puzzles; pandas' to_csv writes its index first, under no name
        at = lowered.index("") + 1
        why = "a pandas index? save the table with to_csv(..., index=False)" if at == 1 else EXPECTED
        raise InputError(where, f"column {at} has no name ({why})")
    if unknown:
        raise InputError(where, f"unknown column {unknown[0]!r} ({EXPECTED})")
    columns = {index: ALIASES[name] for index, name in enumerate(lowered) if name in ALIASES}
    if len(set(columns.values())) < len(columns):
        raise InputError(where, f"two columns name the same thing in header {','.join(lowered)!r} ({EXPECTED})")
    return columns


def _header(probe: Probe) -> tuple[str, dict[int, str], list[str]]:
    """(delimiter, columns, names of the fields, lower-cased) of a table's header line."""
    header = probe.first_line()
    if not header.strip() and probe.path.is_file() and probe.path.stat().st_size == 0:
        raise InputError(probe.path, f"empty file ({EXPECTED} in a header row, then a row per caption)")
    # Tab first for a .tsv, but not tab only: a comma-separated table named .tsv (as a .csv may hold tabs) is read,
    # where "no image and caption columns in header 'image,caption'" would contradict itself.
    order = ("\t", ",", "|") if probe.suffix == ".tsv" else (",", "\t", "|")
    for delimiter in order:
        names = next(csv.reader([header], delimiter=delimiter))
        columns = _columns(names, probe.path)
        if columns is not None:
            return delimiter, columns, [name.strip().lower() for name in names]
        _refuse_urls(probe, names, delimiter)
    raise InputError(probe.path, f"no image and caption columns in header {header[:80]!r} ({EXPECTED})")


def _refuse_urls(probe: Probe, names: list[str], delimiter: str) -> None:
    """A table of image URLs (LAION's url,caption CSVs): one error saying how to download them, as a Parquet or
    TSV of URLs gets, not that the header has no image column."""
    fields = [name.strip() for name in names]
    url = next((name for name in URL_COLUMNS if name in fields), None)
    if url is not None:
        caption = next((name for name in fields if ALIASES.get(name.lower()) == "caption"), "caption")
        raise InputError(probe.path, download_hint(probe.path, "tsv" if delimiter == "\t" else "csv", url, caption))


def detect_csv(probe: Probe) -> bool:
    if probe.suffix in CSV_SUFFIXES:
        return True
    if probe.suffix != ".txt":
        return False
    try:
        _header(probe)
    except InputError:
        return False
    return True


def detect_jsonl(probe: Probe) -> bool:
    return probe.suffix == ".jsonl"


def _one(directory: Path, names: list[Path], what: str) -> Path:
    if len(names) != 1:
        found = ", ".join(path.name for path in names) or "none"
        raise InputError(directory, f"expected one {what}, found: {found}")
    return names[0]


def _csv_files(directory: Path) -> list[Path]:
    kaggle = [directory / name for name in KAGGLE_FILES if (directory / name).is_file()]
    return kaggle or sorted(path for suffix in CSV_SUFFIXES for path in directory.glob(f"*{suffix}"))


def _jsonl_files(directory: Path) -> list[Path]:
    own = directory / "captions.jsonl"
    return [own] if own.is_file() else sorted(directory.glob("*.jsonl"))


def detect_csv_dir(directory: Path) -> bool:
    return len(_csv_files(directory)) == 1


def detect_jsonl_dir(directory: Path) -> bool:
    return len(_jsonl_files(directory)) == 1


def _roots(path: Path, names: list[str], options: ReadOptions) -> list[Path]:
    # Kaggle's Flickr30k keeps results.csv beside a flickr30k_images/ folder of the photos, Flickr8k an Images/ one.
    # Last, the working directory: a table written by a script run from a project's root names paths from there.
    candidates = [*image_folders(path.parent), Path.cwd()]
    return pick_root(candidates, names, options.image_roots)


def _add(collector: Collector, resolve: ImageResolver, row: dict[str, object], where: str) -> None:
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InputError(where, "missing 'image' (a path)")
    if row.get("error") not in (None, ""):
        collector.drop(FAILED_IMAGE)
        return
    caption = row.get("caption")
    if caption is None:
        raise InputError(where, "missing 'caption' (a string)")
    if not isinstance(caption, str):
        raise InputError(where, f"'caption' must be a string, got {type(caption).__name__}")
    split = row.get("split")
    if split is not None and not isinstance(split, str):
        raise InputError(where, "'split' must be a string")
    image_id = row.get("image_id")
    if (image_id is not None and not isinstance(image_id, str | int)) or isinstance(image_id, bool):
        raise InputError(where, "'image_id' must be a string or an integer")
    image = image.strip()
    # One image, one id: "a\\b.jpg", "./a/b.jpg" and "a/b.jpg", or a name's NFC and NFD spellings, must not split.
    default_id = unicodedata.normalize("NFC", PurePosixPath(spellings(image)[0]).as_posix())
    style = check_style(row.get("style"), where)
    # An id of 0 is an id (VizWiz and many converters count images from 0), not a missing one.
    own_id = str(image_id) if image_id not in (None, "") else default_id
    collector.add(resolve(image), caption, own_id, style, check_split(split or None, where))


def read_csv(probe: Probe, options: ReadOptions) -> ReadResult:
    if probe.path.is_dir():
        probe = Probe(_one(probe.path, _csv_files(probe.path), "caption table (*.csv, *.tsv, captions.txt)"))
    delimiter, columns, names = _header(probe)
    width = len(names)
    rows = _pipe_rows(probe, width, columns) if delimiter == "|" else csv_rows(probe, delimiter)
    next(rows)
    parsed: list[tuple[dict[str, object], str]] = []
    for fields, where in rows:
        if not fields or fields == [""]:
            continue
        if len(fields) == width - 1:
            fields = _unfused(fields, names)
        if len(fields) != width:
            raise InputError(where, f"expected {width} fields, got {len(fields)}")
        parsed.append(({column: fields[index].strip() for index, column in columns.items()}, where))
    return _collect(probe.path, parsed, options)


def _pipe_rows(probe: Probe, width: int, columns: dict[int, str]) -> Iterator[tuple[list[str], str]]:
    """The rows of a ``|``-separated table (Kaggle's Flickr30k ``results.csv``) with ``path:line``. Such a file is not
    CSV-quoted: a quote is part of the caption (``"A man" said the sign .``), kept as written, where the csv module
    would read it as an open quote. A caption in the last column keeps any ``|`` it holds."""
    last_is_caption = columns.get(width - 1) == "caption"
    for number, line in enumerate(text_lines(probe.text()), start=1):
        fields = line.split("|", width - 1) if last_is_caption else line.split("|")
        yield ([] if not line.strip() else fields), f"{probe.path}:{number}"


_FUSED_NUMBER = re.compile(r"\s*(\d+)\s+(\S.*)")


def _unfused(fields: list[str], names: list[str]) -> list[str]:
    """A row one field short whose ``comment_number`` field runs into its caption (``2199200615.jpg| 4 A dog runs
    across the grass .``: a line of Kaggle's Flickr30k ``results.csv`` lost its separator) as the two fields it
    should be; any other row as it is."""
    if "comment_number" not in names or names.index("comment_number") + 1 >= len(names):
        return fields
    at = names.index("comment_number")
    if ALIASES.get(names[at + 1]) != "caption" or (match := _FUSED_NUMBER.fullmatch(fields[at])) is None:
        return fields
    return [*fields[:at], match[1], match[2], *fields[at + 1 :]]


def read_jsonl(probe: Probe, options: ReadOptions) -> ReadResult:
    if probe.path.is_dir():
        probe = Probe(_one(probe.path, _jsonl_files(probe.path), "JSONL file (captions.jsonl)"))
    return _collect(probe.path, list(_jsonl_rows(probe)), options)


def _jsonl_rows(probe: Probe) -> Iterator[tuple[dict[str, object], str]]:
    for row, where in json_objects(probe.text(), probe.path):
        mapped: dict[str, object] = {}
        for key, value in row.items():
            if key in IGNORED:
                continue
            if key not in ALIASES:
                raise InputError(where, f"unknown key {key!r} ({EXPECTED})")
            mapped[ALIASES[key]] = value
        yield mapped, where


def _collect(path: Path, rows: list[tuple[dict[str, object], str]], options: ReadOptions) -> ReadResult:
    names = [str(row["image"]) for row, _ in rows[:5] if isinstance(row.get("image"), str)]
    resolve = ImageResolver(_roots(path, names, options))
    collector = Collector()
    collector.files.append(path)
    for row, where in rows:
        _add(collector, resolve, row, where)
    return collector.result(path)
