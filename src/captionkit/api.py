"""The public Python API.

>>> from captionkit import Captioner
>>> captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")  # doctest: +SKIP
>>> [result.caption for result in captioner.caption(["photo.jpg"], num_beams=4)]  # doctest: +SKIP
['a cat laying on top of a couch next to another cat']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
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
from captionkit.text.styles import NEUTRAL, start_token_id, style_name, style_token_ids
from captionkit.trained_on import TrainedOn


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
        # fp32 (the default), bf16 or fp16 (GPU only): the weights are cast once, here (from_pretrained reads them in
        # this dtype already: then this only moves them, each tensor as it is).
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.limits = limits or ImageLimits()
        # How errors name the model: the directory or hub id it was loaded from.
        self.name = "this model"
        # "int8" or "ONNX" for a model loaded from an export (which runs on the CPU in fp32, and is not saved again).
        self.export: str | None = None
        # The styles its training run trained (data.styles in the model directory's train_config.json; empty: none,
        # or not known). A run whose styles leave neutral out never trained the plain start token.
        self.trained_styles: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Captioner:
        """Load a captionkit checkpoint directory, an int8 or ONNX export, or a hub id / directory in the Hugging Face
        layout (see :func:`captionkit.loading.load_pretrained`). Exports run on the CPU (another ``device`` is an
        ``InputError``).

        ``dtype``: fp32 (default), bf16, or fp16 (GPU only); the weights are read in it (a half-precision load never
        holds the fp32 weights, on the CPU or the device). Exports run on the CPU in fp32 only.
        """
        _check_model_source(name_or_dir, "name_or_dir")
        if device is not None:
            resolve_device(device)  # a device this machine lacks fails before the weights load
        loaded = load_pretrained(name_or_dir, dtype=_load_dtype(dtype, device))
        export = ("ONNX" if loaded.is_onnx else "int8") if loaded.cpu_only else None
        if export is not None:
            if device is not None and resolve_device(device).type != "cpu":
                reason = f"{name_or_dir} is an {export} export: it runs on the CPU only, got {device}"
                raise InputError("device", reason)
            if resolve_dtype(dtype, torch.device("cpu")) != torch.float32:
                raise InputError("dtype", f"{name_or_dir} is an {export} export: it runs in fp32 only")
            device = "cpu"
        captioner = cls(loaded.model, loaded.tokenizer, loaded.preprocessing, device, dtype=dtype)
        captioner.name = str(name_or_dir)
        captioner.export = export
        trained = TrainedOn.read(loaded.source, history=False)  # the run's settings alone: its log is not needed
        captioner.trained_styles = trained.styles if trained is not None else ()
        return captioner

    @classmethod
    def from_onnx(cls, directory: str | Path, threads: int | None = None) -> Captioner:
        """A captioner decoding with onnxruntime from an ONNX export, with ``threads`` onnxruntime threads."""
        _check_model_source(directory, "directory")
        loaded = load_pretrained(directory, onnx_threads=threads)
        if not loaded.is_onnx:
            raise ModelLoadError(directory, f"no {ONNX_CONFIG}: not an ONNX export (captionkit export onnx)")
        captioner = cls(loaded.model, loaded.tokenizer, loaded.preprocessing, device="cpu")
        captioner.name = str(directory)
        captioner.export = "ONNX"
        return captioner

    @property
    def num_parameters(self) -> int:
        """The model's parameter count, int8 layers of an int8 export included."""
        return count_parameters(self.model)

    def save_pretrained(self, directory: str | Path) -> None:
        """Save the model, its tokenizer and preprocessing as a captionkit checkpoint in ``directory``. A model loaded
        from an export is not saved again (an ``InputError``): copy the export's directory instead."""
        if self.export is not None:
            raise InputError(
                self.name,
                f"is an {self.export} export: it cannot be saved as a checkpoint; copy its directory, or save the "
                "checkpoint it was exported from",
            )
        CaptionerParts(self.model, self.tokenizer, self.preprocessing, Path(directory)).save(directory)

    def load_images(self, images: Sequence[ImageSource], first: int | None = None) -> list[Image.Image]:
        """Open images safely (raises ``ImageError`` naming the bad one). With ``first``, the position of
        ``images[0]`` in the caller's list, an image that has no path is named by its position, ``images[i]``."""
        return [
            load_image(image, limits=self.limits, name=_position_name(image, first, index))
            for index, image in enumerate(images)
        ]

    @property
    def styles(self) -> list[str]:
        """Caption styles this model writes on request: "neutral" (unless its training run's ``data.styles`` left it
        out) and those it was trained to control."""
        controlled = list(style_token_ids(self.tokenizer))
        if self.trained_styles and NEUTRAL not in self.trained_styles:
            return [style for style in controlled if style in self.trained_styles]
        return [NEUTRAL, *controlled]

    def style_start_token(self, style: str | None) -> int | None:
        """The decoder start token for ``style`` (None for neutral: the model's bos); a style the model was not
        trained to control, or neutral for a model trained without it, is an ``InputError`` saying so."""
        if style is None or style_name(style) == NEUTRAL:
            self._check_writes_neutral(self.name)
            return None
        return start_token_id(self.tokenizer, style, self.name)

    def _check_writes_neutral(self, name: str, source: str = "style") -> None:
        """Neutral captions start from the plain start token, which a run whose styles leave neutral out (SentiCap's
        positive and negative alone) never trained: its "neutral" captions would be noise."""
        if NEUTRAL not in self.styles:
            written = " and ".join(self.styles)
            raise InputError(
                source,
                f"{name} was trained on {written} captions only (its data.styles leave neutral out): ask for "
                f"{' or '.join(self.styles)}",
            )

    def decoding_config(self, style: str | None = None, prompt: str | None = None, **decoding: Any) -> DecodingConfig:
        """A :class:`DecodingConfig` from keyword fields or aliases (``captionkit.decoding.options``, the table the
        CLI and the server use too), starting captions in ``style`` (None: neutral) and, with a ``prompt`` (BLIP's
        conditional captioning: "a photography of"), continuing that text."""
        return self.resolve_decoding(decoding_request(style=style, prompt=prompt, **decoding))

    def resolve_decoding(self, request: DecodingRequest, name: str | None = None) -> DecodingConfig:
        """``request`` (checked options) for this model: its style's start token, its prompt's tokens, its length.
        Errors name the model as ``name`` (default: where it was loaded from)."""
        if request.style is None or request.style == NEUTRAL:
            self._check_writes_neutral(name or self.name, request.name("style"))
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
        """Caption one image or an iterable of them (a list, a generator): one :class:`CaptionResult` per image, in
        input order. An image is a path, bytes, a binary stream, a PIL image (any mode: alpha over white, EXIF
        rotation applied) or a numpy array ((height, width) or (height, width, 3|4), RGB(A); uint8, uint16, bool, or
        floats: in [0, 1], or else read as 0..255).

        Decoding options (``captionkit.decoding.options``, the table the CLI and the server use; alias in brackets):

        * ``num_beams`` (``beams``): beam width, default 4 (1 when sampling); 1 is greedy decoding.
        * ``max_new_tokens`` (``max_length``): at most this many generated tokens, default 20.
        * ``num_return_sequences`` (``n_best``): captions per image, at most ``num_beams`` (or samples), default 1.
        * ``length_penalty``: beam score = log-prob / length ** this, in [-1, 5], default 1.
        * ``do_sample`` (``sample``): sample instead of searching, with ``temperature`` (default 1), ``top_k``
          (default 0: all tokens), ``top_p`` (in (0, 1], default 1) and ``seed`` (the same seed, the same captions,
          whatever ``batch_size``).
        * ``early_stopping`` (True, False, "never") and ``min_new_tokens``, as transformers' ``generate`` has them.

        ``style`` ("positive", "negative", "neutral") asks a style-controlled model for captions in that style (see
        :attr:`styles`). ``prompt`` is text the caption continues (the caption is what follows it, without it).
        ``attention=True`` fills each caption's ``tokens`` and ``attention`` maps (an ``InputError`` for a model
        without attention). A bad option or image raises an ``InputError`` (``ImageError`` for an image) naming it:
        an image of a list by its path (or file name), else as ``images[i]``; an object that is no image kind is a
        ``TypeError``.
        """
        _check_batch_size(batch_size)
        first = None if _is_one_image(images) else 0
        images = _image_list(images)
        if attention:
            check_attention(self.model)
        config = self.decoding_config(style, prompt, **decoding)
        results: list[CaptionResult] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            opened = self.load_images(chunk, None if first is None else start)
            captions = self.caption_pil(opened, config, image_offset=start, attention=attention)
            results.extend(CaptionResult(_name(image), found) for image, found in zip(chunk, captions, strict=True))
        return results

    def caption_pil(
        self,
        images: Sequence[Image.Image],
        config: DecodingConfig,
        image_offset: int = 0,
        attention: bool = False,
        starts: Sequence[int | None] | None = None,
    ) -> list[list[Caption]]:
        """n-best captions of already-opened RGB images, one batch.

        ``image_offset`` is the first image's position in the caller's whole input: seeded sampling then gives
        each image the same captions whatever the batching. ``starts``: each image's own start token (a style's;
        None: the config's), so that one batch holds images of several styles.
        """
        if not images:
            return []
        pixels = torch.from_numpy(self.preprocessing(list(images))).to(self.device, self.dtype)
        hypotheses = generate(self.model, pixels, config=config, image_offset=image_offset, starts=starts)
        captions = to_captions(hypotheses, self.tokenizer)
        if not attention:
            return captions
        return self.add_attention(pixels, captions, config.start_token_id, config.prompt_ids, starts)

    def add_attention(
        self,
        pixels: torch.Tensor,
        captions: list[list[Caption]],
        start_token_id: int | None = None,
        prompt_ids: tuple[int, ...] = (),
        starts: Sequence[int | None] | None = None,
    ) -> list[list[Caption]]:
        """``captions`` (n-best per image of the preprocessed ``pixels``) with ``tokens`` and ``attention`` filled;
        they were decoded from ``start_token_id`` (None: the model's bos), or image i's from ``starts[i]`` where
        that is given and not None."""
        own = [start_token_id if starts is None or starts[row] is None else starts[row] for row in range(len(captions))]
        flat = [(row, caption) for row, per_image in enumerate(captions) for caption in per_image]
        found: dict[int, np.ndarray] = {}  # position in flat -> map; one model call per start token
        for start in dict.fromkeys(own):
            chosen = [i for i, (row, _) in enumerate(flat) if own[row] == start]
            rows, sequences = [flat[i][0] for i in chosen], [flat[i][1].token_ids for i in chosen]
            found.update(zip(chosen, caption_maps(self.model, pixels, rows, sequences, start, prompt_ids), strict=True))
        maps = iter(found[i] for i in range(len(flat)))
        return [
            [replace(c, tokens=token_texts(self.tokenizer, c.token_ids), attention=next(maps)) for c in per_image]
            for per_image in captions
        ]


_ONE_IMAGE = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)
_SOURCES = "a path, bytes, a binary stream, a PIL image, a numpy array"


def _is_one_image(images: object) -> bool:
    if isinstance(images, np.ndarray):  # an array of strings or objects holds paths or images: np.array(paths)
        return images.dtype.kind not in "OSU"
    return isinstance(images, _ONE_IMAGE) or hasattr(images, "read")


def _image_list(images: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """``images`` as a list: one image (a path, bytes of any kind, a binary stream, a PIL image, a numpy array) or
    many. Every item is checked here, before any is decoded: a bad one is a ``TypeError`` naming its position."""
    if _is_one_image(images):
        return [cast(ImageSource, images)]  # (a type checker cannot see what _is_one_image checked)
    # A tensor iterates over its rows, each of which would then be refused as if it were the input; a column of
    # one dimension (a pandas Series of paths, an array of them) is a list.
    if not isinstance(images, Iterable) or len(getattr(images, "shape", ())) > 1:
        raise TypeError(f"cannot caption a {type(images).__name__}: give {_SOURCES}, or a list of them")
    listed = list(images)
    for index, image in enumerate(listed):
        if not _is_one_image(image):
            raise TypeError(f"images[{index}]: cannot caption a {type(image).__name__}: give {_SOURCES}")
    return listed


def _position_name(image: ImageSource, first: int | None, index: int) -> str | None:
    """What errors call ``image``: its path where it has one (None: load_image's default), else its position."""
    if first is None or _has_file_name(image):
        return None
    return f"images[{first + index}]"


def _has_file_name(image: ImageSource) -> bool:
    """Whether load_image names ``image`` by a file: a path, an open file's ``name``, a PIL image's ``filename``."""
    if isinstance(image, str | os.PathLike):
        return True
    name = getattr(image, "filename", None) if isinstance(image, Image.Image) else getattr(image, "name", None)
    return isinstance(name, str) and name != ""


def _check_model_source(source: object, argument: str) -> None:
    """A TypeError for a model given as anything but a path or hub id: ``str(source)`` would be looked up on the
    hub, and ``5`` or ``None`` fail as "cannot download from the Hugging Face Hub"."""
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"{argument}: expected a model directory or hub id, got {type(source).__name__}")


def _load_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype | None:
    """The dtype a checkpoint's weights are read in: ``dtype`` on the device they go to (None for fp32, read as
    stored, as before). A name that does not resolve is left to the check after loading, so that an export's own
    error (it runs on the CPU, in fp32) comes first where it did."""
    try:
        resolved = resolve_dtype(dtype, resolve_device(device))
    except InputError:
        return None
    return None if resolved == torch.float32 else resolved


def _check_batch_size(batch_size: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("batch_size", f"must be an integer >= 1, got {batch_size!r}")


def _name(image: ImageSource) -> str:
    if isinstance(image, str | os.PathLike):
        return str(os.fspath(image))
    return "<image>"
