"""The public Python API.

>>> from captionkit import Captioner
>>> captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")  # or a local checkpoint dir
>>> [result.caption for result in captioner.caption(["photo.jpg"], num_beams=4)]  # doctest: +SKIP
['a cat laying on top of a couch next to another cat']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captionkit.attention import caption_maps, check_attention, token_texts
from captionkit.decoding import DecodingConfig, Hypothesis, decoding_options, generate
from captionkit.errors import InputError
from captionkit.export.int8 import apply_saved_quantization, is_quantized
from captionkit.hub import DEFAULT_MODEL, resolve_model_source
from captionkit.images import ImageLimits, ImageSource, Preprocessing, load_image
from captionkit.models.base import CaptionModel
from captionkit.models.registry import load_model
from captionkit.precision import resolve_dtype
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, start_token_id, style_token_ids


@dataclass(frozen=True)
class Caption:
    """One decoded caption and its score (see ``captionkit.decoding.Hypothesis``)."""

    text: str
    score: float
    token_ids: list[int] = field(default_factory=list)
    # Only with attention=True: each token's text and its attention over the image, (len(token_ids), h, w), each
    # map summing to 1 (see captionkit.attention).
    tokens: list[str] | None = None
    attention: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, hypothesis: Hypothesis, tokenizer: CaptionTokenizer) -> Caption:
        """The caption of a decoded hypothesis: its text, score and token ids."""
        return cls(tokenizer.decode(hypothesis.token_ids), float(hypothesis.score), list(hypothesis.token_ids))


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
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # fp32 (the default), bf16 or fp16 (GPU only): the weights are cast once, here.
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.limits = limits or ImageLimits()
        # How errors name the model: the directory or hub id it was loaded from.
        self.name = "this model"

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str | Path = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None
    ) -> Captioner:
        """Load a captionkit checkpoint directory, or a hub id / directory in the Hugging Face layout.

        ``dtype``: fp32 (default), bf16, or fp16 (GPU only); the weights are cast on load.
        """
        source = resolve_model_source(name_or_dir)
        # An int8 export (quantization.json) is quantized on load; its int8 kernels run on the CPU, in fp32.
        model = apply_saved_quantization(load_model(source), source)
        if is_quantized(source):
            device = device or "cpu"
            if resolve_dtype(dtype, torch.device(device)) != torch.float32:
                raise InputError("dtype", f"{name_or_dir} is an int8 export: it runs in fp32 only")
        tokenizer = CaptionTokenizer.load(source, model.bos_token_id, model.eos_token_id, model.pad_token_id)
        captioner = cls(model, tokenizer, Preprocessing.load(source), device, dtype=dtype)
        captioner.name = str(name_or_dir)
        return captioner

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save(directory)
        self.preprocessing.save(directory)

    def load_images(self, images: Sequence[ImageSource]) -> list[Image.Image]:
        """Open images safely (raises ``ImageError`` naming the bad one)."""
        return [load_image(image, limits=self.limits) for image in images]

    @property
    def styles(self) -> list[str]:
        """Caption styles this model writes on request: ["neutral"] plus those it was trained to control."""
        return [NEUTRAL, *style_token_ids(self.tokenizer)]

    def style_start_token(self, style: str | None) -> int | None:
        """The decoder start token for ``style`` (None for neutral: the model's bos); a style the model was not
        trained to control is an ``InputError`` saying so."""
        if style is None or style == NEUTRAL:
            return None
        return start_token_id(self.tokenizer, style, self.name)

    def decoding_config(self, style: str | None = None, **decoding: Any) -> DecodingConfig:
        """A :class:`DecodingConfig` from keyword fields, starting captions in ``style`` (None: neutral)."""
        return DecodingConfig(**decoding, start_token_id=self.style_start_token(style))

    def caption(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        batch_size: int = 8,
        style: str | None = None,
        attention: bool = False,
        **decoding: Any,
    ) -> list[CaptionResult]:
        """Caption paths, bytes or PIL images; keyword arguments are :class:`DecodingConfig` fields or their aliases
        (``captionkit.decoding.options``).

        Defaults: beam search with 4 beams (1 when sampling), at most 20 new tokens. ``style`` ("positive",
        "negative", "neutral") asks a style-controlled model for captions in that style (see :attr:`styles`).
        ``attention=True`` fills each caption's ``tokens`` and ``attention`` maps (an ``InputError`` for a model
        without attention).
        """
        if isinstance(images, str | Path | bytes | Image.Image):
            images = [images]
        if attention:
            check_attention(self.model)
        config = decoding_options(self.style_start_token(style), **decoding)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[CaptionResult] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            captions = self.caption_pil(self.load_images(chunk), config, image_offset=start, attention=attention)
            results.extend(CaptionResult(_name(image), found) for image, found in zip(chunk, captions, strict=True))
        return results

    def caption_pil(
        self, images: Sequence[Image.Image], config: DecodingConfig, image_offset: int = 0, attention: bool = False
    ) -> list[list[Caption]]:
        """n-best captions of already-opened RGB images, one batch.

        ``image_offset`` is the first image's position in the caller's whole input: seeded sampling then gives
        each image the same captions whatever the batching.
        """
        if not images:
            return []
        pixels = torch.from_numpy(self.preprocessing(list(images))).to(self.device, self.dtype)
        hypotheses = generate(self.model, pixels, config=config, image_offset=image_offset)
        captions = [[Caption.of(h, self.tokenizer) for h in per_image] for per_image in hypotheses]
        return self.add_attention(pixels, captions, config.start_token_id) if attention else captions

    def add_attention(
        self, pixels: torch.Tensor, captions: list[list[Caption]], start_token_id: int | None = None
    ) -> list[list[Caption]]:
        """``captions`` (n-best per image of the preprocessed ``pixels``) with ``tokens`` and ``attention`` filled."""
        flat = [(row, caption) for row, per_image in enumerate(captions) for caption in per_image]
        rows, sequences = [row for row, _ in flat], [caption.token_ids for _, caption in flat]
        maps = iter(caption_maps(self.model, pixels, rows, sequences, start_token_id))
        return [
            [replace(c, tokens=token_texts(self.tokenizer, c.token_ids), attention=next(maps)) for c in per_image]
            for per_image in captions
        ]


def _name(image: ImageSource) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return "<image>"
