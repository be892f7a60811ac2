"""The training loop: one explicit loop, readable in one sitting.

Each step: set the learning rate from :func:`lr_at`, forward with teacher forcing, loss with padding at -100,
backward, clip, AdamW step. Every ``eval_every`` steps (and at the end) the validation loss and perplexity are
computed; the final model is written as a complete checkpoint directory that ``Captioner.from_pretrained`` and plain
``transformers`` load.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from captionkit import __version__
from captionkit.config import TrainConfig
from captionkit.data.dataset import Batch, CaptionDataset, collate
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_records
from captionkit.data.splits import first_caption_per_image, split_by_image
from captionkit.errors import InputError
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.registry import create_model, load_model, preprocessing_for
from captionkit.text import CaptionTokenizer, train_bpe_tokenizer
from captionkit.training.checkpoint import save_checkpoint
from captionkit.training.loss import caption_loss, token_nll
from captionkit.training.schedule import lr_at

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    seconds: float
    train_loss: float
    val_loss: float | None
    val_perplexity: float | None
    skipped_samples: int
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Setup:
    """Everything a run trains with, built from the config."""

    model: CaptionModel
    tokenizer: CaptionTokenizer
    preprocessing: Preprocessing
    train_records: list[CaptionRecord]
    val_records: list[CaptionRecord]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_setup(config: TrainConfig) -> Setup:
    """Read the data, then get the tokenizer and model: pretrained ones, or new ones sized to the data."""
    if not config.data.train:
        raise InputError("data.train", "no training data given (a captions.jsonl file or its directory)")
    records = load_records(config.data.train)
    if config.data.val:
        train_records = [r for r in records if r.split in (None, "train")]
        val_records = load_records(config.data.val)
        val_records = [r for r in val_records if r.split in (None, "val", "dev", "validation")]
    else:
        train_records, val_records = split_by_image(records, config.data.val_fraction, config.train.seed)
    if config.data.first_caption_only:
        train_records = first_caption_per_image(train_records)
        val_records = first_caption_per_image(val_records)
    if not train_records:
        raise InputError(config.data.train, "no training captions after splitting")

    pretrained = config.model.pretrained
    if pretrained:
        model = load_model(pretrained)
        tokenizer = CaptionTokenizer.load(
            config.tokenizer.pretrained or pretrained,
            model.bos_token_id,
            model.eos_token_id,
            model.pad_token_id,
        )
        preprocessing = Preprocessing.load(pretrained)
    else:
        if config.tokenizer.pretrained:
            tokenizer = CaptionTokenizer.load(config.tokenizer.pretrained)
        else:
            tokenizer = train_bpe_tokenizer(
                (r.caption for r in train_records), config.tokenizer.vocab_size, config.tokenizer.lowercase
            )
        model = create_model(
            config.model.family, config.model.preset, tokenizer, config.model.position_init, **config.model.overrides
        )
        preprocessing = preprocessing_for(model)
    return Setup(model, tokenizer, preprocessing, train_records, val_records)


def _loader(dataset: CaptionDataset, batch_size: int, shuffle: bool, seed: int, pad_id: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=lambda samples: collate(samples, pad_id),
        drop_last=False,
    )


def _forever(loader: DataLoader) -> Iterator[Batch]:
    while True:
        yield from loader


# Position tables are not decayed either: weight decay would pull a sin-cos start back to zero.
_NO_DECAY_NAMES = ("position_embeddings", "wpe")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases, norms and position tables: the usual AdamW practice.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            keep = parameter.ndim < 2 or any(part in name for part in _NO_DECAY_NAMES)
            (no_decay if keep else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_loss(model: CaptionModel, loader: DataLoader, device: torch.device, max_batches: int = 0) -> float:
    """Mean token NLL over (at most ``max_batches`` batches of) ``loader``; restores train mode after."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        if not len(batch):
            continue
        logits = model(batch.pixel_values.to(device), batch.input_ids.to(device), batch.attention_mask.to(device))
        nll, tokens = token_nll(logits, batch.input_ids.to(device), batch.attention_mask.to(device))
        total += nll
        count += tokens
    model.train(was_training)
    return total / max(count, 1)


def train(
    config: TrainConfig, output_dir: str | Path, log: LogFn | None = None, setup: Setup | None = None
) -> TrainResult:
    """Train per ``config`` and write the final checkpoint to ``output_dir``."""
    seed_everything(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    setup = setup or build_setup(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = setup.model.to(device), setup.tokenizer
    model.train()

    def dataset(records: list[CaptionRecord]) -> CaptionDataset:
        return CaptionDataset(
            records,
            tokenizer,
            setup.preprocessing,
            config.data.max_length,
            cache_images=config.data.cache_images,
        )

    train_loader = _loader(
        dataset(setup.train_records), config.train.batch_size, True, config.train.seed, tokenizer.pad_token_id
    )
    val_loader = (
        _loader(dataset(setup.val_records), config.train.batch_size, False, 0, tokenizer.pad_token_id)
        if setup.val_records
        else None
    )
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.train.weight_decay), lr=config.train.lr, betas=config.train.betas
    )
    history: list[dict[str, Any]] = []
    emit = log or (lambda _: None)
    skipped, running, step = 0, 0.0, 0
    val_loss: float | None = None
    started = time.perf_counter()
    batches = _forever(train_loader)
    total_steps = config.train.steps
    while step < total_steps:
        batch = next(batches)
        skipped += batch.skipped
        if not len(batch):
            continue
        lr = lr_at(step, config.train.lr, config.train.warmup_steps, total_steps, config.train.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels, ids, mask = (t.to(device) for t in (batch.pixel_values, batch.input_ids, batch.attention_mask))
        loss = caption_loss(model(pixels, ids, mask), ids, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        step += 1
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        elapsed = time.perf_counter() - started
        out_of_time = bool(config.train.max_seconds) and elapsed >= config.train.max_seconds
        is_last = step == total_steps or out_of_time
        if step % config.train.log_every == 0 or is_last:
            entry = {"step": step, "loss": round(running, 5), "lr": lr, "seconds": round(elapsed, 2)}
            if val_loader is not None and (step % config.train.eval_every == 0 or is_last):
                val_loss = evaluate_loss(model, val_loader, device, config.train.eval_batches)
                entry |= {"val_loss": round(val_loss, 5), "val_perplexity": round(math.exp(val_loss), 4)}
            history.append(entry)
            emit(entry)
        if out_of_time:
            break
    seconds = time.perf_counter() - started
    state = {
        "step": step,
        "seconds": round(seconds, 2),
        "train_loss": running,
        "val_loss": val_loss,
        "skipped_samples": skipped,
        "history": history,
        "captionkit_version": __version__,
    }
    model.eval()
    output = save_checkpoint(output_dir, model, tokenizer, setup.preprocessing, config.to_dict(), state)
    return TrainResult(
        output,
        step,
        seconds,
        running,
        val_loss,
        math.exp(val_loss) if val_loss is not None else None,
        skipped,
        history,
    )
