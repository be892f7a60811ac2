"""Splitting records by image (never by caption), seeded and stable."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from captionkit.data.records import CaptionRecord
from captionkit.errors import InputError

#: The largest seed of a split by image, and of a training run (``train.seed``): numpy's generator, seeded from it,
#: takes no other. ``data check`` and a spec's ``seed=`` take the seeds a run can split with.
MAX_SEED = 2**32 - 1

# The split names that mean validation data.
VAL_SPLITS = frozenset({"val", "dev", "validation"})


def splitting_problem(
    val_fraction: float | None, test_fraction: float | None, seed: int | None = None, fraction: float | None = None
) -> tuple[str, str] | None:
    """The first of the options that split data by image that cannot be used, as ``(option, reason)``: option
    ``"val"``, ``"test"``, ``"val and test"`` (their sum), ``"seed"`` or ``"fraction"`` (the share of the images
    kept, :func:`keep_fraction`); ``None`` when every one given (not ``None``) can. The one check of a spec's
    ``val=``/``test=``/``seed=``/``fraction=`` and of ``data check``'s flags, each naming the option as its user
    spells it."""
    for option, share in (("val", val_fraction), ("test", test_fraction)):
        if share is not None and not 0.0 <= share < 1.0:
            return option, f"must be in [0, 1), got {share:g}"
    if fraction is not None and not 0.0 < fraction <= 1.0:
        return "fraction", f"must be in (0, 1] (the share of the images kept), got {fraction:g}"
    val, test = val_fraction or 0.0, test_fraction or 0.0
    if val + test >= 1.0:
        return "val and test", f"must sum below 1, got {val:g} + {test:g}"
    if seed is not None and not 0 <= seed <= MAX_SEED:  # a training run's train.seed takes no other
        return "seed", f"must be in [0, {MAX_SEED}], got {seed}"
    return None


def _unit_interval(image_id: str, seed: int) -> float:
    # A hash, not random.shuffle: an image keeps its split when other images are added or removed.
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def keep_fraction(records: Sequence[CaptionRecord], fraction: float, seed: int = 0) -> list[CaptionRecord]:
    """The records of a seeded ``fraction`` of the images (each image with all its captions), to train on part of a
    dataset: the same images whatever other images there are, and drawn apart from the val/test split's hash (a
    share of the images that keeps the data's val share)."""
    return [record for record in records if _unit_interval(f"fraction:{record.image_id}", seed) < fraction]


def _given_splits(records: Sequence[CaptionRecord]) -> dict[str | Path, str]:
    """image id, and image file -> the split the data gives one of its captions: a table may label only some rows of
    an image, and its other captions must follow them rather than be hashed into another split (a leak); so must
    the captions another dataset gives the same file under another id (COCO captions beside SentiCap's splits)."""
    given: dict[str | Path, str] = {}
    for record in records:
        if record.split is not None:
            given.setdefault(record.image_id, record.split)
            given.setdefault(record.image_path, record.split)
    return given


def _given_split(given: dict[str | Path, str], record: CaptionRecord) -> str | None:
    return given.get(record.image_id) or given.get(record.image_path)


def training_records(
    records: Sequence[CaptionRecord], held_out: Iterable[CaptionRecord] = ()
) -> tuple[list[CaptionRecord], int]:
    """The records a run with separate validation data (``data.val``, ``held_out``) trains on: those of the train
    split or of none, but no image held out, by its file: one that another record puts in another split (data.train
    read from several datasets: a COCO captions file without splits holds SentiCap's test images) or one of the
    validation data; and how many images that left out."""
    elsewhere = {record.image_path for record in records if record.split not in (None, "train")}
    elsewhere |= {record.image_path for record in held_out}
    kept: list[CaptionRecord] = []
    left_out: set[Path] = set()
    for record in records:
        if record.split not in (None, "train"):
            continue
        if record.image_path in elsewhere:
            left_out.add(record.image_path)
        else:
            kept.append(record)
    return kept, len(left_out)


def split_by_image(
    records: Sequence[CaptionRecord], val_fraction: float, seed: int = 0
) -> tuple[list[CaptionRecord], list[CaptionRecord]]:
    """(train, val): each image with all its captions goes to one side; records' own ``split`` wins when set."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train: list[CaptionRecord] = []
    val: list[CaptionRecord] = []
    given = _given_splits(records)
    for record in records:
        split = record.split or _given_split(given, record)
        if split is not None:
            side = val if split in VAL_SPLITS else train if split == "train" else None
        else:
            side = val if _unit_interval(record.image_id, seed) < val_fraction else train
        if side is not None:
            side.append(record)
    return train, val


def assign_splits(
    records: Sequence[CaptionRecord], val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> list[CaptionRecord]:
    """Records with a split each: those without one get their image's split from its other records, else
    train/val/test by image, seeded; others keep theirs.

    The same hash as :func:`split_by_image` (with ``test_fraction`` 0 an image lands in val exactly when
    ``split_by_image`` would put it there), so ``data check`` shows the split a training run will use.
    """
    problem = splitting_problem(val_fraction, test_fraction)
    if problem is not None:
        raise ValueError(f"{problem[0]} fraction {problem[1]}")
    assigned = []
    given = _given_splits(records)
    for record in records:
        if record.split is None:
            split = _given_split(given, record)
            if split is None:
                where = _unit_interval(record.image_id, seed)
                split = "val" if where < val_fraction else "test" if where < val_fraction + test_fraction else "train"
            record = dataclasses.replace(record, split=split)
        assigned.append(record)
    return assigned


def select_split(records: Sequence[CaptionRecord], split: str) -> list[CaptionRecord]:
    """Records whose ``split`` is ``split`` (``val`` also matches ``dev`` and ``validation``)."""
    names = VAL_SPLITS if split in VAL_SPLITS else {split}
    return [record for record in records if record.split in names]


def first_caption_per_image(records: Sequence[CaptionRecord], by_style: bool = False) -> list[CaptionRecord]:
    """The first record of each image (of each (image, style) with ``by_style``), in order."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        key = (record.image_id, record.style if by_style else "")
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def separate_val_records(records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
    """What a training run validates on of its ``data.val``: every record in a val split or without a split."""
    return [record for record in records if record.split is None or record.split in VAL_SPLITS]


def validation_captions(
    records: Sequence[CaptionRecord], first_caption_only: bool, styles: Collection[str]
) -> list[CaptionRecord]:
    """The captions of validation ``records`` a training run keeps, in order: those of its ``styles`` (every caption
    without styles), and of those the first of each image (and style) with ``first_caption_only``."""
    if styles:
        records = [record for record in records if record.style in styles]
    if first_caption_only:
        return first_caption_per_image(records, by_style=bool(styles))
    return list(records)


def evaluation_split(
    records: Sequence[CaptionRecord], split: str | None, source: object = "--split"
) -> tuple[list[CaptionRecord], str]:
    """The records ``evaluate`` scores for ``--split`` (None: the default) and one line saying which they are.

    The default is the test split where the data has one; else, where it has train and val splits, the val split
    (its other images are training images, whose scores say little); else every record (data without a test split,
    such as an unsplit COCO captions file, is evaluated whole). ``all``: every record. Another name with no records
    is an error naming the splits there are.
    """
    images = len({record.image_id for record in records})
    if split is None and not any(record.split == "test" for record in records):
        training = len({record.image_id for record in records if record.split == "train"})
        val = select_split(records, "val")
        if training and val:
            held_out = len({record.image_id for record in val})
            reason = "the data has no test split; its other images are in its train split: --split all takes them too"
            return val, f"the val split: {held_out} of {images} images ({reason})"
        verb = "is" if training == 1 else "are"
        trained_on = f"; {training} of them {verb} in its train split" if training else ""
        return list(records), f"{_all_images(images)} (the data has no test split{trained_on})"
    if split == "all":
        return list(records), _all_images(images)
    name = split or "test"
    chosen = select_split(records, name)
    if not chosen:
        found = sorted({record.split for record in records if record.split})
        there = f"its splits: {', '.join(found)}" if found else "it has no split labels"
        raise InputError(source, f"no captions in split {name!r} ({there}; --split all takes every caption)")
    return chosen, f"the {name} split: {len({record.image_id for record in chosen}):,} of {images:,} images"


def _all_images(count: int) -> str:
    """Every one of ``count`` images, in English: "all 3 images", but "its 1 image" (not "all 1 images")."""
    return f"all {count:,} images" if count != 1 else "its 1 image"
