"""Validation during training: teacher-forced loss and perplexity, and CIDEr-D of greedy captions (per style, for a
run trained with styles)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from captionkit.config import TrainConfig
from captionkit.data.dataset import CaptionDataset, Unreadable
from captionkit.data.records import CaptionRecord
from captionkit.data.styles import validation_styles
from captionkit.decoding import DecodingConfig, generate, to_captions
from captionkit.evaluation import evaluate_captions
from captionkit.models.base import CaptionModel
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, start_token_id
from captionkit.training.loss import token_nll

Autocast = Callable[[], AbstractContextManager[object]]


@torch.no_grad()
def evaluate_loss(
    model: CaptionModel,
    loader: DataLoader,
    device: torch.device,
    max_batches: int = 0,
    autocast: Autocast = nullcontext,
    unreadable: dict[str, str] | None = None,
) -> float:
    """Mean token NLL over (at most ``max_batches`` batches of) ``loader``; restores train mode after. The images
    that could not be read are left out, and put in ``unreadable`` (path -> reason) when given."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        if unreadable is not None:
            unreadable.update((bad.image, bad.reason) for bad in batch.unreadable)
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


def style_references(
    records: Sequence[CaptionRecord], styles: Collection[str], max_images: int = 0
) -> dict[str, dict[str, list[CaptionRecord]]]:
    """Style (:func:`validation_styles`) -> image -> reference records. A run without styles: the first
    ``max_images`` images of ``records`` (every image with 0), each with :func:`neutral_references`. A run with
    styles: per style, the first ``max_images`` images that have captions in that style, with those captions (a
    style none of whose images is among the first few of the data, as SentiCap's after COCO's, is still measured)."""
    if not styles:
        return {NEUTRAL: neutral_references(records, max_images)}
    found: dict[str, dict[str, list[CaptionRecord]]] = {style: {} for style in validation_styles(styles)}
    for record in records:
        images = found.get(record.style)
        if images is not None and (record.image_id in images or not max_images or len(images) < max_images):
            images.setdefault(record.image_id, []).append(record)
    return found


def validation_start_token(tokenizer: CaptionTokenizer, style: str) -> int | None:
    """The token validation's captions in ``style`` start from, as decoding with ``style=...`` starts them (None:
    the model's bos)."""
    return None if style == NEUTRAL else start_token_id(tokenizer, style)


def mean_over_styles(per_style: Mapping[str, float]) -> float:
    """The figure validation logs for several styles (``val_cider``): the plain mean of each style's."""
    return sum(per_style.values()) / len(per_style)


def validation_cider_entries(per_style: Mapping[str, float]) -> dict[str, float]:
    """The log entry's CIDEr-D keys: ``val_cider`` (the mean over styles) and, when captions were written in several
    styles, ``val_cider_<style>`` for each."""
    if not per_style:
        return {}
    entry = {"val_cider": round(mean_over_styles(per_style), 5)}
    if len(per_style) > 1:
        entry |= {f"val_cider_{style}": round(value, 5) for style, value in per_style.items()}
    return entry


def validation_cider(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    dataset: CaptionDataset,
    max_images: int,
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 32,
    styles: Collection[str] = (),
    unreadable: dict[str, str] | None = None,
) -> dict[str, float]:
    """CIDEr-D (pycocoevalcap's "CIDEr") of greedy captions of validation images (``max_images`` of them, per style
    for a run with ``styles``, the run's ``data.styles``), each style's captions started from its start token and
    scored against its references (:func:`style_references`). A style without a readable image or a finite score is
    left out; the images that could not be read are put in ``unreadable`` (path -> reason) when given."""
    per_style: dict[str, float] = {}
    for style, refs in style_references(dataset.records, styles, max_images).items():
        decoding = DecodingConfig(
            max_new_tokens=max_new_tokens, start_token_id=validation_start_token(tokenizer, style)
        )
        candidates = _greedy_captions(model, tokenizer, dataset, refs, decoding, device, batch_size, unreadable)
        if not candidates:
            continue
        scored = {image_id: [r.caption for r in refs[image_id]] for image_id in candidates}
        value = evaluate_captions(scored, candidates, metrics="CIDEr", allow_empty=True)["CIDEr"]
        if math.isfinite(value):
            per_style[style] = float(value)
    return per_style


def _greedy_captions(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    dataset: CaptionDataset,
    refs: Mapping[str, list[CaptionRecord]],
    decoding: DecodingConfig,
    device: torch.device,
    batch_size: int,
    unreadable: dict[str, str] | None = None,
) -> dict[str, str]:
    """Image id -> the caption ``decoding`` gives, for each image of ``refs`` whose pixels can be read (the others
    in ``unreadable``, path -> reason, when given)."""
    candidates: dict[str, str] = {}
    ids = list(refs)
    for start in range(0, len(ids), batch_size):
        chunk, pixels = [], []
        for image_id in ids[start : start + batch_size]:
            found = dataset.pixels_of(refs[image_id][0])
            if isinstance(found, Unreadable):
                if unreadable is not None:
                    unreadable[found.image] = found.reason
            else:
                chunk.append(image_id)
                pixels.append(found)
        if not chunk:
            continue
        hypotheses = generate(model, torch.from_numpy(np.stack(pixels)).to(device), config=decoding)
        for image_id, best in zip(chunk, to_captions(hypotheses, tokenizer), strict=True):
            candidates[image_id] = best[0].caption
    return candidates


@dataclass
class Validation:
    """What a run validates on (rank 0 only): the loss over ``loader`` and CIDEr-D of greedy captions (per style for
    a run with styles: see :func:`style_references`)."""

    loader: DataLoader
    data: CaptionDataset
    # Validation images that could not be read (path -> reason), left out of the figures: the loop counts and says
    # them as it does training images.
    unreadable: dict[str, str] = field(default_factory=dict)

    def __call__(
        self,
        model: CaptionModel,
        tokenizer: CaptionTokenizer,
        config: TrainConfig,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, Any]:
        """The log entry's validation keys: val_loss, val_perplexity and, with ``train.eval_images``, val_cider (and
        val_cider_<style> for a run validated in several styles)."""
        val_loss = evaluate_loss(model, self.loader, device, config.train.eval_batches, autocast, self.unreadable)
        entry: dict[str, Any] = {"val_loss": round(val_loss, 5), "val_perplexity": round(math.exp(val_loss), 4)}
        if config.train.eval_images:
            max_new_tokens = caption_budget(config.data.max_length, model.max_positions)
            per_style = validation_cider(
                model, tokenizer, self.data, config.train.eval_images, max_new_tokens, device,
                styles=config.data.styles, unreadable=self.unreadable,
            )  # fmt: skip
            entry |= validation_cider_entries(per_style)
        return entry
