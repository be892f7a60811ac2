"""What a run trains, said in a few lines as it starts (process 0 only): the training and validation data, the
model and what of it trains first, the tokenizer, the device and precision, the steps and the effective batch. Then
where a resumed run picks up, and each switch of staged unfreezing. Logged on ``captionkit.training`` (the CLI prints
it on stderr, one ``captionkit:`` line each)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from captionkit.config import TrainConfig
from captionkit.cpus import usable_cpus
from captionkit.data.formats.base import EMPTY_CAPTION
from captionkit.data.records import CaptionRecord
from captionkit.models.registry import get_family
from captionkit.text.styles import style_token_ids
from captionkit.training.resume import LoopState, out_of_time_before, stopped_early_before
from captionkit.training.setup import Setup
from captionkit.training.stages import ALL, Stages
from captionkit.wording import plural, tally

logger = logging.getLogger("captionkit.training")

# A trained byte-level BPE holds its specials (pad, bos, eos) and the 256 bytes before any merge.
BPE_BASE = 3 + 256
WORD_SPECIALS = 4  # pad, bos, eos, unk


def count(number: float) -> str:
    """A parameter count, short: 86.4M, 1.31B, 912,384."""
    if number >= 1e9:
        return f"{number / 1e9:.2f}B"
    if number >= 1e6:
        return f"{number / 1e6:.1f}M"
    return f"{number:,.0f}"


def summary_lines(
    config: TrainConfig,
    setup: Setup,
    stages: Stages,
    empty_captions: int,
    device: torch.device,
    world_size: int,
    start_step: int = 0,
) -> list[str]:
    """The run's summary, one string a line; ``start_step``: where a resumed run picks up."""
    usable = [record for record in setup.train_records if record.caption.strip()]
    return [
        _train_data(setup, usable, empty_captions),
        _validation(config, setup.val_records),
        _model(setup, stages, start_step),
        _tokenizer(config, setup),
        _schedule(config, device, world_size, setup.train_shards.size if setup.train_shards else len(usable)),
    ]


def _images_captions(records: Sequence[CaptionRecord]) -> str:
    # Style mixing repeats record objects: each counts once (two equal captions of an image are two captions).
    distinct = {id(record): record for record in records}.values()
    images = len({record.image_path for record in distinct})
    return f"{plural(images, 'image')}, {plural(len(distinct), 'caption')}"


def _train_data(setup: Setup, records: Sequence[CaptionRecord], empty_captions: int) -> str:
    if setup.train_shards is not None:
        shards = setup.train_shards
        captions, files = plural(shards.size, "caption"), plural(len(shards.shards), "shard")
        line = f"train data: {captions} in {files} (streamed)"
    else:
        line = f"train data: {_images_captions(records)}"
        several = [source for source in setup.sources if source.records]
        if len(several) > 1:
            parts = [f"{s.spec}: {_images_captions([r for r in records if r in s.records])}" for s in several]
            line += f" ({'; '.join(parts)})"
    dropped = {EMPTY_CAPTION: empty_captions} if empty_captions else {}
    for source in setup.sources:
        for reason, number in source.dropped.items():
            if reason != EMPTY_CAPTION:
                dropped[reason] = dropped.get(reason, 0) + number
    if dropped:
        line += "; dropped " + tally(dropped)
    return line


def _validation(config: TrainConfig, records: Sequence[CaptionRecord]) -> str:
    data = config.data
    kept = [record for record in records if record.caption.strip()]
    held_out = f"held out of data.train by data.val_fraction {data.val_fraction:g}"
    if data.val:
        where = "from data.val"
    elif kept:
        # Data with its own splits (Flickr8k's dev list, Karpathy's json) validates on its val split whatever
        # data.val_fraction says: split_by_image keeps a record's own split and leaves a held-out one's None.
        own_split = any(record.split for record in kept)
        where = "from data.train's own val split" if own_split else held_out
        if own_split and any(record.split is None for record in kept):
            where += f" and {held_out}"
    elif data.val_fraction:
        where = held_out
    else:
        return "validation: none (no data.val, data.val_fraction 0)"
    if not kept:
        return f"validation: none ({where.removeprefix('from ')} gave no captions)"
    return f"validation: {_images_captions(kept)}, {where}"


def trainable_count(stages: Stages, index: int | None) -> int:
    """Parameters stage ``index`` trains; without stages, those the model leaves trainable (its own freezing)."""
    parameters = dict(stages.model.named_parameters())
    names = stages.trained_names(index)
    if index is None:
        return sum(p.numel() for p in parameters.values() if p.requires_grad)
    if names is None:
        return sum(p.numel() for p in parameters.values())
    return sum(parameters[name].numel() for name in names)


def stage_groups(stages: Stages, index: int) -> str:
    groups = stages.stages[index].train
    return "everything" if ALL in groups else ", ".join(groups)


def _model(setup: Setup, stages: Stages, start_step: int) -> str:
    """The model, its size and what of it trains at ``start_step`` (a resumed run's stage)."""
    model = setup.model
    total = sum(parameter.numel() for parameter in model.parameters())
    index = stages.index_at(start_step)
    line = f"model: {model.family}, {count(total)} parameters, {count(trainable_count(stages, index))} trainable"
    if index is not None:
        line += f" in stage {index + 1} of {len(stages.stages)} ({stage_groups(stages, index)})"
    return line


def _tokenizer(config: TrainConfig, setup: Setup) -> str:
    tokenizer = setup.tokenizer
    styles = len(style_token_ids(tokenizer))
    line = f"tokenizer: {tokenizer.vocab_size:,} tokens"
    if styles:
        line += f" ({styles} of them style tokens)"
    trained_here = not (config.model.pretrained or config.tokenizer.pretrained)
    wanted = config.tokenizer.vocab_size
    own = tokenizer.vocab_size - styles
    if not trained_here or own >= wanted:
        return line
    if get_family(setup.model.family).tokenizer == "word":
        words = own - WORD_SPECIALS
        why = f"the training captions hold only {words:,} distinct words"
    else:
        merges = own - BPE_BASE
        why = f"byte-level BPE found only {merges:,} merges of pairs seen at least twice in the training captions"
    return f"{line}, fewer than tokenizer.vocab_size {wanted:,}: {why}"


def _schedule(config: TrainConfig, device: torch.device, world_size: int, samples: int) -> str:
    """Where and how it trains; ``samples``: the training captions an epoch passes over (once each)."""
    train = config.train
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    per_step = train.batch_size * train.grad_accumulation * world_size
    unit = "image" if train.objective == "scst" else "caption"
    parts = [f"batch {train.batch_size}"]
    if train.grad_accumulation > 1:
        parts.append(f"{train.grad_accumulation} accumulated")
    if world_size > 1:
        parts.append(f"{world_size} processes")
    batch = f"{plural(per_step, unit)} a step" + (f" ({' x '.join(parts)})" if len(parts) > 1 else "")
    epochs = ""
    if samples and train.objective != "scst":
        epochs = f" ({plural(f'{train.steps * per_step / samples:.3g}', 'epoch')})"
    line = f"{where}, {train.precision}; {plural(train.steps, 'step')}{epochs}, {batch}"
    workers = config.data.workers
    cpus = usable_cpus()
    if workers > cpus:  # torch's own warning about it is silenced (run.py): said once here instead
        line += f"; {workers} data.workers on {cpus} CPU{'s' if cpus > 1 else ''}"
    return line


def log_summary(lines: Sequence[str]) -> None:
    for line in lines:
        logger.info("%s", line)


def resume_line(config: TrainConfig, state: LoopState, checkpoint: Path, old_steps: int | None) -> str:
    """Where a resumed run picks up: the step of how many, past a finished run's end, or nothing left to do."""
    steps, step = config.train.steps, state.step
    if step >= steps:
        at = f"step {step:,} of {steps:,}" if step == steps else f"step {step:,}, past train.steps {steps:,}"
        return f"already complete ({at}): nothing to train; raise train.steps to go on"
    if stopped_early_before(config, state):
        patience = config.train.patience
        evaluations = plural(state.evals_since_best, "evaluation")
        return (
            f"already stopped early at step {step:,} ({evaluations} without a better "
            f"{config.train.best_metric}, train.patience {patience}): nothing to train (raise train.patience to go on)"
        )
    if out_of_time_before(config, state):
        return (
            f"already stopped at step {step:,} by train.max_seconds {config.train.max_seconds:g} ({state.seconds:.1f} "
            "s trained): nothing to train (raise train.max_seconds to go on)"
        )
    line = f"resuming from step {step:,} of {steps:,} ({checkpoint})"
    if old_steps is not None and step >= old_steps:
        line += f": the run ended at train.steps {old_steps:,} and now continues past its old end"
    return line


def stage_line(stages: Stages, index: int, step: int) -> str:
    """The stage that starts at ``step``: its groups and how many parameters now train."""
    groups = stage_groups(stages, index)
    trainable = count(trainable_count(stages, index))
    return f"step {step:,}: stage {index + 1} of {len(stages.stages)} trains {groups} ({trainable} parameters)"
