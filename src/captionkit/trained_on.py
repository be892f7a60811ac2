"""Data read the way a model's training run read it, so that ``evaluate`` measures what the run's validation measured.

A training run keeps its settings in the model directory (``train_config.json``). Three of them change which
captions count: the seeded share of images it held out as val (when the data had no split labels), one canonical
caption per image and style (``data.first_caption_only``), and the styles it trained on (``data.styles``). A fourth,
``data.max_length``, cuts the captions it computed perplexity on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captionkit.config import DataSection
from captionkit.data.records import CaptionRecord
from captionkit.data.splits import assign_splits, first_caption_per_image
from captionkit.errors import InputError
from captionkit.jsontext import parse_json

TRAIN_CONFIG = "train_config.json"


@dataclass(frozen=True)
class TrainedOn:
    """How a training run read its data (see the module)."""

    val_fraction: float
    seed: int
    held_out_val: bool  # val was held out of data.train (no separate data.val)
    first_caption_only: bool
    styles: tuple[str, ...]  # empty: trained without style control
    max_length: int

    @classmethod
    def read(cls, model: str | Path) -> TrainedOn | None:
        """The settings in ``model``'s ``train_config.json``; None when ``model`` is no directory with one (a hub
        id, an export) or the file cannot be read."""
        settings = Path(model) / TRAIN_CONFIG
        if not settings.is_file():
            return None
        try:
            saved: Any = parse_json(settings.read_text(encoding="utf-8"), settings)
            data, train = saved["data"], saved["train"]
            return cls(
                val_fraction=float(data["val_fraction"]),
                seed=int(train["seed"]),
                held_out_val=not data.get("val"),
                first_caption_only=bool(data.get("first_caption_only", DataSection.first_caption_only)),
                styles=tuple(data.get("styles") or ()),
                max_length=int(data.get("max_length", DataSection.max_length)),
            )
        except (OSError, ValueError, KeyError, TypeError, InputError):
            return None

    def split(self, records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
        """Records without split labels get the run's train/val split (when it held val out of them)."""
        if not self.held_out_val or any(record.split for record in records):
            return list(records)
        return assign_splits(records, self.val_fraction, 0.0, self.seed)

    def captions(self, records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
        """The captions the run trained and validated on: of its styles only, the first of each image (and style)
        with ``first_caption_only``."""
        if self.styles:
            records = [record for record in records if record.style in self.styles]
        if self.first_caption_only:
            records = first_caption_per_image(records, by_style=bool(self.styles))
        return list(records)

    def describe(self) -> str:
        """One line for the output: how the captions were chosen."""
        chosen = "the first caption of each image" + (" and style" if self.styles else "")
        styles = f" in the styles {', '.join(self.styles)}" if self.styles else ""
        return (chosen if self.first_caption_only else "every caption") + styles + " (as the model's training run)"
