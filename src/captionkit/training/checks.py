"""Recipe values that parse but that a run cannot use: each one is one ``ConfigError`` line naming the key, raised
before the step that would fail on it (with a traceback from torch, or an IndexError in the middle of a run).

These need the model or the data, so they are made where a run starts, which every way into training (the CLI,
``captionkit.training.loop.train``) passes through. Checks of a value alone (betas, ``min_lr_ratio``, the last
stage's ``until_step``) are config.py's, made as the recipe is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from captionkit.config import TrainConfig
from captionkit.data.records import CaptionRecord
from captionkit.errors import ConfigError
from captionkit.models.base import CaptionModel


def check_lengths(config: TrainConfig, model: CaptionModel) -> None:
    """Captions (``data.max_length`` tokens, start and eos included) and SCST samples must fit the decoder's
    positions: past them its position table has no row, and the first long caption would crash the run."""
    limit = model.max_positions
    if limit is None:  # an LSTM: no position table
        return
    if config.data.max_length > limit:
        reason = f"must be at most {limit} (the positions of this model's decoder), got {config.data.max_length}"
        raise ConfigError("data.max_length", reason)
    scst = config.train.scst
    # A sample is re-scored behind its start token: max_new_tokens + 1 positions (validation's caption_budget too).
    if config.train.objective == "scst" and scst.max_new_tokens > limit - 1:
        reason = (
            f"must be at most {limit - 1} (the {limit} positions of this model's decoder less the start token), "
            f"got {scst.max_new_tokens}"
        )
        raise ConfigError("train.scst.max_new_tokens", reason)


def check_validation(config: TrainConfig, val_records: Sequence[CaptionRecord]) -> None:
    """Early stopping without validation data would never stop: refused rather than ignored."""
    if config.train.patience and not any(record.caption.strip() for record in val_records):
        reason = "early stopping needs validation captions (data.val, or data.val_fraction > 0), and there are none"
        raise ConfigError("train.patience", reason)
