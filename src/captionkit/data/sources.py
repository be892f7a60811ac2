"""Turn a data spec (what a user types after ``--data`` or puts in ``data.train``) into caption records.

A spec is a file or a directory whose format is detected (see :mod:`captionkit.data.formats`)::

    data/flickr8k                         # a folder: Flickr token file + split lists + Images/
    coco/annotations/captions_val2017.json  # images found in the sibling val2017/
    coco:labels.json                      # FORMAT:PATH forces a format (coco, vizwiz, karpathy, flickr,
                                          # senticap, csv, kaggle, jsonl, synthetic, folder)
    senticap.json?images=val2014&images=val2017   # image roots, searched in order
    photos/?val=0.1&test=0.1&seed=3       # assign splits by image to records that have none
    coco/captions_train2017.json?fraction=0.3   # a seeded 30% of the images, all their captions
    shards/{00000..00099}.tar             # WebDataset shards (also a .tar, a .parquet or a folder of them)

Options after ``?`` (``&``-separated): ``images=DIR`` (repeatable; relative to the current directory),
``val=F`` and ``test=F`` (fractions of images; assigning happens only when one is given), ``fraction=F`` (keep a
seeded share F in (0, 1] of the images, before any split is assigned) and ``seed=N`` (of both).
Without ``val``/``test``, records whose data give no split keep ``split=None`` and the trainer holds out
``data.val_fraction`` of the images (by image, seeded).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from captionkit.data.formats import coco, detect, format_names, get_format
from captionkit.data.formats.base import Probe, ReadOptions, ReadResult
from captionkit.data.records import CaptionRecord
from captionkit.data.splits import assign_splits, keep_fraction, splitting_problem
from captionkit.errors import InputError
from captionkit.files import is_url
from captionkit.shards import is_container_input

OPTION_KEYS = ("images", "val", "test", "fraction", "seed")


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: the path, a forced format (or ``None`` to detect) and the options."""

    path: Path
    format: str | None = None
    image_roots: tuple[Path, ...] = ()
    val_fraction: float | None = None
    test_fraction: float | None = None
    fraction: float | None = None  # the share of the images kept (None: all)
    seed: int = 0

    @property
    def assigns_splits(self) -> bool:
        return self.val_fraction is not None or self.test_fraction is not None


@dataclass
class LoadResult:
    """What reading a spec gave: the records plus what a check or a trainer reports about them."""

    records: list[CaptionRecord]
    format: str
    path: Path
    files: list[Path]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count (empty captions, ...)


def parse_spec(spec: str | Path) -> DataSpec:
    """Split ``[FORMAT:]PATH[?key=value&...]``; a ``Path`` is taken as it is."""
    if isinstance(spec, Path):
        return DataSpec(spec)
    text = spec.strip()
    if not text:
        raise InputError("data", "empty data spec")
    if is_url(text.partition("?")[0]):
        raise InputError(spec, "a URL: captionkit reads datasets from local files only (download it first)")
    forced = None
    head, sep, rest = text.partition(":")
    named = get_format(head) if sep else None
    if named is not None:
        forced, text = named.name, rest
    elif sep and head.isidentifier() and len(head) > 1 and not Path(text).exists():
        raise InputError(spec, f"unknown format {head!r} (formats: {', '.join(format_names())})")
    path_text, _, query = text.partition("?")
    if not path_text.strip():  # Path("") is ".": "csv:$DATA" with $DATA unset silently read the working directory
        raise InputError(spec, "no path: a spec is [FORMAT:]PATH[?OPTIONS]")
    options = _parse_options(query, spec) if query else {}
    return DataSpec(Path(path_text), forced, **options)


def _parse_options(query: str, spec: str) -> dict:
    options: dict = {}
    roots: list[Path] = []
    given: set[str] = set()
    for item in query.split("&"):
        key, equals, value = item.partition("=")
        if not equals or not value:
            raise InputError(spec, f"option {item!r} is not key=value ({', '.join(OPTION_KEYS)})")
        if key in given and key in OPTION_KEYS and key != "images":  # only images= repeats: the last val= won
            raise InputError(spec, f"option {key!r} is given twice")
        given.add(key)
        if key == "images":
            roots.append(Path(value))
        elif key in ("val", "test"):
            options[f"{key}_fraction"] = _fraction(value, key, spec)
        elif key == "fraction":
            options["fraction"] = _fraction(value, key, spec, "(0, 1]")
        elif key == "seed":
            if _INTEGER.fullmatch(value) is None:  # not int(): it takes "1_000", " 3" and other digits than 0-9
                raise InputError(spec, f"seed must be an integer, got {value!r}")
            options["seed"] = int(value)
        else:
            raise InputError(spec, f"unknown option {key!r} (options: {', '.join(OPTION_KEYS)})")
    problem = splitting_problem(
        options.get("val_fraction"), options.get("test_fraction"), options.get("seed"), options.get("fraction")
    )
    if problem is not None:
        raise InputError(spec, f"{problem[0]} {problem[1]}")
    if roots:
        options["image_roots"] = tuple(roots)
    return options


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _fraction(value: str, key: str, spec: str, interval: str = "[0, 1)") -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(spec, f"{key} must be a number in {interval}, got {value!r}") from None


def load_dataset(spec: str | Path | DataSpec) -> LoadResult:
    """Read the dataset at ``spec`` with what was dropped and why; one clear error when it cannot be read."""
    parsed = spec if isinstance(spec, DataSpec) else parse_spec(spec)
    path = parsed.path
    if not path.exists() and not is_container_input(path):  # a brace pattern of shards names no one file
        # A quoted glob reaches us unexpanded; saying only that "*.tar" does not exist leaves one guessing.
        glob = " (a * pattern is not expanded: name the folder, or shards as shards/{00000..00009}.tar)"
        raise InputError(path, f"no such file or directory{glob if '*' in str(path) else ''}")
    for root in parsed.image_roots:
        if not root.is_dir():
            raise InputError(root, "image root is not a directory")
    _check_readable(path)
    probe = Probe(path)
    chosen = (get_format(parsed.format) if parsed.format else None) or detect(probe)
    if parsed.image_roots and not chosen.takes_image_roots:  # refused: silently ignored, it would mislead
        raise InputError(path, f"images=DIR does not apply to {chosen.name} data, which holds its own images")
    return as_specified(parsed, chosen.name, chosen.read(probe, ReadOptions(parsed.image_roots)))


def _check_readable(path: Path) -> None:
    """Refuse a folder whose files cannot be listed or looked at (permission denied): each format's look for its
    files would fail on the first, naming a file that may not be there (``captions.jsonl``), or in a traceback."""
    if not path.is_dir():
        return
    try:
        with os.scandir(path):
            pass
    except OSError as error:
        raise InputError(path, f"cannot list the folder ({error.strerror or error})") from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(path, "cannot read the folder's files (permission denied)")


def as_specified(parsed: DataSpec, format_name: str, read: ReadResult) -> LoadResult:
    """What ``format_name``'s reader ``read`` for ``parsed``, with the spec's fraction and splits applied."""
    records = read.records
    if parsed.fraction is not None and parsed.fraction < 1.0:  # asked for: not "dropped" (data check, training count)
        records = keep_fraction(records, parsed.fraction, parsed.seed)
    if parsed.assigns_splits:
        records = assign_splits(records, parsed.val_fraction or 0.0, parsed.test_fraction or 0.0, parsed.seed)
    return LoadResult(records, format_name, parsed.path, read.files, read.dropped)


def separate_datasets(spec: str) -> list[str]:
    """Specs of the datasets in a folder that holds several COCO caption files without one split each (one spec
    per file, the options kept), which ``data check`` checks one by one; empty for any other spec."""
    parsed = parse_spec(spec)
    if parsed.format not in (None, "coco") or not parsed.path.is_dir():
        return []
    _check_readable(parsed.path)
    options = spec.partition("?")[2]
    return [f"{path}?{options}" if options else str(path) for path in coco.separate_files(parsed.path)]


def load_records(spec: str | Path) -> list[CaptionRecord]:
    """Records of the dataset at ``spec`` (see the module docstring); empty captions are dropped."""
    return load_dataset(spec).records
