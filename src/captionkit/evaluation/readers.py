"""Readers for the files ``captionkit score`` takes, detecting the format; one clear error when nothing fits.

References (:func:`read_references`):

- COCO captions JSON: ``{"annotations": [{"image_id": 139, "caption": "..."}], "images": [{"id": 139,
  "file_name": "000000000139.jpg"}]}``; images are named by ``image_id``, and also by ``file_name`` and its stem;
- a plain JSON object ``{"image id": ["caption", ...]}`` (ids that look like file names also match by name/stem);
- a Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr8k.json``, SentiCap's json): ``{"images":
  [{"filename", "sentences": [{"raw"}]}]}``, every split; images are named by ``filename`` (and its stem), and by
  ``cocoid`` where given (else the COCO id of a ``COCO_val2014_<12 digits>.jpg`` name, as SentiCap gives none); an
  image listed twice (SentiCap: once per sentiment) has the captions of both;
- a Flickr token file, ``NAME.jpg#N<TAB>caption`` a line; images are named ``NAME.jpg`` (or its stem);
- a CSV (or TSV) with a header naming ``image`` and ``caption`` columns, a row per caption (Kaggle's Flickr8k
  ``captions.txt``);
- JSON lines ``{"image": ..., "caption": ...}``, a line per caption (captionkit's ``captions.jsonl``, the synthetic
  scenes); images are named by ``image`` (and its file name and stem, as a CSV's rows), else by ``image_id``.

Candidates (:func:`read_candidates`):

- COCO results JSON: ``[{"image_id": 139, "caption": "..."}]``;
- a plain JSON object ``{"image id": "caption"}``;
- the JSONL that ``captionkit caption`` writes, ``{"image": "path/x.jpg", "caption": "...", "score": ...}`` a
  line; the image's file name names it. A failed image (``{"image": ..., "error": ...}``) has no caption: it is an
  error, unless the caller collects the failed images (``failed``) and leaves them out. COCO results one a line
  (``{"image_id": 139, "caption": "..."}``) are read too, and so are the other formats of ``captionkit caption``:
  ``--format json`` (the same records in one array), ``--format csv`` (or any CSV with ``image`` and ``caption``
  columns; a non-empty ``error`` column marks a failed image) and ``--format parquet`` (whose rows the caller reads
  and gives to :func:`candidates_from_records`).

An empty caption is a caption here, as a model may write one; :func:`~captionkit.evaluation.api.score_captions`
decides whether to score it (``allow_empty``).

Numeric image ids are read as pycocoevalcap compares them, by value: ``139``, ``"139"`` and ``139.0`` name one image.

Files must be UTF-8 (a byte-order mark is allowed). :meth:`ReferenceSet.match` maps candidate names onto reference
image ids.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from captionkit.errors import InputError
from captionkit.files import read_text, text_lines
from captionkit.jsontext import parse_json
from captionkit.wording import plural

_FLICKR_LINE = re.compile(r"(?P<name>[^\t#]+)#(?P<number>\d+)\t(?P<caption>.*)")
#: A COCO 2014 file name, whose 12 digits are the image's COCO id (its 2017 file is those digits alone).
_COCO_2014_NAME = re.compile(r"COCO_(?:train|val|test)2014_(?P<id>\d{12})\.jpg")
_REFERENCE_FORMATS = (
    'expected COCO captions JSON ({"annotations": [{"image_id", "caption"}]}), a JSON object {"id": [captions]}, '
    'a Karpathy split JSON ({"images": [{"filename", "sentences"}]}), a CSV with image and caption columns, '
    'JSON lines {"image", "caption"} or a Flickr token file (NAME.jpg#N<TAB>caption)'
)
_CANDIDATE_FORMATS = (
    'expected COCO results JSON ([{"image_id", "caption"}]), a JSON object {"id": "caption"}, the JSONL, JSON, '
    'CSV or Parquet of "captionkit caption" ({"image": ..., "caption": ...} a line) or a CSV with image and caption '
    "columns"
)


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


@dataclass
class ReferenceSet:
    """Reference captions by image id, with the other names (file names, stems) each image answers to."""

    captions: dict[str, list[str]]
    source: str = "references"
    #: ``(path, image id)``: the image also answers to the path's file name and stem (see :attr:`aliases`).
    paths: list[tuple[str, str]] = field(default_factory=list)

    @cached_property
    def aliases(self) -> dict[str, str | None]:
        """The file names and stems of :attr:`paths` -> their image id (``None``: the name fits several images),
        but names that are image ids themselves. Built on first use: candidates named by image id never need it."""
        aliases: dict[str, str | None] = {}
        for path, image_id in self.paths:
            for name in (_basename(path), _stem(path)):
                if name not in self.captions:
                    aliases[name] = image_id if aliases.get(name, image_id) == image_id else None
        return aliases

    def resolve(self, name: str) -> str | None:
        """The image id a candidate's name refers to, or ``None``."""
        for key in (name, _basename(name)):
            if key in self.captions:
                return key
            if self.aliases.get(key):
                return self.aliases[key]
        # A COCO number however written: "139", "000000000139", "000000000139.jpg" (a 2017 file name; Karpathy's
        # files name the image COCO_val2014_000000000139.jpg and give 139 as its cocoid).
        suffix = _basename(name).rpartition(".")[2]
        number = _stem(name) if suffix.isalpha() else name  # "12.5" is no file name of image 12
        if number.isdigit():
            number = str(int(number))
            return number if number in self.captions else self.aliases.get(number)
        return None

    def image_files(self, directory: Path) -> ImageFiles:
        """Each image's file in ``directory``, found under its id or any file name the references give it, looked up
        when asked for: only the images scored need a file there (see :class:`ImageFiles`)."""
        names: dict[str, list[str]] = {image_id: [image_id] for image_id in self.captions}
        for name, image_id in self.aliases.items():
            if image_id is not None:
                names[image_id].append(name)
        return ImageFiles(directory, names)

    def match(self, candidates: Mapping[str, str], source: str) -> dict[str, str]:
        """Candidates keyed by reference image ids; names that match no image are kept (scoring reports them)."""
        matched: dict[str, str] = {}
        named: dict[str, str] = {}
        for name, caption in candidates.items():
            image_id = self.resolve(name) or name
            if image_id in matched:
                raise InputError(
                    source, f"two candidates for image {image_id!r} (named {named[image_id]!r} and {name!r})"
                )
            matched[image_id] = caption
            named[image_id] = name
        return matched


class ImageFiles(Mapping[str, Path]):
    """Image id -> its file in a directory, found on first access. A score over the images that have a candidate
    (a test split against all of ``captions_val2014.json``) needs only their files, not every reference image's;
    an image without a file is an :class:`InputError` naming it and the names tried."""

    def __init__(self, directory: Path, names: dict[str, list[str]]) -> None:
        self.directory = directory
        self._names = names  # image id -> the file names it answers to, its id first

    def __getitem__(self, image_id: str) -> Path:
        tried = self._names[image_id]  # a KeyError for an image the references do not have
        found = next((self.directory / n for n in tried if (self.directory / n).is_file()), None)
        if found is None:
            raise InputError(self.directory, f"no image file for image {image_id!r} (tried {_examples(tried)})")
        return found

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _basename(name: str) -> str:
    """The last part of a POSIX or Windows path."""
    return name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]


def _stem(name: str) -> str:
    """The file name without its last suffix (``"a.b.jpg"`` -> ``"a.b"``), as ``PurePath.stem``."""
    base = _basename(name)
    head, dot, _ = base.rpartition(".")
    return head if dot and head.strip(".") and not base.endswith(".") else base


def _parse_json(text: str, path: Path) -> Any:
    data = parse_json(text, path)
    if isinstance(data, dict) and "annotations" not in data:
        # Keys are image ids here, and json.loads silently keeps the last of duplicates: parse again, checking.
        data = parse_json(text, path, unique_keys=True)
    return data


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


# ----------------------------------------------------------------------------------------------------------------
def read_references(path: str | Path) -> ReferenceSet:
    """Reference captions from a COCO captions JSON, a ``{"id": [captions]}`` JSON or a Flickr token file."""
    path = Path(path)
    text = read_text(path)
    if not _looks_like_json(text):
        rows = _csv_rows(text, path)
        return _csv_references(rows, path) if rows is not None else _flickr_references(text, path)
    first, _, rest = text.lstrip().partition("\n")
    if rest.strip() and '"caption"' in first and _is_jsonl(first):
        # A line per caption, as a CSV has them (json.loads said "invalid JSON: Extra data (line 2, column 1)").
        return _jsonl_references(text, path)
    data = _parse_json(text, path)
    if isinstance(data, dict) and "annotations" in data:
        return _coco_references(data, path)
    if _is_karpathy(data):
        return _karpathy_references(data, path)
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        references = ReferenceSet({}, str(path))
        for image_id, captions in data.items():
            if not all(isinstance(c, str) for c in captions):
                raise InputError(path, f"image {image_id!r}: captions must be strings")
            references.captions[image_id] = list(captions)
        references.paths.extend((image_id, image_id) for image_id in references.captions)
        return references
    raise InputError(path, f"not a references file: {_REFERENCE_FORMATS}")


def _coco_references(data: dict[str, Any], path: Path) -> ReferenceSet:
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise InputError(path, '"annotations" must be a list of {"image_id", "caption"} objects')
    references = ReferenceSet({}, str(path))
    captions = references.captions
    for number, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "image_id" not in annotation or "caption" not in annotation:
            raise InputError(path, f'annotation {number}: expected an object with "image_id" and "caption"')
        caption = annotation["caption"]
        if not isinstance(caption, str):
            raise InputError(path, f"annotation {number}: caption must be a string")
        image_id = _id_text(annotation["image_id"])
        if image_id in captions:
            captions[image_id].append(caption)
        else:
            captions[image_id] = [caption]
    images = data.get("images", [])
    if isinstance(images, list):
        references.paths.extend(
            (image["file_name"], image_id)
            for image in images
            if isinstance(image, dict) and isinstance(image.get("file_name"), str) and "id" in image
            if (image_id := _id_text(image["id"])) in captions
        )
    return references


def _id_text(value: object) -> str:
    """An image id as text; an integral float (``139.0``) as its integer, since pycocoevalcap matches ids by value
    and ``139.0 == 139`` there."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_karpathy(data: Any) -> bool:
    """Karpathy's split layout: ``{"images": [{"filename", "sentences"}, ...]}`` (no "annotations")."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        return False
    first = data["images"][0]
    return isinstance(first, dict) and "sentences" in first


def _karpathy_references(data: dict[str, Any], path: Path) -> ReferenceSet:
    """Captions by ``filename`` from every split: ``score`` keeps the images that have a candidate, as it does with
    a COCO file, so a test split's results need no filtering here."""
    references = ReferenceSet({}, str(path))
    for number, image in enumerate(data["images"]):
        name = image.get("filename") if isinstance(image, dict) else None
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if not isinstance(name, str) or not isinstance(sentences, list):
            raise InputError(path, f'image {number}: expected an object with "filename" and "sentences"')
        captions = references.captions.setdefault(name, [])
        captions.extend(_karpathy_caption(sentence, name, path) for sentence in sentences)
        if "cocoid" in image:  # COCO results name the image by its COCO id
            references.paths.append((_id_text(image["cocoid"]), name))
        elif coco := _COCO_2014_NAME.fullmatch(name):  # SentiCap gives no cocoid; its COCO file names hold it
            references.paths.append((str(int(coco["id"])), name))
    references.paths.extend((name, name) for name in references.captions)
    return references


def _karpathy_caption(sentence: Any, name: str, path: Path) -> str:
    """A sentence's ``raw`` text (what pycocoevalcap tokenizes), else its ``tokens`` joined."""
    raw = sentence.get("raw") if isinstance(sentence, dict) else None
    if isinstance(raw, str):
        return raw
    tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens)
    raise InputError(path, f'image {name!r}: a sentence without "raw" text or "tokens"')


def _csv_references(rows: list[tuple[str, dict[str, str]]], path: Path) -> ReferenceSet:
    """Captions by image from ``image,caption`` rows (Kaggle's Flickr8k ``captions.txt``), several rows an image."""
    references = ReferenceSet({}, str(path))
    for where, row in rows:
        name = row.get("image") or row.get("image_id")
        if not name:
            raise InputError(path, f"{where}: no image named")
        references.captions.setdefault(name, []).append(row["caption"])
    references.paths.extend((name, name) for name in references.captions)
    return references


def _jsonl_references(text: str, path: Path) -> ReferenceSet:
    """Captions by image from ``{"image", "caption"}`` lines, several lines an image (``captions.jsonl``), named
    as a CSV's rows are: by the whole ``image`` path (two folders' ``x.png`` are two images), which candidates'
    file names resolve to."""
    references = ReferenceSet({}, str(path))
    for where, record in _jsonl_records(text, path):
        image = record.get("image") if isinstance(record, dict) else None
        name = image if isinstance(image, str) and image else _record_name(record)
        caption = record.get("caption") if isinstance(record, dict) else None
        if name is None or not isinstance(caption, str):
            raise InputError(path, f'{where}: expected an object with "image" (or "image_id") and a "caption" string')
        references.captions.setdefault(name, []).append(caption)
    references.paths.extend((name, name) for name in references.captions)
    return references


def _flickr_references(text: str, path: Path) -> ReferenceSet:
    references = ReferenceSet({}, str(path))
    for number, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        match = _FLICKR_LINE.fullmatch(line.rstrip("\r"))
        if match is None:
            raise InputError(path, f"line {number} is not NAME#N<TAB>caption ({_REFERENCE_FORMATS})")
        references.captions.setdefault(match["name"], []).append(match["caption"])
    references.paths.extend((name, name) for name in references.captions)
    return references


# ----------------------------------------------------------------------------------------------------------------
def read_candidates(path: str | Path, failed: dict[str, str] | None = None) -> dict[str, str]:
    """Candidate captions by the name each file gives its images (see :meth:`ReferenceSet.match`).

    Images that ``captionkit caption`` could not read (error records) have no caption: with ``failed`` given, each
    goes there (its name -> its error) and is left out; without, they are an :class:`InputError`."""
    path = Path(path)
    text = read_text(path)
    if not _looks_like_json(text):
        rows = _csv_rows(text, path)
        if rows is None:
            raise InputError(path, f"not a candidates file: {_CANDIDATE_FORMATS}")
        return candidates_from_records(rows, path, failed)
    first_line = text.lstrip().split("\n", 1)[0]
    if text.lstrip().startswith("{") and ('"image"' in first_line or '"image_id"' in first_line) and _is_jsonl(text):
        return candidates_from_records(_jsonl_records(text, path), path, failed)
    data = _parse_json(text, path)
    if isinstance(data, list) and data and isinstance(data[0], dict) and "image_id" not in data[0]:
        # ``captionkit caption --format json``: the JSONL's records in one array, named by "image".
        return candidates_from_records(((f"record {n}", r) for n, r in enumerate(data)), path, failed)
    if isinstance(data, list):
        return _coco_candidates(data, path)
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return dict(data)
    raise InputError(path, f"not a candidates file: {_CANDIDATE_FORMATS}")


def _is_jsonl(text: str) -> bool:
    try:
        record = parse_json(text.lstrip().split("\n", 1)[0], "first line")
    except InputError:
        return False
    named = "image" in record or "image_id" in record if isinstance(record, dict) else False
    return named and ("caption" in record or "error" in record)


def _coco_candidates(data: list[Any], path: Path) -> dict[str, str]:
    candidates: dict[str, str] = {}
    for number, result in enumerate(data):
        if not isinstance(result, dict) or "image_id" not in result or "caption" not in result:
            raise InputError(path, f'result {number}: expected an object with "image_id" and "caption"')
        image_id, caption = _id_text(result["image_id"]), result["caption"]
        if not isinstance(caption, str):
            raise InputError(path, f"result {number} (image {image_id!r}): caption must be a string")
        if image_id in candidates:
            raise InputError(path, f"duplicate image_id {image_id!r} (result {number})")
        candidates[image_id] = caption
    return candidates


def _record_name(record: Any) -> str | None:
    """The name a record gives its image: the file name of ``image`` (``captionkit caption``'s records), else
    ``image_id`` (COCO results one a line)."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("image"), str) and record["image"]:
        return _basename(record["image"])
    if "image_id" in record and not isinstance(record["image_id"], dict | list | None):
        return _id_text(record["image_id"])
    return None


def _jsonl_records(text: str, path: Path) -> Iterator[tuple[str, Any]]:
    """``("line N", record)`` for each non-blank line."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield f"line {number}", parse_json(line, f"{path}: line {number}")


def candidates_from_records(
    records: Iterable[tuple[str, Any]], path: str | Path, failed: dict[str, str] | None = None
) -> dict[str, str]:
    """Captions of ``captionkit caption``'s records (JSONL, JSON, CSV or Parquet), each at a place (``"line 3"``).

    A failed image (a non-empty ``error``) has no caption: with ``failed`` given, its name and error go there (the
    first error of an image met twice, none for an image that also has a caption, as ``merge`` keeps a retried
    image's caption); without, the failed images are an :class:`InputError`."""
    candidates: dict[str, str] = {}
    errors: dict[str, str] = {}
    for where, record in records:
        name = _record_name(record)
        if name is None:
            raise InputError(path, f'{where}: expected an object with "image" (or "image_id") and "caption"')
        if record.get("error") not in (None, ""):  # CSV leaves the error column of a captioned image empty
            errors.setdefault(name, _one_line(str(record["error"])))
            continue
        caption = record.get("caption")
        if not isinstance(caption, str):
            raise InputError(path, f"{where} ({name}): caption must be a string")
        if name in candidates:
            raise InputError(path, f"{where}: duplicate image {name!r}")
        candidates[name] = caption
    errors = {name: error for name, error in errors.items() if name not in candidates}
    if failed is not None:
        failed.update(errors)
    elif errors:
        name, error = next(iter(errors.items()))
        reason = f"{plural(len(errors), 'image')} failed to caption, e.g. {name}: {error}"
        raise InputError(path, f"{reason}; every image needs a caption to score")
    return candidates


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "error"


def _csv_rows(text: str, path: Path) -> list[tuple[str, dict[str, str]]] | None:
    """``("row N", {column: value})`` of a CSV or TSV whose header names an ``image`` (or ``image_id``) and a
    ``caption`` column (Kaggle's Flickr8k ``captions.txt``, ``captionkit caption --format csv``); ``None`` when the
    header does not, so that other formats get their own errors."""
    header = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in header and "," not in header else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        columns = [name.strip() for name in next(reader)]
        if "caption" not in columns or not {"image", "image_id"} & set(columns):
            return None
        rows = [(f"row {reader.line_num}", dict(zip(columns, row, strict=False))) for row in reader if any(row)]
    except csv.Error as error:
        raise InputError(path, f"bad CSV at line {reader.line_num} ({error})") from None
    for where, row in rows:
        if len(row) < len(columns):
            raise InputError(path, f"{where}: {len(row)} of the header's {len(columns)} columns")
    return rows
