"""Recipe values that parse but that a run cannot use: each one is one ``ConfigError`` line naming the key, raised
before the step that would fail on it (with a traceback from torch, or an IndexError in the middle of a run).

These need the model or the data, so they are made where a run starts, which every way into training (the CLI,
``captionkit.training.loop.train``) passes through. Checks of a value alone (betas, ``min_lr_ratio``, the last
stage's ``until_step``) are config.py's, made as the recipe is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from captionkit.config import TrainConfig
from captionkit.data.records import CaptionRecord
from captionkit.data.splits import first_caption_per_image, split_by_image
from captionkit.errors import ConfigError, InputError
from captionkit.models.base import CaptionModel
from captionkit.models.config_file import CONFIG_FILE
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, style_token_ids
from captionkit.trained_on import TRAIN_CONFIG
from captionkit.training.stages import Stages


def check_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """The final model replaces the run directory's model files one by one: a directory this run starts from (a part,
    the checkpoint it fine-tunes) or one holding a model that no training run wrote (a hub download, an export's
    source) would lose its files. Refused before any work."""
    starts = {
        "model.pretrained": config.model.pretrained,
        "model.encoder": config.model.encoder,
        "model.decoder": config.model.decoder,
        "tokenizer.pretrained": config.tokenizer.pretrained,
    }
    for key, source in starts.items():
        if source and Path(source).is_dir() and Path(source).resolve() == run_dir.resolve():
            raise InputError(run_dir, f"is {key}, which this run starts from: train into another directory")
    if (run_dir / CONFIG_FILE).is_file() and not (run_dir / TRAIN_CONFIG).is_file():
        written = f"{CONFIG_FILE} without {TRAIN_CONFIG}"
        reason = f"holds a model that no training run wrote ({written}): train into a new or empty directory"
        raise InputError(run_dir, reason)


def check_overrides_kept(config: TrainConfig, model: CaptionModel) -> None:
    """Fine-tuning keeps the checkpoint's own config (``model.pretrained``): ``model.overrides`` must agree with it
    (a recipe may inherit through ``_base_`` the ones its checkpoint was trained with). One that differs would be
    ignored, so it is refused; so is one the checkpoint's family has no setting for. The family's
    ``training_settings`` (a cnn-lstm's teacher_forcing_ratio, attention_penalty) are the exception: they shape
    training alone, so a fine-tune takes them (checked as a new model's are), and its checkpoint records them."""
    source = config.model.pretrained
    changed: dict[str, object] = {}
    for key, value in config.model.overrides.items():
        holder = model if key.endswith("_token_id") else model.config
        if not hasattr(holder, key):
            raise ConfigError(f"model.overrides.{key}", f"{source} is a {model.family} model, which has no {key}")
        kept = getattr(holder, key)
        if _comparable(kept) == _comparable(value):  # a recipe's list, a config's tuple
            continue
        if key in model.training_settings:
            changed[key] = value
            continue
        reason = f"is {value!r}, but {source} has {kept!r}: fine-tuning keeps the checkpoint's config"
        raise ConfigError(f"model.overrides.{key}", f"{reason} (leave the override out)")
    if changed:
        try:
            model.config = model.config.replace(**changed)  # type: ignore[operator]
        except ConfigError as error:
            raise ConfigError(f"model.overrides.{error.source}", error.reason) from None


def _comparable(value: object) -> object:
    return tuple(map(_comparable, value)) if isinstance(value, list | tuple) else value


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


def check_validation(
    config: TrainConfig, val_records: Sequence[CaptionRecord], train_records: Sequence[CaptionRecord] = ()
) -> None:
    """Early stopping without validation data would never stop: refused rather than ignored. Where
    ``data.val_fraction`` held out no image of a small data set, the error says so and what fraction would."""
    if config.train.patience and not any(record.caption.strip() for record in val_records):
        reason = "early stopping needs validation captions (data.val, or data.val_fraction > 0), and there are none"
        fraction = config.data.val_fraction
        if fraction and not config.data.val and train_records:
            reason = f"{reason}: {_held_out_none(train_records, fraction, config.train.seed)}"
        raise ConfigError("train.patience", reason)


SMALL_DATA = 1000  # images: a larger set held out none only through its own splits


def _held_out_none(records: Sequence[CaptionRecord], fraction: float, seed: int) -> str:
    """Why ``data.val_fraction`` held out nothing and what to do: each image without a split of its own goes to
    validation with that chance (a seeded hash of its id, captionkit.data.splits), so a few may all stay in training;
    images the data itself puts in training stay there."""
    images = first_caption_per_image(records)
    movable = split_by_image(images, 0.999999, seed)[1]  # those the data gives no split of their own
    if not movable:
        own = f"the data's own splits put all {len(images):,} images in training (data.val_fraction applies to none)"
        return f"{own}; give data.val, or set train.patience: 0"
    said = f"data.val_fraction {fraction:g} of {len(movable):,} images holds out none"
    remedy = "give data.val, or set train.patience: 0"
    if len(movable) <= SMALL_DATA:
        enough = next((step / 100 for step in range(1, 100) if split_by_image(movable, step / 100, seed)[1]), None)
        if enough is not None and enough > fraction:
            remedy = f"give data.val, set data.val_fraction to {enough:g} or more, or set train.patience: 0"
    return f"{said} (each image goes with that chance); {remedy}"


def check_resumed_styles(config: TrainConfig, tokenizer: CaptionTokenizer, resume_from: Path | None) -> None:
    """A run resumed (``--resume``) with ``data.styles`` its checkpoint's tokenizer has no start token for: the
    model's vocabulary and optimizer are the checkpoint's, so no style can be added. Refused before any work, not
    at the first validation, which stopped the run there and left its directory without COMPLETE."""
    if resume_from is None:
        return
    known = style_token_ids(tokenizer)
    missing = [style for style in config.data.styles if style != NEUTRAL and style not in known]
    if missing:
        reason = (
            f"{', '.join(missing)} has no start token in {resume_from}, which was trained without it: a resumed "
            "run cannot add styles (--no-resume to start over, or choose another output directory)"
        )
        raise ConfigError("data.styles", reason)


# Parameter groups that do not read the caption's tokens: a style start token reaches none of them.
_IMAGE_SIDE_GROUPS = frozenset({"encoder", "mapper"})


def check_styles_learnable(config: TrainConfig, model: CaptionModel, stages: Stages) -> None:
    """A style is learnt through its start token, which only the decoder side reads (its token table and the layers
    after it): a run in which none of that ever trains (prefix-gpt2 with ``freeze_decoder``, as ClipCap's transformer
    recipe has it; or stages that never reach the decoder) would leave each new style token as it was made, random,
    and write one caption whatever the style asked. Refused before any work."""
    styles = [style for style in config.data.styles if style != NEUTRAL]
    if not styles:
        return
    groups = model.parameter_groups()
    reading = {name for group, names in groups.items() if group not in _IMAGE_SIDE_GROUPS for name in names}
    if not reading:  # a family that names no groups: nothing to tell
        return
    if stages.stages:
        trained = any(
            names is None or names & reading
            for names in (stages.trained_names(index) for index in range(len(stages.stages)))
        )
    else:
        trained = any(parameter.requires_grad for name, parameter in model.named_parameters() if name in reading)
    if not trained:
        reason = (
            f"{', '.join(styles)} would not be learnt: no stage of this run trains the decoder, the only part that "
            "reads a style's start token (unfreeze it, e.g. model.overrides.freeze_decoder=false, or a stage that "
            "trains it)"
        )
        raise ConfigError("data.styles", reason)
