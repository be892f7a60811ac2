"""The public Python API.

>>> from captionkit import Captioner
>>> captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")  # or a local checkpoint dir
>>> [result.caption for result in captioner.caption(["photo.jpg"], num_beams=4)]  # doctest: +SKIP
['a cat laying on top of a couch next to another cat']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from captionkit.decoding import DecodingConfig, generate
from captionkit.hub import resolve_model_source
from captionkit.images import ImageLimits, ImageSource, Preprocessing, load_image
from captionkit.models.base import CaptionModel
from captionkit.models.registry import load_model
from captionkit.text import CaptionTokenizer

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"


@dataclass(frozen=True)
class Caption:
    """One decoded caption and its score (see ``captionkit.decoding.Hypothesis``)."""

    text: str
    score: float
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CaptionResult:
    """The captions of one image, best first; ``caption`` and ``score`` are the best one's."""

    image: str
    captions: list[Caption]

    @property
    def caption(self) -> str:
        return self.captions[0].text

    @property
    def score(self) -> float:
        return self.captions[0].score


class Captioner:
    """A model with its tokenizer and preprocessing: images in, captions out."""

    def __init__(
        self,
        model: CaptionModel,
        tokenizer: CaptionTokenizer,
        preprocessing: Preprocessing,
        device: str | torch.device | None = None,
        limits: ImageLimits | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.limits = limits or ImageLimits()

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = DEFAULT_MODEL, device: str | None = None) -> Captioner:
        """Load a captionkit checkpoint directory, or a hub id / directory in the Hugging Face layout."""
        source = resolve_model_source(name_or_dir)
        model = load_model(source)
        tokenizer = CaptionTokenizer.load(source, model.bos_token_id, model.eos_token_id, model.pad_token_id)
        return cls(model, tokenizer, Preprocessing.load(source), device)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save(directory)
        self.preprocessing.save(directory)

    def load_images(self, images: Sequence[ImageSource]) -> list[Image.Image]:
        """Open images safely (raises ``ImageError`` naming the bad one)."""
        return [load_image(image, limits=self.limits) for image in images]

    def caption(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        batch_size: int = 8,
        **decoding: Any,
    ) -> list[CaptionResult]:
        """Caption paths, bytes or PIL images; keyword arguments are :class:`DecodingConfig` fields.

        Defaults: beam search with 4 beams, at most 20 new tokens.
        """
        if isinstance(images, str | Path | bytes | Image.Image):
            images = [images]
        config = DecodingConfig(**({"num_beams": 4} | decoding))
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[CaptionResult] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            captions = self.caption_pil(self.load_images(chunk), config, image_offset=start)
            results.extend(CaptionResult(_name(image), found) for image, found in zip(chunk, captions, strict=True))
        return results

    def caption_pil(
        self, images: Sequence[Image.Image], config: DecodingConfig, image_offset: int = 0
    ) -> list[list[Caption]]:
        """n-best captions of already-opened RGB images, one batch.

        ``image_offset`` is the first image's position in the caller's whole input: seeded sampling then gives
        each image the same captions whatever the batching.
        """
        if not images:
            return []
        pixels = torch.from_numpy(self.preprocessing(list(images))).to(self.device)
        hypotheses = generate(self.model, pixels, config=config, image_offset=image_offset)
        return [
            [Caption(self.tokenizer.decode(h.token_ids), float(h.score), list(h.token_ids)) for h in per_image]
            for per_image in hypotheses
        ]


def _name(image: ImageSource) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return "<image>"
