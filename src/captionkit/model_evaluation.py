"""Evaluate a captioner on a dataset split: caption every image, score against its references, measure perplexity."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from captionkit.api import Captioner
from captionkit.data.dataset import CaptionDataset, collate
from captionkit.data.records import CaptionRecord
from captionkit.decoding import DecodingConfig
from captionkit.errors import ImageError, InputError
from captionkit.evaluation import evaluate_captions, score_captions
from captionkit.evaluation.api import split_image_metrics
from captionkit.models.base import CaptionModel
from captionkit.trained_on import TrainedOn
from captionkit.training.loss import token_nll
from captionkit.training.validation import (
    caption_budget,
    first_images,
    loss_records,
    mean_over_styles,
    neutral_references,
    style_references,
    validation_start_token,
)

if TYPE_CHECKING:
    from captionkit.evaluation.clipscore import ClipScorer


@dataclass
class ModelEvaluation:
    metrics: dict[str, Any]
    # One record per image: image, image_id, caption, score, references and the per-image metrics (or error).
    results: list[dict[str, Any]]
    # Metrics that --metrics named but that could not be computed here (their notes say why): the figures are partial.
    missing: list[str] = field(default_factory=list)


class NoImageRead(InputError):
    """Not one image of an evaluation could be read: there is nothing to score. ``results`` holds each image's error
    record (``image``, ``image_id``, ``error``)."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        first = results[0]
        super().__init__(
            "data", f"none of its {len(results)} images could be read ({first['image']}: {first['error']})"
        )
        self.results = results


@torch.no_grad()
def dataset_perplexity(
    captioner: Captioner, records: Sequence[CaptionRecord], batch_size: int = 32, max_length: int | None = None
) -> float:
    """exp(mean token NLL) of the captions given their images, teacher forced (start token excluded, eos included),
    each caption started with its style's token as in training and cut to ``max_length`` tokens (default: as many
    as the model takes)."""
    max_length = max_length or captioner.model.max_positions or 1024
    dataset = CaptionDataset(records, captioner.tokenizer, captioner.preprocessing, max_length=max_length)
    loader = DataLoader(
        dataset, batch_size=batch_size, collate_fn=lambda s: collate(s, captioner.tokenizer.pad_token_id)
    )
    total, count = 0.0, 0
    for batch in loader:
        if not len(batch):
            continue
        ids, mask = batch.input_ids.to(captioner.device), batch.attention_mask.to(captioner.device)
        pixels = batch.pixel_values.to(captioner.device)
        try:
            logits = captioner.model(pixels, ids, mask)
        except NotImplementedError:  # a decode-only model (an ONNX export): the same figure through its steps
            logits = _stepwise_log_probs(captioner.model, pixels, ids)
        nll, tokens = token_nll(logits, ids, mask)
        total, count = total + nll, count + tokens
    if count == 0:
        raise InputError("data", "no readable image with a caption to compute perplexity on")
    return math.exp(total / count)


def _stepwise_log_probs(model: CaptionModel, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, V) log-probabilities of each next token, fed ``ids`` one step at a time through the step protocol:
    what teacher forcing gives, for models that only decode."""
    state = model.init_state(model.encode(pixels))
    steps = []
    for position in range(ids.shape[1]):
        log_probs, state = model.step(ids[:, position], state)
        steps.append(log_probs)
    return torch.stack(steps, dim=1)


def evaluate_model(
    captioner: Captioner,
    records: Sequence[CaptionRecord],
    decoding: DecodingConfig,
    metrics: str | None = None,
    train_captions: Sequence[str] | None = None,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
    clip: ClipScorer | None = None,
    max_length: int | None = None,
    meteor: str = "python",
    perplexity_over: Perplexity | None = None,
) -> ModelEvaluation:
    """Caption each image of ``records`` once (``decoding``'s style, neutral by default), score against the image's
    neutral references with the COCO metrics, and add perplexity over every caption of ``records`` whose image was
    read (every style, cut to ``max_length`` tokens; or over ``perplexity_over``), counts, and ``computed_over``:
    what each figure was computed over.

    CLIPScore and RefCLIPScore (``metrics`` naming CLIPScore) need ``clip``, the CLIP model to embed with.
    ``meteor``: the METEOR engine (``"python"`` or ``"java"``).
    """
    references = neutral_references(records)
    if not references:
        raise InputError("data", "no captions to evaluate on")
    scoring = _Scoring(metrics, train_captions, batch_size, on_progress, clip, meteor)
    captioned = _caption_and_score(captioner, references, decoding, scoring)
    candidates, scores = captioned.candidates, captioned.scores
    if perplexity_over is None:
        readable = [r for r in records if r.image_id in candidates]
        perplexity_over = Perplexity(readable, f"{len(readable)} reference captions of those images")
    scores["perplexity"] = dataset_perplexity(
        captioner, perplexity_over.records, perplexity_over.batch_size, max_length
    )
    scores["images"] = len(references)
    scores["failed_images"] = len(references) - len(candidates)
    scores["computed_over"] = _computed_over(decoding, captioned.references, perplexity_over, max_length)
    return ModelEvaluation(scores, captioned.results, captioned.missing)


@dataclass(frozen=True)
class _Scoring:
    """How each caption-and-score pass scores its captions (``metrics``, METEOR engine, CLIP model, the training
    captions for novelty), the batch it captions in, and where it reports progress (images done)."""

    metrics: str | None
    train_captions: Sequence[str] | None
    batch_size: int
    on_progress: Callable[[int], None] | None
    clip: ClipScorer | None
    meteor: str


@dataclass
class _Captioned:
    """One caption per image of ``references``, scored: the scores (``domains`` too, where the data has them), one
    result per image (caption or error), the captions, and the references they were scored against."""

    scores: dict[str, Any]
    results: list[dict[str, Any]]
    candidates: dict[str, str]
    references: dict[str, list[str]]
    missing: list[str]


def _caption_and_score(
    captioner: Captioner, references: dict[str, list[CaptionRecord]], decoding: DecodingConfig, scoring: _Scoring
) -> _Captioned:
    """Caption each image of ``references`` (image id -> its reference records) with ``decoding`` and score the
    captions against those references; :class:`NoImageRead` when not one image could be read."""
    text_metrics, wants_clip = split_image_metrics(scoring.metrics)
    if wants_clip and scoring.clip is None:
        raise InputError("metrics", "CLIPScore needs a CLIP model")
    clip = scoring.clip if wants_clip else None
    batch_size, on_progress, meteor = scoring.batch_size, scoring.on_progress, scoring.meteor
    images = [(image_id, group[0].image_path) for image_id, group in references.items()]
    results: list[dict[str, Any]] = []
    candidates: dict[str, str] = {}
    image_features: dict[str, torch.Tensor] = {}
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
            candidates[image_id] = found[0].caption
            results.append(
                {"image": str(path), "image_id": image_id, "caption": found[0].caption, "score": found[0].score}
            )
        if clip is not None and opened:
            image_features.update(zip((i for i, _ in kept), clip.image_features(opened), strict=True))
        if on_progress is not None:
            on_progress(len(chunk))
    if not candidates:
        raise NoImageRead(results)
    scored_refs = {image_id: [r.caption for r in references[image_id]] for image_id in candidates}
    evaluation = score_captions(
        scored_refs, candidates, text_metrics, scoring.train_captions, allow_empty=True, meteor=meteor
    )
    scores = evaluation.to_dict()
    per_image = evaluation.per_image
    if clip is not None:
        clip_scores, clip_per_image = clip.score(image_features, candidates, scored_refs)
        scores |= clip_scores
        per_image = {i: per_image[i] | clip_per_image[i] for i in per_image}
    for result in results:
        if "caption" in result:
            result["references"] = scored_refs[result["image_id"]]
            result["metrics"] = per_image[result["image_id"]]
    domains = _per_domain(references, candidates, text_metrics, meteor)
    if domains:
        scores["domains"] = domains
    return _Captioned(scores, results, candidates, scored_refs, evaluation.missing)


@dataclass(frozen=True)
class Perplexity:
    """The captions to compute perplexity over, what they are (for ``computed_over``), and the batch to read them in
    (the sum over tokens is the same in any batch; the run's own batch gives its float rounding too)."""

    records: Sequence[CaptionRecord]
    description: str
    batch_size: int = 32


def _computed_over(
    decoding: DecodingConfig, refs: dict[str, list[str]], perplexity: Perplexity, max_length: int | None
) -> dict[str, str]:
    """One line per figure: which captions, which references, which style."""
    search = f"beam search ({decoding.num_beams} beams)" if decoding.num_beams > 1 else "greedy search"
    style = "neutral" if decoding.start_token_id is None else "styled"
    styles = sorted({r.style for r in perplexity.records})
    cut = f", cut to {max_length} tokens" if max_length else ""
    return {
        "captions": f"one {style} caption per image ({search}, at most {decoding.max_new_tokens} new tokens) "
        f"of {len(refs)} images",
        "references": f"{sum(map(len, refs.values()))} neutral reference captions of those images (all of an "
        "image's captions where it has no neutral one)",
        "perplexity": f"{perplexity.description} ({', '.join(styles)}), teacher forced, each from its style's start "
        f"token{cut}",
    }


def evaluate_as_validation(
    captioner: Captioner,
    validation: Sequence[CaptionRecord],
    trained: TrainedOn,
    metrics: str | None = None,
    train_captions: Sequence[str] | None = None,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
    clip: ClipScorer | None = None,
    meteor: str = "python",
) -> ModelEvaluation:
    """What the run's validation computed, on ``validation``, the run's validation captions in its order
    (``TrainedOn.validation_records``): greedy captions, at most ``data.max_length - 1`` new tokens, of the images
    and in the styles its validation used, against the same references
    (``captionkit.training.validation.style_references``: the first ``train.eval_images`` images' neutral captions
    against their neutral references, or, for a run with styles, per style the first ``train.eval_images`` images
    with references in that style against those, the metrics then the mean over styles with each style's under
    ``styles``), so CIDEr is its ``val_cider``; and perplexity over the
    first ``train.eval_batches × train.batch_size`` captions (its ``val_perplexity``)."""
    decoding = DecodingConfig(max_new_tokens=caption_budget(trained.max_length, captioner.model.max_positions))
    captions = loss_records(validation, trained.eval_batches, trained.batch_size)
    batches = f"train.eval_batches {trained.eval_batches} × train.batch_size {trained.batch_size}"
    if not trained.eval_batches:
        subset = f"the run's {len(validation)} validation captions (train.eval_batches 0: all)"
    elif len(captions) < len(validation):
        subset = f"the first {len(captions)} ({batches}) of the run's {len(validation)} validation captions"
    else:
        subset = f"the run's {len(validation)} validation captions (all: {batches} hold more)"
    perplexity = Perplexity(captions, subset, trained.batch_size)
    shown = (
        f"the first {trained.eval_images} (train.eval_images)" if trained.eval_images else "all (no train.eval_images)"
    )
    if not trained.styles:
        result = evaluate_model(
            captioner,
            first_images(validation, trained.eval_images),
            decoding,
            metrics,
            train_captions,
            batch_size,
            on_progress,
            clip,
            max_length=trained.max_length,
            meteor=meteor,
            perplexity_over=perplexity,
        )
        result.metrics["computed_over"]["captions"] += f": {shown} of the run's validation images"
        return result
    scoring = _Scoring(metrics, train_captions, batch_size, on_progress, clip, meteor)
    return _evaluate_styles_as_validation(captioner, validation, trained, decoding, perplexity, shown, scoring)


def validation_images(validation: Sequence[CaptionRecord], trained: TrainedOn) -> int:
    """How many images :func:`evaluate_as_validation` captions (its progress counts each once): the first
    ``train.eval_images`` of ``validation``, or, for a run with styles, those among each style's first ones."""
    return len(_images_of(style_references(validation, trained.styles, trained.eval_images)))


def _images_of(by_style: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The image ids of :func:`~captionkit.training.validation.style_references`' answer, each once."""
    return {image_id for references in by_style.values() for image_id in references}


def _evaluate_styles_as_validation(
    captioner: Captioner,
    validation: Sequence[CaptionRecord],
    trained: TrainedOn,
    decoding: DecodingConfig,
    perplexity: Perplexity,
    shown: str,
    scoring: _Scoring,
) -> ModelEvaluation:
    """:func:`evaluate_as_validation` for a run with styles: each style's captions scored against that style's
    references; each metric the mean over styles, as ``val_cider`` is."""
    by_style = style_references(validation, trained.styles, trained.eval_images)
    images = _images_of(by_style)
    captions = sum(len(references) for references in by_style.values())
    scoring = replace(scoring, on_progress=_shared_progress(scoring.on_progress, len(images), captions))
    per_style: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    read: set[str] = set()
    missing: dict[str, None] = {}  # the metrics left out in any style, in order
    for style, references in by_style.items():
        styled = replace(decoding, start_token_id=validation_start_token(captioner.tokenizer, style))
        try:
            captioned = _caption_and_score(captioner, references, styled, scoring)
        except NoImageRead as error:  # left out of the mean, as validation leaves a style without a caption
            results.extend(result | {"style": style} for result in error.results)
            continue
        per_style[style] = captioned.scores
        results.extend(result | {"style": style} for result in captioned.results)
        read.update(captioned.candidates)
        missing.update(dict.fromkeys(captioned.missing))
    if not per_style:
        raise NoImageRead(results) if results else InputError("data", "no captions to evaluate on")
    scores = _over_styles(per_style, len(read))
    scores["styles"] = per_style
    scores["perplexity"] = dataset_perplexity(captioner, perplexity.records, perplexity.batch_size, trained.max_length)
    scores["images"] = len(images)
    scores["failed_images"] = len(images - read)
    search = f"greedy search, at most {decoding.max_new_tokens} new tokens"
    counts = ", ".join(f"{len(references)} {style}" for style, references in by_style.items())
    refs = ", ".join(f"{sum(len(group) for group in by_style[style].values())} {style}" for style in by_style)
    styles = sorted({r.style for r in perplexity.records})
    scores["computed_over"] = {
        "captions": f"one caption per image in each of the run's styles ({search}), each from its style's start "
        f"token, of {shown} of the run's validation images with references in that style ({counts}); each metric "
        "the mean over styles (each style's under styles)",
        "references": f"each style's references of those images ({refs} reference captions)",
        "perplexity": f"{perplexity.description} ({', '.join(styles)}), teacher forced, each from its style's start "
        f"token, cut to {trained.max_length} tokens",
        "counts": "integers, not means: num_images the images captioned in some style, length_min and length_max "
        "over every style's captions; vocab_size and unique_captions under styles only (a word or caption may be "
        "in several styles)",
    }
    return ModelEvaluation(scores, results, list(missing))


def _over_styles(per_style: Mapping[str, Mapping[str, Any]], images: int) -> dict[str, Any]:
    """The figures of every style taken together: each score (a float) the mean over styles, as ``val_cider`` is;
    a count (an int) stays an integer, where one means something over styles (``images``: those captioned in some
    style), else is left to each style's figures: a mean of counts (a vocabulary of 3.33 words) means nothing."""
    over: dict[str, Any] = {}
    for key in next(iter(per_style.values())):
        figures = {style: scores.get(key) for style, scores in per_style.items()}
        if all(isinstance(figure, float) for figure in figures.values()):
            over[key] = mean_over_styles(figures)  # type: ignore[arg-type]  # floats, checked just above
        elif not all(type(figure) is int for figure in figures.values()):
            continue  # notes, domains: each style's own
        elif key == "num_images":
            over[key] = images
        elif key == "length_min":
            over[key] = min(figures.values())  # type: ignore[type-var]  # ints, checked above
        elif key == "length_max":
            over[key] = max(figures.values())  # type: ignore[type-var]
    return over


def _shared_progress(
    on_progress: Callable[[int], None] | None, images: int, captions: int
) -> Callable[[int], None] | None:
    """``on_progress`` counting ``images`` images, for work that writes ``captions`` captions of them (one in each
    style an image has references of: styles may cover different images, so not a whole number per image)."""
    if on_progress is None or captions == images:
        return on_progress
    done = [0]

    def advance(count: int) -> None:
        before = done[0] * images // captions
        done[0] += count
        on_progress(done[0] * images // captions - before)

    return advance


def _per_domain(
    references: dict[str, list[CaptionRecord]],
    candidates: dict[str, str],
    metrics: str | Iterable[str] | None,
    meteor: str = "python",
) -> dict[str, dict[str, Any]]:
    """The metrics over each domain's images, for data whose records carry one (nocaps: in/near/out-domain), with the
    same METEOR engine as the whole split's: a ``--meteor java`` figure is the jar's in every row."""
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
                meteor=meteor,
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
    and content match compares each styled caption with the model's own neutral caption of the image (none for a
    model trained without neutral).
    """
    import dataclasses

    from captionkit.evaluation.style import evaluate_styles

    styles = list(styles or captioner.styles)
    if "neutral" not in styles and "neutral" in captioner.styles:
        styles.insert(0, "neutral")  # content match needs the neutral caption
    starts = {style: captioner.style_start_token(style) for style in styles}  # fails early on a missing style
    images: dict[str, Any] = {}
    references: dict[str, dict[str, list[str]]] = {style: {} for style in styles}
    for record in records:
        images.setdefault(record.image_id, record.image_path)
        if record.style in references:
            references[record.style].setdefault(record.image_id, []).append(record.caption)
    generated: dict[str, dict[str, str]] = {style: {} for style in styles}
    failed: list[dict[str, Any]] = []
    ids = list(images)
    for start in range(0, len(ids), batch_size):
        chunk, opened = [], []
        for image_id in ids[start : start + batch_size]:
            try:
                opened.append(captioner.load_images([images[image_id]])[0])
                chunk.append(image_id)
            except ImageError as error:  # counted below: an unreadable image has no caption in any style
                failed.append({"image": str(images[image_id]), "image_id": image_id, "error": error.reason})
        for style in styles:
            config = dataclasses.replace(decoding, start_token_id=starts[style])
            for image_id, found in zip(chunk, captioner.caption_pil(opened, config), strict=True):
                generated[style][image_id] = found[0].caption
        if on_progress is not None:
            on_progress(len(ids[start : start + batch_size]))
    captioned = len(generated[styles[0]])  # every readable image has a caption in each style
    if ids and not captioned:
        raise NoImageRead(failed)
    table = evaluate_styles(generated, classifier, references)
    return {
        "styles": {style: scores.as_dict() for style, scores in table.items()},
        "images": len(ids),
        "failed_images": len(ids) - captioned,
    }
