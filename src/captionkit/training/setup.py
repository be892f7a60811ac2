"""What a run trains: the records (split, styled), the tokenizer and the model, and the optimizer over it.

The model and tokenizer are pretrained ones (``model.pretrained``), a checkpoint's to resume, or new ones built from
the family's preset with a tokenizer trained on the captions.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionkit.config import TrainConfig
from captionkit.data.formats.base import EMPTY_CAPTION
from captionkit.data.records import CaptionRecord
from captionkit.data.shard_set import ScannedShards, ShardSet, scan_shards
from captionkit.data.sources import load_dataset
from captionkit.data.splits import (
    first_caption_per_image,
    separate_val_records,
    split_by_image,
    training_records,
    validation_captions,
)
from captionkit.data.styles import first_caption_per_style, mix_styles
from captionkit.errors import InputError, ModelLoadError
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.parts import check_decoder_part
from captionkit.models.registry import create_model, preprocessing_for, train_tokenizer
from captionkit.parts import CaptionerParts, refuse_export
from captionkit.shards import container_files, is_container_input
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, add_style_tokens
from captionkit.training.checkpoint import DAMAGED_CHECKPOINT_HINT
from captionkit.training.checks import check_overrides_kept
from captionkit.training.scst import CiderReward, StyleCiderReward
from captionkit.training.validation import neutral_references
from captionkit.wording import tally

logger = logging.getLogger(__name__)

# Position tables are not decayed either: weight decay would pull a sin-cos start back to zero. Their names: HF
# ViT, BERT and GPT-2's (``position_embeddings``, ``wpe``), CLIP and BLIP vision towers' (``position_embedding``,
# which GIT's image encoder is too) and timm's (``pos_embed``). Nor are a vision transformer's learned tokens (as
# timm's ``no_weight_decay`` and BLIP's and CLIP's training leave them): the class token (HF ViT and timm
# ``cls_token``, BLIP's (1, 1, D) ``class_embedding``), DeiT's distillation token, register tokens, and the
# learned constants of prefix-gpt2's transformer mapper (ClipCap's ``prefix_const``, a position table of the prefix).
_NO_DECAY_NAMES = (
    "position_embedding",
    "wpe",
    "pos_embed",
    "cls_token",
    "class_embedding",
    "distillation_token",
    "dist_token",
    "register_tokens",
    "reg_token",
    "prefix_const",
)


@dataclass
class Setup:
    """Everything a run trains with, built from the config."""

    model: CaptionModel
    tokenizer: CaptionTokenizer
    preprocessing: Preprocessing
    train_records: list[CaptionRecord]  # empty when the run streams shards (train_shards)
    val_records: list[CaptionRecord]
    # Empty captions the readers dropped from the training data (as `data check` counts them).
    empty_captions: int = 0
    train_shards: ShardSet | None = None  # WebDataset/Parquet training data, streamed (training/shard_stream.py)
    # Each data.train spec as read (what the run's summary reports per dataset); empty for a caller's setup.
    sources: list[DataSource] = field(default_factory=list)


@dataclass
class DataSource:
    """One dataset of ``data.train``: what its reader dropped (reason -> count) and, when there are several, its
    records, to count each one's share of the training data after the split."""

    spec: str
    dropped: dict[str, int]
    records: frozenset[CaptionRecord] = frozenset()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def drop_empty_captions(records: list[CaptionRecord]) -> tuple[list[CaptionRecord], int]:
    kept = [record for record in records if record.caption.strip()]
    return kept, len(records) - len(kept)


def load_all_records(
    specs: str | list[str], sources: list[DataSource] | None = None, said: Collection[str] = ()
) -> tuple[list[CaptionRecord], int]:
    """The records of one dataset spec, or of several read as one dataset; and how many empty captions the readers
    dropped. What each spec's reader dropped is logged, but for the specs in ``said`` (read before, and logged
    then); each spec is added to ``sources`` when given."""
    records: list[CaptionRecord] = []
    empty = 0
    several = not isinstance(specs, str) and len(specs) > 1
    for spec in [specs] if isinstance(specs, str) else specs:
        loaded = load_dataset(spec)
        records += loaded.records
        empty += loaded.dropped.get(EMPTY_CAPTION, 0)
        if str(spec) not in said:
            report_dropped(spec, loaded.dropped)
        if sources is not None:
            kept = frozenset(loaded.records) if several else frozenset()
            sources.append(DataSource(str(spec), dict(loaded.dropped), kept))
    return records, empty


def report_dropped(source: object, dropped: Mapping[str, int]) -> None:
    """Log what a reader left out besides empty captions (which the run counts and logs): captions of images in no
    split list, images without a caption file, rejected captions, damaged shards... so that none goes unseen."""
    for reason, count in sorted(dropped.items()):
        if reason != EMPTY_CAPTION:
            logger.warning("%s: dropped %s", source, tally({reason: count}))


def report_unused_styles(source: object, records: Sequence[CaptionRecord]) -> None:
    """Say that styled captions (a style column, SentiCap) train as plain ones in a run without ``data.styles``:
    the data says positive or negative, and without the setting no start token learns it (on purpose in
    the recipe senticap-vit-gpt2, which learns one mix, as the hub's SentiCap fine-tunes did)."""
    styled = Counter(record.style for record in records if record.style != NEUTRAL)
    if styled:
        counts = " and ".join(f"{count} {style}" for style, count in sorted(styled.items(), reverse=True))
        logger.info(
            "%s: its %s captions train as plain captions, one mix of sentiments (data.styles, e.g. {neutral: 0.5, "
            "positive: 0.25, negative: 0.25}, would give each style a start token, for captions in a chosen style)",
            source,
            counts,
        )


def build_setup(config: TrainConfig, resume_from: Path | None = None) -> Setup:
    """Read the data, then get the tokenizer and model: pretrained ones, a checkpoint's to resume, or new ones.
    Shards are scanned (counted) rather than read into records, when the run can stream them."""
    if config.model.pretrained and resume_from is None:  # an export to train from: refused before the data is read
        refuse_export(Path(config.model.pretrained), config.model.pretrained)
    shards = streamed_shards(config)
    train_shards = None
    if shards is not None:
        scanned = _scanned(config, shards)
        train_records: list[CaptionRecord] = []
        val_records, empty, train_shards = scanned.val_records, scanned.empty_captions, scanned.train
        captions: Iterable[str] = train_shards.captions()
        sources = [DataSource(", ".join(map(str, shards_specs(config))), dict(scanned.dropped))]
    else:
        sources = []
        train_records, val_records, empty = _records(config, sources)
        captions = (r.caption for r in train_records if r.caption.strip())
    if resume_from is not None:
        model, tokenizer, preprocessing = from_checkpoint(resume_from)
    elif config.model.pretrained:
        model, tokenizer, preprocessing = _pretrained(config)
    else:
        model, tokenizer, preprocessing = _new_model(config, captions)
    if resume_from is None and config.model.prompt:
        model.set_prompt(tuple(tokenizer.encode(config.model.prompt)))
    return Setup(model, tokenizer, preprocessing, train_records, val_records, empty, train_shards, sources)


def shards_specs(config: TrainConfig) -> list[str]:
    train = config.data.train
    return [train] if isinstance(train, str) else list(train)


def streamed_shards(config: TrainConfig) -> list[Path] | None:
    """The shard files of ``data.train`` when the run streams them: every spec names WebDataset/Parquet shards
    (without a format prefix or options) and no option needs every record at hand (style mixing, SCST's grouping
    by image); ``None`` otherwise."""
    if not config.data.train or config.data.styles or config.train.objective == "scst":
        return None
    specs = [config.data.train] if isinstance(config.data.train, str) else config.data.train
    if not all(is_container_input(spec) for spec in specs):
        return None
    return [file for spec in specs for file in container_files(spec)]


def _scanned(config: TrainConfig, shards: list[Path]) -> ScannedShards:
    data = config.data
    val_fraction = 0.0 if data.val else data.val_fraction
    scanned = scan_shards(shards, val_fraction, config.train.seed, data.first_caption_only)
    specs = [data.train] if isinstance(data.train, str) else data.train
    report_dropped(", ".join(specs), scanned.dropped)
    if data.val:
        scanned.val_records = validation_captions(_val_data(config)[0], data.first_caption_only, ())
    return scanned


def _val_data(config: TrainConfig) -> tuple[list[CaptionRecord], list[CaptionRecord]]:
    """The records of ``data.val`` without a split or in a validation split (validated on), and every record of it
    not in its train split (its test split too: held out of training). What the readers dropped from a dataset
    that is also in ``data.train`` was logged with it, and is not logged twice."""
    records = load_all_records(config.data.val, said=shards_specs(config))[0]
    return separate_val_records(records), [record for record in records if record.split != "train"]


def _records(
    config: TrainConfig, sources: list[DataSource] | None = None
) -> tuple[list[CaptionRecord], list[CaptionRecord], int]:
    """(training records, validation records, empty captions dropped from the training data); each spec of
    ``data.train`` added to ``sources`` when given."""
    if not config.data.train:
        raise InputError("data.train", "no training data given (a dataset file or directory, see README 'Data')")
    records, empty = load_all_records(config.data.train, sources)
    if config.data.val:
        val_records, not_for_training = _val_data(config)
        train_records, held_out = training_records(records, not_for_training)
        if held_out and not train_records:  # data.val is data.train (without splits): validating on training images
            train_records = training_records(records)[0]
            logger.warning(
                "data.val holds every image of data.train: the run validates on the images it trains on (give "
                "data.val other images, or leave it empty to hold out data.val_fraction of data.train)"
            )
        elif held_out:
            which = f"{held_out} images that are validation or test images"
            if held_out == 1:
                which = "1 image that is a validation or test image"
            logger.info(
                "data.train: left out %s (data.val, or another split of the data), so that no score is over images "
                "the run trained on",
                which,
            )
    else:
        train_records, val_records = split_by_image(records, config.data.val_fraction, config.train.seed)
    styles = config.data.styles
    if config.data.first_caption_only:
        train_records = (first_caption_per_style if styles else first_caption_per_image)(train_records)
    # The same choice as `evaluate --as-validation` makes (captionkit.trained_on).
    val_records = validation_captions(val_records, config.data.first_caption_only, styles)
    if not train_records:
        raise InputError(config.data.train, "no training captions after splitting")
    if styles:
        train_records = mix_styles(train_records, styles, config.train.seed, config.data.train)
    else:
        # Counted over what trains: not the validation and test images, and with data.first_caption_only only an
        # image's first caption (none of the scenes', whose first is neutral).
        train = config.data.train
        report_unused_styles(train if isinstance(train, str) else ", ".join(map(str, train)), train_records)
    return train_records, val_records, empty


def _pretrained(config: TrainConfig) -> tuple[CaptionModel, CaptionTokenizer, Preprocessing]:
    parts = CaptionerParts.load(config.model.pretrained, config.tokenizer.pretrained)
    model, tokenizer = parts.model, parts.tokenizer
    check_overrides_kept(config, model)
    if config.data.styles:
        add_style_tokens(tokenizer, config.data.styles)
        if tokenizer.vocab_size > model.vocab_size:
            model.resize_vocabulary(tokenizer.vocab_size)
    return model, tokenizer, parts.preprocessing


def _new_model(config: TrainConfig, captions: Iterable[str]) -> tuple[CaptionModel, CaptionTokenizer, Preprocessing]:
    if config.model.decoder:
        check_decoder_part(config.model.decoder)
    if config.tokenizer.pretrained:
        tokenizer = CaptionTokenizer.load(config.tokenizer.pretrained)
    else:
        # The family picks the tokenizer kind: byte-level BPE (GPT-2 families) or words (cnn-lstm*).
        tokenizer = train_tokenizer(
            config.model.family,
            captions,
            config.tokenizer.vocab_size,
            config.tokenizer.lowercase,
        )
    if config.data.styles:
        add_style_tokens(tokenizer, config.data.styles)
    model = create_model(
        config.model.family,
        config.model.preset,
        tokenizer,
        config.model.position_init,
        config.model.encoder,
        config.model.decoder,
        **config.model.overrides,
    )
    return model, tokenizer, preprocessing_for(model)


def from_checkpoint(directory: Path) -> tuple[CaptionModel, CaptionTokenizer, Preprocessing]:
    """The model, tokenizer and preprocessing of the checkpoint to resume from; one that cannot be loaded (weights
    cut short) is an error that says how to go on."""
    try:
        parts = CaptionerParts.load(directory)
    except ModelLoadError as error:
        raise ModelLoadError(error.source, f"{error.reason}; {DAMAGED_CHECKPOINT_HINT}") from None
    return parts.model, parts.tokenizer, parts.preprocessing


def prepared_setup(config: TrainConfig, setup: Setup | None, resume_from: Path | None) -> Setup:
    """The caller's setup, or one built from the config; resuming, the checkpoint's model, tokenizer and
    preprocessing with the caller's records."""
    if setup is None:
        return build_setup(config, resume_from)
    if resume_from is None:
        return setup
    parts = from_checkpoint(resume_from)
    return Setup(
        *parts, setup.train_records, setup.val_records, setup.empty_captions, setup.train_shards, setup.sources
    )


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over every parameter, frozen ones too: staged unfreezing turns them on later, and a parameter without
    a gradient is left alone. Fused (one kernel for all parameters) on a GPU."""
    fused = True if device.type == "cuda" else None
    groups = _param_groups(model, config.train.weight_decay)
    return torch.optim.AdamW(groups, lr=config.train.lr, betas=config.train.betas, fused=fused)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases, norms, position tables and learned tokens: the usual AdamW practice.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        keep = parameter.ndim < 2 or any(part in name for part in _NO_DECAY_NAMES)
        (no_decay if keep else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scst_records(config: TrainConfig, records: list[CaptionRecord]) -> list[CaptionRecord]:
    """SCST's training samples: one record per image, rewarded against all the image's references; with style
    control (``data.styles``) one per image and style, in the recipe's shares, each sampled and rewarded in its
    style (the style its caption's start token names)."""
    if not config.data.styles:
        return first_caption_per_image(records)
    distinct = first_caption_per_style(list(dict.fromkeys(records)))  # style mixing repeats records
    return mix_styles(distinct, config.data.styles, config.train.seed, config.data.train)


def scst_reward(config: TrainConfig, records: list[CaptionRecord]) -> CiderReward | StyleCiderReward:
    """CIDEr-D against each training image's references: its neutral captions (all when it has none), document
    frequencies from all of them, computed once; with style control (``data.styles``) its captions in the sampled
    caption's style, document frequencies per style (:class:`StyleCiderReward` says why)."""
    if not config.data.styles:
        grouped = neutral_references(records)
        return CiderReward({image_id: [r.caption for r in group] for image_id, group in grouped.items()})
    by_style: dict[str, dict[str, list[str]]] = {}
    for record in dict.fromkeys(records):  # style mixing repeats records: each reference counts once
        by_style.setdefault(record.style, {}).setdefault(record.image_id, []).append(record.caption)
    return StyleCiderReward(by_style)
