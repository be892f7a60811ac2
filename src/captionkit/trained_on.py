"""Data read the way a model's training run read it, so that ``evaluate`` measures what the run's validation measured.

A training run keeps its settings in the model directory (``train_config.json``). Three of them change which
captions count: the seeded share of images it held out as val (when the data had no split labels), one canonical
caption per image and style (``data.first_caption_only``, which holds on the data the run read only: other data is
scored against every caption of an image, as papers score it), and the styles it trained on (``data.styles``). A
fourth, ``data.max_length``, cuts the captions it computed perplexity on. Three more say which part of its validation
data each validation used: ``train.eval_batches`` batches of ``train.batch_size`` captions for the loss and
perplexity, ``train.eval_images`` images for CIDEr-D. The figures it logged last are in the model's
``trainer_state.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from captionkit.config import DataSection, TrainSection
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_dataset, parse_spec
from captionkit.data.splits import assign_splits, separate_val_records, split_by_image, validation_captions
from captionkit.data.styles import validation_styles
from captionkit.errors import InputError
from captionkit.jsontext import parse_json

TRAIN_CONFIG = "train_config.json"
TRAINER_STATE = "trainer_state.json"
VALIDATION_KEYS = ("val_loss", "val_perplexity", "val_cider")


@dataclass(frozen=True)
class TrainedOn:
    """How a training run read its data (see the module)."""

    val_fraction: float
    seed: int
    held_out_val: bool  # val was held out of data.train (no separate data.val)
    first_caption_only: bool
    styles: tuple[str, ...]  # empty: trained without style control
    max_length: int
    eval_batches: int = TrainSection.eval_batches
    batch_size: int = TrainSection.batch_size
    eval_images: int = TrainSection.eval_images
    # Where the run read its validation data (data.val, or data.train that it held val out of), when one spec.
    validation_data: str | None = None
    # Every spec of data.train and data.val, as the run's config wrote them.
    run_data: tuple[str, ...] = ()
    # Those of data.train alone.
    train_data: tuple[str, ...] = ()
    # The run's last logged validation: step and VALIDATION_KEYS (None: no trainer_state.json, or no validation).
    last_validation: dict[str, float] | None = None

    @classmethod
    def read(cls, model: str | Path, history: bool = True) -> TrainedOn | None:
        """The settings in ``model``'s ``train_config.json``; None when ``model`` is no directory with one (a hub
        id, an export) or the file cannot be read. With ``history``, also the last validation its
        ``trainer_state.json`` logged (a file that grows with the run: loading a model does without it)."""
        settings = Path(model) / TRAIN_CONFIG
        if not settings.is_file():
            return None
        try:
            saved: Any = parse_json(settings.read_text(encoding="utf-8"), settings)
            found = cls.read_config(saved)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):
            return None
        if not history:
            return found
        return replace(found, last_validation=_last_validation(Path(model) / TRAINER_STATE))

    @classmethod
    def read_config(cls, saved: Mapping[str, Any]) -> TrainedOn:
        """The settings of a run's saved config (``TrainConfig.to_dict()``); KeyError, TypeError or ValueError when
        it lacks them."""
        data, train = saved["data"], saved["train"]
        source = data.get("val") or data.get("train")
        specs = [spec for key in ("train", "val") for spec in _specs(data.get(key))]
        return cls(
            val_fraction=float(data["val_fraction"]),
            seed=int(train["seed"]),
            held_out_val=not data.get("val"),
            first_caption_only=bool(data.get("first_caption_only", DataSection.first_caption_only)),
            styles=tuple(data.get("styles") or ()),
            max_length=int(data.get("max_length", DataSection.max_length)),
            eval_batches=int(train.get("eval_batches", TrainSection.eval_batches)),
            batch_size=int(train.get("batch_size", TrainSection.batch_size)),
            eval_images=int(train.get("eval_images", TrainSection.eval_images)),
            validation_data=source if isinstance(source, str) else None,
            run_data=tuple(specs),
            train_data=tuple(_specs(data.get("train"))),
        )

    def split(self, records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
        """Records without split labels get the run's train/val split (when it held val out of them): an image is
        in val exactly when the run's ``split_by_image`` held it out."""
        if not self.held_out_val:
            return list(records)
        return assign_splits(records, self.val_fraction, 0.0, self.seed)

    def captions(self, records: Sequence[CaptionRecord], own_data: bool = True) -> list[CaptionRecord]:
        """The captions the run trained and validated on: of its styles only, the first of each image (and style)
        with ``first_caption_only``, which applies to the data the run read only (``own_data``, see
        :meth:`read_data`)."""
        return validation_captions(records, self.first_caption_only and own_data, self.styles)

    def read_data(self, data: str, files: Sequence[Path] = (), train_only: bool = False) -> bool:
        """Whether ``data`` (whose reading opened ``files``) is data the run read, a spec of its data.train or
        data.val (of its data.train alone with ``train_only``): one that names the same file or folder, or the file
        the run named (a folder and the captions file in it are one dataset, whichever way either names it).
        Relative paths are the current directory's."""
        read = {_resolved(path) for path in files}
        given = _spec_path(data)
        for spec in self.train_data if train_only else self.run_data:
            named = _spec_path(spec)
            if named is None:
                continue
            if named in (given, *read):
                return True
            inside = read and named.is_dir() and all(path.is_relative_to(named) for path in read)
            if inside and read <= _files_read(spec):  # files of the folder the run named: those its reader read?
                return True
        return False

    def validation_records(self, records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
        """The captions the run validated on, in its order, from the records of its validation data: the images it
        held out of them (``data.train``), or every record in a val split or without a split (``data.val``)."""
        if self.held_out_val:
            return self.captions(split_by_image(records, self.val_fraction, self.seed)[1])
        return self.captions(separate_val_records(records))

    def describe_validation(self) -> str:
        """One line: what the run's validation computed its figures over."""
        # Without data.val, data that carries splits (Flickr8k's lists, Karpathy's json) validates on its own val split.
        held_out = "data.train's val split, or the images it held out of data.train (data.val_fraction)"
        source = held_out if self.held_out_val else "data.val (its val split, or all)"
        batches = f"train.eval_batches {self.eval_batches} × train.batch_size {self.batch_size}"
        captions = f"the first {self.eval_batches * self.batch_size} ({batches})" if self.eval_batches else "all"
        return f"validation data {source}; perplexity over {captions} of its captions; {self._describe_cider()}"

    def _describe_cider(self) -> str:
        """What val_cider is over: neutral captions, or, for a run with styles, each style's."""
        if not self.eval_images:
            return "no CIDEr-D (train.eval_images 0)"
        if not self.styles:
            return (
                f"CIDEr-D of greedy neutral captions of the first {self.eval_images} images (train.eval_images) "
                "against their neutral references"
            )
        return (
            f"CIDEr-D per style ({', '.join(validation_styles(self.styles))}) of greedy captions, each from its "
            f"style's start token, of the first {self.eval_images} images (train.eval_images) with references in "
            "that style, against those references; val_cider the mean over styles"
        )

    def describe(self, own_data: bool = True) -> str:
        """One line for the output: how the captions were chosen, on the run's own data or on other data."""
        chosen = "the first caption of each image" + (" and style" if self.styles else "")
        styles = f" in the styles {', '.join(self.styles)}" if self.styles else ""
        if own_data or not self.first_caption_only:
            return (chosen if self.first_caption_only else "every caption") + styles + " (as the model's training run)"
        return (
            f"every caption{styles} (the model's training run kept {chosen} of its own data only, "
            "data.first_caption_only)"
        )


def _specs(value: Any) -> list[str]:
    """The data specs of a saved data.train or data.val: one string, or a list of them."""
    if isinstance(value, str):
        return [value] if value else []
    return [spec for spec in value if isinstance(spec, str)] if isinstance(value, list) else []


def _spec_path(spec: str) -> Path | None:
    """The resolved path a data spec names (its format prefix and options aside); None for a spec that names none."""
    try:
        return _resolved(parse_spec(spec).path)
    except InputError:
        return None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def _files_read(spec: str) -> set[Path]:
    """The files reading ``spec`` opens (none when it cannot be read any more)."""
    try:
        return {_resolved(path) for path in load_dataset(spec).files}
    except (InputError, OSError):
        return set()


def _last_validation(state_file: Path) -> dict[str, float] | None:
    """The last entry of a run's history with validation figures: its step and those figures."""
    try:
        state: Any = parse_json(state_file.read_text(encoding="utf-8"), state_file, non_finite=True)
    except (OSError, InputError):
        return None
    history = state.get("history") if isinstance(state, dict) else None
    entries = [e for e in history if isinstance(e, dict) and "val_loss" in e] if isinstance(history, list) else []
    if not entries:
        return None
    return {key: entries[-1][key] for key in ("step", *VALIDATION_KEYS) if key in entries[-1]}
