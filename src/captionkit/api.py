"""The public Python API.

>>> from captionkit import Captioner
>>> captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")  # or a local checkpoint dir
>>> [result.caption for result in captioner.caption(["photo.jpg"], num_beams=4)]  # doctest: +SKIP
['a cat laying on top of a couch next to another cat']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from captionkit.attention import caption_maps, check_attention, token_texts
from captionkit.decoding import Caption, DecodingConfig, generate, to_captions
from captionkit.decoding.options import DecodingRequest, decoding_request, resolve_decoding
from captionkit.devices import resolve_device
from captionkit.errors import InputError, ModelLoadError
from captionkit.export.int8 import count_parameters
from captionkit.export.onnx import ONNX_CONFIG
from captionkit.hub import DEFAULT_MODEL
from captionkit.images import ImageLimits, ImageSource, Preprocessing, load_image
from captionkit.loading import load_pretrained
from captionkit.models.base import CaptionModel
from captionkit.parts import CaptionerParts
from captionkit.precision import resolve_dtype
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, start_token_id, style_token_ids


@dataclass(frozen=True)
class CaptionResult:
    """The captions of one image, best first; ``caption`` and ``score`` are the best one's."""

    image: str
    captions: list[Caption]

    @property
    def caption(self) -> str:
        return self.captions[0].caption

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
        self.device = resolve_device(device)
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
        """Load a captionkit checkpoint directory, an int8 or ONNX export, or a hub id / directory in the Hugging Face
        layout (see :func:`captionkit.loading.load_pretrained`). Exports run on the CPU unless ``device`` says.

        ``dtype``: fp32 (default), bf16, or fp16 (GPU only); the weights are cast on load. Exports run in fp32 only.
        """
        if device is not None:
            resolve_device(device)  # a device this machine lacks fails before the weights load
        loaded = load_pretrained(name_or_dir)
        device = device or _cpu_if(loaded.cpu_only)
        if loaded.cpu_only and resolve_dtype(dtype, torch.device(device or "cpu")) != torch.float32:
            raise InputError("dtype", f"{name_or_dir} is an int8 or ONNX export: it runs in fp32 only")
        captioner = cls(loaded.model, loaded.tokenizer, loaded.preprocessing, device, dtype=dtype)
        captioner.name = str(name_or_dir)
        return captioner

    @classmethod
    def from_onnx(cls, directory: str | Path, threads: int | None = None) -> Captioner:
        """A captioner decoding with onnxruntime from an ONNX export, with ``threads`` onnxruntime threads."""
        loaded = load_pretrained(directory, onnx_threads=threads)
        if not loaded.is_onnx:
            raise ModelLoadError(directory, f"no {ONNX_CONFIG}: not an ONNX export (captionkit export onnx)")
        captioner = cls(loaded.model, loaded.tokenizer, loaded.preprocessing, device="cpu")
        captioner.name = str(directory)
        return captioner

    @property
    def num_parameters(self) -> int:
        """The model's parameter count, int8 layers of an int8 export included."""
        return count_parameters(self.model)

    def save_pretrained(self, directory: str | Path) -> None:
        CaptionerParts(self.model, self.tokenizer, self.preprocessing, Path(directory)).save(directory)

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

    def decoding_config(self, style: str | None = None, prompt: str | None = None, **decoding: Any) -> DecodingConfig:
        """A :class:`DecodingConfig` from keyword fields or aliases (``captionkit.decoding.options``, the table the
        CLI and the server use too), starting captions in ``style`` (None: neutral) and, with a ``prompt`` (BLIP's
        conditional captioning: "a photography of"), continuing that text."""
        return self.resolve_decoding(decoding_request(style=style, prompt=prompt, **decoding))

    def resolve_decoding(self, request: DecodingRequest, name: str | None = None) -> DecodingConfig:
        """``request`` (checked options) for this model: its style's start token, its prompt's tokens, its length.
        Errors name the model as ``name`` (default: where it was loaded from)."""
        return resolve_decoding(request, self.model, self.tokenizer, name or self.name)

    def caption(
        self,
        images: ImageSource | Iterable[ImageSource],
        *,
        batch_size: int = 8,
        style: str | None = None,
        prompt: str | None = None,
        attention: bool = False,
        **decoding: Any,
    ) -> list[CaptionResult]:
        """Caption paths, bytes, binary streams or PIL images (one, or a list of them); keyword arguments are
        :class:`DecodingConfig` fields or their aliases (``captionkit.decoding.options``).

        Defaults: beam search with 4 beams (1 when sampling), at most 20 new tokens. ``style`` ("positive",
        "negative", "neutral") asks a style-controlled model for captions in that style (see :attr:`styles`).
        ``prompt`` is text the caption continues (the caption is what follows it, without it). ``attention=True``
        fills each caption's ``tokens`` and ``attention`` maps (an ``InputError`` for a model without attention).
        """
        images = _image_list(images)
        if attention:
            check_attention(self.model)
        config = self.decoding_config(style, prompt, **decoding)
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
        captions = to_captions(hypotheses, self.tokenizer)
        if not attention:
            return captions
        return self.add_attention(pixels, captions, config.start_token_id, config.prompt_ids)

    def add_attention(
        self,
        pixels: torch.Tensor,
        captions: list[list[Caption]],
        start_token_id: int | None = None,
        prompt_ids: tuple[int, ...] = (),
    ) -> list[list[Caption]]:
        """``captions`` (n-best per image of the preprocessed ``pixels``) with ``tokens`` and ``attention`` filled."""
        flat = [(row, caption) for row, per_image in enumerate(captions) for caption in per_image]
        rows, sequences = [row for row, _ in flat], [caption.token_ids for _, caption in flat]
        maps = iter(caption_maps(self.model, pixels, rows, sequences, start_token_id, prompt_ids))
        return [
            [replace(c, tokens=token_texts(self.tokenizer, c.token_ids), attention=next(maps)) for c in per_image]
            for per_image in captions
        ]


def _image_list(images: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """``images`` as a list: one image (a path, bytes of any kind, a binary stream, a PIL image) or many."""
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | Image.Image) or hasattr(images, "read"):
        return [images]
    if not isinstance(images, Iterable):
        kind = type(images).__name__
        raise TypeError(f"cannot caption a {kind}: give a path, bytes, a binary stream, a PIL image, or a list of them")
    return list(images)


def _cpu_if(cpu_only: bool) -> str | None:
    return "cpu" if cpu_only else None


def _name(image: ImageSource) -> str:
    if isinstance(image, str | os.PathLike):
        return str(os.fspath(image))
    return "<image>"
