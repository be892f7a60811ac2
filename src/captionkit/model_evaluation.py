"""Evaluate a captioner on a dataset split: caption every image, score against its references, measure perplexity."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from captionkit.api import Captioner
from captionkit.data.dataset import CaptionDataset, collate
from captionkit.data.records import CaptionRecord
from captionkit.decoding import DecodingConfig
from captionkit.errors import ImageError, InputError
from captionkit.evaluation import evaluate_captions
from captionkit.training.loss import token_nll


@dataclass
class ModelEvaluation:
    metrics: dict[str, Any]
    results: list[dict[str, Any]]  # one record per image: image, image_id, caption, score (or error)


def references_by_image(records: Sequence[CaptionRecord]) -> dict[str, list[CaptionRecord]]:
    """Each image's reference records: its neutral captions, or all of them when it has no neutral one."""
    grouped: dict[str, list[CaptionRecord]] = {}
    for record in records:
        grouped.setdefault(record.image_id, []).append(record)
    return {image_id: [r for r in group if r.style == "neutral"] or group for image_id, group in grouped.items()}


@torch.no_grad()
def dataset_perplexity(captioner: Captioner, records: Sequence[CaptionRecord], batch_size: int = 32) -> float:
    """exp(mean token NLL) of the captions given their images, teacher forced (bos excluded, eos included)."""
    max_length = captioner.model.max_positions or 1024
    dataset = CaptionDataset(records, captioner.tokenizer, captioner.preprocessing, max_length=max_length)
    loader = DataLoader(
        dataset, batch_size=batch_size, collate_fn=lambda s: collate(s, captioner.tokenizer.pad_token_id)
    )
    total, count = 0.0, 0
    for batch in loader:
        if not len(batch):
            continue
        ids, mask = batch.input_ids.to(captioner.device), batch.attention_mask.to(captioner.device)
        logits = captioner.model(batch.pixel_values.to(captioner.device), ids, mask)
        nll, tokens = token_nll(logits, ids, mask)
        total, count = total + nll, count + tokens
    if count == 0:
        raise InputError("data", "no readable image with a caption to compute perplexity on")
    return math.exp(total / count)


def evaluate_model(
    captioner: Captioner,
    records: Sequence[CaptionRecord],
    decoding: DecodingConfig,
    metrics: str | None = None,
    train_captions: Sequence[str] | None = None,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> ModelEvaluation:
    """Caption each image of ``records`` once, score with the COCO metrics, and add perplexity and counts."""
    references = references_by_image(records)
    if not references:
        raise InputError("data", "no captions to evaluate on")
    images = [(image_id, group[0].image_path) for image_id, group in references.items()]
    results: list[dict[str, Any]] = []
    candidates: dict[str, str] = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        opened, kept = [], []
        for image_id, path in chunk:
            try:
                opened.append(captioner.load_images([path])[0])
                kept.append((image_id, path))
            except ImageError as error:
                results.append({"image": str(path), "image_id": image_id, "error": error.reason})
        for (image_id, path), found in zip(kept, captioner.caption_pil(opened, decoding), strict=True):
            candidates[image_id] = found[0].text
            results.append(
                {"image": str(path), "image_id": image_id, "caption": found[0].text, "score": found[0].score}
            )
        if on_progress is not None:
            on_progress(len(chunk))
    scored_refs = {image_id: [r.caption for r in references[image_id]] for image_id in candidates}
    scores = evaluate_captions(scored_refs, candidates, metrics, train_captions, allow_empty=True)
    reference_records = [r for image_id in candidates for r in references[image_id]]
    scores["perplexity"] = dataset_perplexity(captioner, reference_records)
    scores["images"] = len(images)
    scores["failed_images"] = len(images) - len(candidates)
    domains = _per_domain(references, candidates, metrics)
    if domains:
        scores["domains"] = domains
    return ModelEvaluation(scores, results)


def _per_domain(
    references: dict[str, list[CaptionRecord]], candidates: dict[str, str], metrics: str | None
) -> dict[str, dict[str, Any]]:
    """The metrics over each domain's images, for data whose records carry one (nocaps: in/near/out-domain)."""
    groups: dict[str, list[str]] = {}
    for image_id in candidates:
        domain = references[image_id][0].domain
        if domain is not None:
            groups.setdefault(domain, []).append(image_id)
    return {
        domain: {
            **evaluate_captions(
                {i: [r.caption for r in references[i]] for i in ids},
                {i: candidates[i] for i in ids},
                metrics,
                allow_empty=True,
            ),
            "images": len(ids),
        }
        for domain, ids in sorted(groups.items())
    }


def evaluate_model_styles(
    captioner: Captioner,
    records: Sequence[CaptionRecord],
    classifier: Any,
    decoding: DecodingConfig,
    styles: Sequence[str] | None = None,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Caption each image of ``records`` in each style and build the style table (``captionkit.evaluation.style``).

    ``styles`` default to every style the model writes; the references of a style are the records of that style,
    and content match compares each styled caption with the model's own neutral caption of the image.
    """
    import dataclasses

    from captionkit.evaluation.style import evaluate_styles

    styles = list(styles or captioner.styles)
    if "neutral" not in styles:
        styles.insert(0, "neutral")  # content match needs the neutral caption
    starts = {style: captioner.style_start_token(style) for style in styles}  # fails early on a missing style
    images: dict[str, Any] = {}
    references: dict[str, dict[str, list[str]]] = {style: {} for style in styles}
    for record in records:
        images.setdefault(record.image_id, record.image_path)
        if record.style in references:
            references[record.style].setdefault(record.image_id, []).append(record.caption)
    generated: dict[str, dict[str, str]] = {style: {} for style in styles}
    ids = list(images)
    for start in range(0, len(ids), batch_size):
        chunk, opened = [], []
        for image_id in ids[start : start + batch_size]:
            try:
                opened.append(captioner.load_images([images[image_id]])[0])
                chunk.append(image_id)
            except ImageError:
                pass  # counted below: an unreadable image has no caption in any style
        for style in styles:
            config = dataclasses.replace(decoding, start_token_id=starts[style])
            for image_id, found in zip(chunk, captioner.caption_pil(opened, config), strict=True):
                generated[style][image_id] = found[0].text
        if on_progress is not None:
            on_progress(len(ids[start : start + batch_size]))
    table = evaluate_styles(generated, classifier, references)
    return {
        "styles": {style: scores.as_dict() for style, scores in table.items()},
        "images": len(ids),
        "failed_images": len(ids) - len(generated["neutral"]),
    }
