"""Validation during training: teacher-forced loss and perplexity, and CIDEr-D of greedy captions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from captionkit.config import TrainConfig
from captionkit.data.dataset import CaptionDataset, Unreadable
from captionkit.data.records import CaptionRecord
from captionkit.decoding import DecodingConfig, generate, to_captions
from captionkit.evaluation import evaluate_captions
from captionkit.models.base import CaptionModel
from captionkit.text import CaptionTokenizer
from captionkit.training.loss import token_nll

Autocast = Callable[[], AbstractContextManager[object]]


@torch.no_grad()
def evaluate_loss(
    model: CaptionModel,
    loader: DataLoader,
    device: torch.device,
    max_batches: int = 0,
    autocast: Autocast = nullcontext,
) -> float:
    """Mean token NLL over (at most ``max_batches`` batches of) ``loader``; restores train mode after."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        if not len(batch):
            continue
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        with autocast():
            logits = model(batch.pixel_values.to(device), ids, mask)
        nll, tokens = token_nll(logits, ids, mask)
        total += nll
        count += tokens
    model.train(was_training)
    return total / max(count, 1)


def loss_records(records: Sequence[CaptionRecord], eval_batches: int, batch_size: int) -> list[CaptionRecord]:
    """The captions that :func:`evaluate_loss` reads with ``max_batches=eval_batches`` from the run's unshuffled
    validation loader of ``batch_size``: the first ``eval_batches × batch_size`` (every one with 0)."""
    return list(records[: eval_batches * batch_size] if eval_batches else records)


def first_images(records: Sequence[CaptionRecord], max_images: int) -> list[CaptionRecord]:
    """The records of the first ``max_images`` images, in order (every record with 0)."""
    kept: set[str] = set()
    chosen = []
    for record in records:
        if record.image_id not in kept and (len(kept) < max_images or not max_images):
            kept.add(record.image_id)
        if record.image_id in kept:
            chosen.append(record)
    return chosen


def neutral_references(records: Sequence[CaptionRecord], max_images: int = 0) -> dict[str, list[CaptionRecord]]:
    """Each of the first ``max_images`` images' reference records (every image's with 0): its neutral captions, or
    all of them when it has no neutral one."""
    grouped: dict[str, list[CaptionRecord]] = {}
    for record in first_images(records, max_images):
        grouped.setdefault(record.image_id, []).append(record)
    return {key: [r for r in group if r.style == "neutral"] or group for key, group in grouped.items()}


def caption_budget(max_length: int, max_positions: int | None) -> int:
    """Validation's ``max_new_tokens``: a training caption's length (``data.max_length``) less its start token,
    within the positions the model has."""
    budget = max_length - 1
    return budget if max_positions is None else min(budget, max_positions - 1)


def validation_cider(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    dataset: CaptionDataset,
    max_images: int,
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 32,
) -> float | None:
    """CIDEr-D (pycocoevalcap's "CIDEr") of greedy captions of the first ``max_images`` validation images."""
    refs = neutral_references(dataset.records, max_images)
    candidates: dict[str, str] = {}
    ids = list(refs)
    decoding = DecodingConfig(max_new_tokens=max_new_tokens)
    for start in range(0, len(ids), batch_size):
        chunk, pixels = [], []
        for image_id in ids[start : start + batch_size]:
            found = dataset.pixels_of(refs[image_id][0])
            if not isinstance(found, Unreadable):
                chunk.append(image_id)
                pixels.append(found)
        if not chunk:
            continue
        hypotheses = generate(model, torch.from_numpy(np.stack(pixels)).to(device), config=decoding)
        for image_id, best in zip(chunk, to_captions(hypotheses, tokenizer), strict=True):
            candidates[image_id] = best[0].caption
    if not candidates:
        return None
    scored = {image_id: [r.caption for r in refs[image_id]] for image_id in candidates}
    value = evaluate_captions(scored, candidates, metrics="CIDEr", allow_empty=True)["CIDEr"]
    return float(value) if math.isfinite(value) else None


@dataclass
class Validation:
    """What a run validates on (rank 0 only): the loss over ``loader`` and CIDEr-D of greedy captions."""

    loader: DataLoader
    data: CaptionDataset

    def __call__(
        self,
        model: CaptionModel,
        tokenizer: CaptionTokenizer,
        config: TrainConfig,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, Any]:
        """The log entry's validation keys: val_loss, val_perplexity and, with ``train.eval_images``, val_cider."""
        val_loss = evaluate_loss(model, self.loader, device, config.train.eval_batches, autocast)
        entry: dict[str, Any] = {"val_loss": round(val_loss, 5), "val_perplexity": round(math.exp(val_loss), 4)}
        if config.train.eval_images:
            max_new_tokens = caption_budget(config.data.max_length, model.max_positions)
            cider = validation_cider(model, tokenizer, self.data, config.train.eval_images, max_new_tokens, device)
            if cider is not None:
                entry["val_cider"] = round(cider, 5)
        return entry
