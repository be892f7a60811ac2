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
        )

    def split(self, records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
        """Records without split labels get the run's train/val split (when it held val out of them): an image is
        in val exactly when the run's ``split_by_image`` held it out."""
        if not self.held_out_val:
            return list(records)
        return assign_splits(records, self.val_fraction, 0.0, self.seed)

    def captions(self, records: Sequence[CaptionRecord], data: str | None = None) -> list[CaptionRecord]:
        """The captions the run trained and validated on: of its styles only, the first of each image (and style)
        with ``first_caption_only``, which applies to the data the run read only (``data`` None: that data)."""
        return validation_captions(records, self._first_only(data), self.styles)

    def read_data(self, data: str) -> bool:
        """Whether ``data`` is a spec of the run's data.train or data.val: as written, or naming the same file or
        folder (with the same options after ``?``)."""
        path, _, options = data.partition("?")
        for spec in self.run_data:
            spec_path, _, spec_options = spec.partition("?")
            if spec == data or (options == spec_options and _same_path(path, spec_path)):
                return True
        return False

    def _first_only(self, data: str | None) -> bool:
        return self.first_caption_only and (data is None or self.read_data(data))

    def validation_records(self, records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
        """The captions the run validated on, in its order, from the records of its validation data: the images it
        held out of them (``data.train``), or every record in a val split or without a split (``data.val``)."""
        if self.held_out_val:
            return self.captions(split_by_image(records, self.val_fraction, self.seed)[1])
        return self.captions(separate_val_records(records))

    def describe_validation(self) -> str:
        """One line: what the run's validation computed its figures over."""
        source = "the images it held out of data.train" if self.held_out_val else "data.val (its val split, or all)"
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

    def describe(self, data: str | None = None) -> str:
        """One line for the output: how the captions of ``data`` (None: the run's own) were chosen."""
        chosen = "the first caption of each image" + (" and style" if self.styles else "")
        styles = f" in the styles {', '.join(self.styles)}" if self.styles else ""
        if self._first_only(data) or not self.first_caption_only:
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


def _same_path(path: str, other: str) -> bool:
    """Whether two paths name one existing file or folder."""
    try:
        return Path(path).exists() and Path(path).resolve() == Path(other).resolve()
    except (OSError, ValueError):
        return False


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
