"""The public Python API.

>>> from captionkit import Captioner
>>> captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")  # doctest: +SKIP
>>> [result.caption for result in captioner.caption(["photo.jpg"], num_beams=4)]  # doctest: +SKIP
['a cat laying on top of a couch next to another cat']
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
from PIL import Image

from captionkit.attention import caption_maps, check_attention, token_texts
from captionkit.decoding import Caption, DecodingConfig, generate, to_captions
from captionkit.decoding.options import DecodingRequest, decoding_request, resolve_decoding
from captionkit.devices import resolve_device
from captionkit.errors import ImageError, InputError, ModelLoadError, first_line
from captionkit.export import keep_training_settings
from captionkit.export.int8 import count_parameters
from captionkit.export.onnx import ONNX_CONFIG
from captionkit.export.staging import GENERATION_CONFIG, staged_export
from captionkit.hub import DEFAULT_MODEL
from captionkit.images import ImageLimits, ImageSource, Preprocessing, load_image
from captionkit.loading import load_pretrained
from captionkit.models.base import CaptionModel
from captionkit.models.config_file import CONFIG_FILE
from captionkit.parts import EXPORT_MARKERS, CaptionerParts
from captionkit.precision import resolve_dtype
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, start_token_id, style_name, style_token_ids
from captionkit.trained_on import TRAIN_CONFIG, TrainedOn


@dataclass(frozen=True)
class CaptionResult:
    """The captions of one image, best first; ``caption`` and ``score`` are the best one's.

    ``image`` is the image's path, or ``"<image>"`` for one without a path. With ``errors="record"``, an image that
    could not be read gives a result whose ``error`` is the one-line message the default ``errors="raise"`` raises
    (``"photos/bad.jpg (images[10]): unsupported image format (text); ..."``), with no ``captions``; its ``caption``
    and ``score`` raise that :class:`~captionkit.errors.ImageError`. ``ok`` is False for such a result.
    """

    image: str
    captions: list[Caption]
    error: str | None = None
    # (source, reason) of the ImageError, not the error itself: asdict() and pickle copy a result, not an error.
    _failure: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def failed(cls, image: str, failure: ImageError) -> CaptionResult:
        """The result of an image that could not be read, for ``failure``."""
        return cls(image, [], str(failure), (failure.source, failure.reason))

    @property
    def ok(self) -> bool:
        """Whether the image was captioned (False: see ``error``)."""
        return self.error is None

    @property
    def caption(self) -> str:
        """The best caption's text (an ``ImageError`` for an image that could not be read)."""
        return self._best().caption

    @property
    def score(self) -> float:
        """The best caption's score: its log-probability / its length (eos included) ** ``length_penalty``, by
        default the mean log-probability per token (an ``ImageError`` for an image that could not be read)."""
        return self._best().score

    def _best(self) -> Caption:
        if self._failure is not None:
            raise ImageError(*self._failure)
        return self.captions[0]


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
        self.name = _UNNAMED
        # "int8" or "ONNX" for a model loaded from an export (which runs on the CPU in fp32, and is not saved again).
        self.export: str | None = None
        # The styles its training run trained (data.styles in the model directory's train_config.json; empty: none,
        # or not known). A run whose styles leave neutral out never trained the plain start token.
        self.trained_styles: tuple[str, ...] = ()
        # The directory it was loaded from (None: built in memory, or an ONNX export): its training run's settings
        # go along when it is saved elsewhere.
        self.source: Path | None = None
        # One model call at a time, from any thread: attention maps switch vit-gpt2's attention implementation while
        # they run, and a call beside them (a notebook's ThreadPoolExecutor) crashed ("stack expects a non-empty
        # TensorList") or decoded with the other implementation's rounding. Images still load in parallel.
        self._model_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Captioner:
        """Load a captionkit checkpoint directory, an int8 or ONNX export, or a hub id / directory in the Hugging Face
        layout (see :func:`captionkit.loading.load_pretrained`).

        ``device``: "cpu", "cuda", "cuda:N", "mps" or a ``torch.device`` (None: the GPU when there is one, else the
        CPU); one this machine lacks is an ``InputError``. Exports run on the CPU (another ``device`` is an
        ``InputError``).

        ``dtype``: fp32 (default), bf16, or fp16 (GPU only); the weights are read in it (a half-precision load never
        holds the fp32 weights, on the CPU or the device). Exports run on the CPU in fp32 only.
        """
        _check_model_source(name_or_dir, "name_or_dir")
        if device is not None:
            resolve_device(device)  # a device this machine lacks fails before the weights load
        if not _is_local_export(name_or_dir):
            # A bad dtype (or fp16 on the CPU) fails before a hub download and a load, not after them; an export's
            # own error ("runs in fp32 only") comes from the check after its load.
            resolve_dtype(dtype, resolve_device(device))
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
        captioner.source = loaded.source
        trained = TrainedOn.read(loaded.source, history=False)  # the run's settings alone: its log is not needed
        captioner.trained_styles = trained.styles if trained is not None else ()
        return captioner

    @classmethod
    def from_onnx(cls, directory: str | Path, threads: int | None = None) -> Captioner:
        """A captioner decoding with onnxruntime from an ONNX export, with ``threads`` onnxruntime threads."""
        _check_model_source(directory, "directory")
        _check_threads(threads)
        loaded = load_pretrained(directory, onnx_threads=threads)
        if not loaded.is_onnx:
            raise ModelLoadError(directory, f"no {ONNX_CONFIG}: not an ONNX export (captionkit export onnx)")
        captioner = cls(loaded.model, loaded.tokenizer, loaded.preprocessing, device="cpu")
        captioner.name = str(directory)
        captioner.export = "ONNX"
        return captioner

    def __getstate__(self) -> dict[str, Any]:
        # A lock cannot be pickled: without this, a captioner sent to a process pool (or deep-copied, or
        # torch.save'd) failed with "cannot pickle '_thread.lock' object". Each copy gets a lock of its own.
        return {name: value for name, value in self.__dict__.items() if name != "_model_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._model_lock = threading.Lock()

    def __repr__(self) -> str:
        # What a notebook shows for a cell ending in the captioner (it showed "<captionkit.api.Captioner object at
        # 0x7f...>"): where it came from, its family, and where and in what precision it runs.
        source = "" if self.name == _UNNAMED else f"{self.name!r}, "
        family = getattr(self.model, "family", type(self.model).__name__)
        export = "" if self.export is None else f", export={self.export!r}"
        dtype = str(self.dtype).removeprefix("torch.")
        return f"Captioner({source}family={family!r}, device={str(self.device)!r}, dtype={dtype!r}{export})"

    @property
    def num_parameters(self) -> int:
        """The model's parameter count, int8 layers of an int8 export included."""
        return count_parameters(self.model)

    def save_pretrained(self, directory: str | Path) -> None:
        """Save the model, its tokenizer and preprocessing as a captionkit checkpoint in ``directory`` (a checkpoint
        there is replaced). A model loaded from an export is not saved again (an ``InputError``): copy the export's
        directory instead.

        The files are written into a staging directory and moved into place once all are written, ``config.json``
        last: a failure or Ctrl-C midway leaves ``directory`` as it was, where it used to leave a half-written
        checkpoint that loaded as a mix of two models, or failed to load with a reason naming neither."""
        if self.export is not None:
            raise InputError(
                self.name,
                f"is an {self.export} export: it cannot be saved as a checkpoint; copy its directory, or save the "
                "checkpoint it was exported from",
            )
        _check_save_directory(Path(directory))
        parts = CaptionerParts(self.model, self.tokenizer, self.preprocessing, Path(directory))
        try:
            # The training run's settings (train_config.json: the styles it trained, its data split) describe the
            # model, so they go with it; over another checkpoint, that run's settings are removed (they would lend
            # this model its styles), and so are its generation settings, which a family without them (CNN + LSTM,
            # prefix) does not write over. A run's COMPLETE stays.
            with staged_export(
                Path(directory), CONFIG_FILE, replaced=(TRAIN_CONFIG, GENERATION_CONFIG), writer="a save_pretrained"
            ) as staging:
                parts.save(staging)
                if self.source is not None:
                    keep_training_settings(self.source, staging)
        except OSError as error:  # a read-only or full disk, a file on the way: one line naming the directory
            raise InputError(
                directory, f"cannot save the checkpoint here ({error.strerror or first_line(error)})"
            ) from None

    def load_images(self, images: ImageSource | Iterable[ImageSource], first: int | None = None) -> list[Image.Image]:
        """Open images safely (raises ``ImageError`` naming the bad one); one image gives a list of one, and an item
        that is no image kind is a ``TypeError`` naming its position. With ``first``, the position of ``images[0]``
        in the caller's list, an image is also named by its position: ``images[i]``, or ``photo.jpg (images[i])``
        for one with a path or file name."""
        # A path is a str, itself a sequence: iterated, it would be opened character by character ("/: is a
        # directory").
        listed = (
            [cast(ImageSource, images)]
            if _is_one_image(images)
            else list(_image_iter(cast(Iterable[ImageSource], images)))
        )
        _check_items(listed, first or 0)
        return [self._load_image(image, _position_name(image, first, index)) for index, image in enumerate(listed)]

    def _load_image(self, image: ImageSource, name: str | None) -> Image.Image:
        if isinstance(image, torch.Tensor):
            name = name or "<tensor>"
            image = _tensor_to_array(image, name)
        if isinstance(image, np.ndarray):
            _check_float_samples(image, name or "<array>")
        closed = _closed(image)
        if closed is not None:
            raise ImageError(
                name or _file_name(image) or ("<image>" if isinstance(image, Image.Image) else "<stream>"), closed
            )
        try:
            return load_image(image, limits=self.limits, name=name)
        except UnicodeDecodeError:
            # open("photo.jpg") without "b": its read() fails on the JPEG's bytes before load_image can see that the
            # stream gives text. An ImageError: errors="record" keeps it as this image's one line.
            if not isinstance(image, io.TextIOBase):
                raise
            raise ImageError(
                name or _file_name(image) or "<stream>", "a text-mode stream; open it in binary mode ('rb')"
            ) from None

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
        conditional captioning: "a photography of"), continuing that text. Numpy scalars (``np.arange``'s
        ``np.int64``, ``np.float32``, ``np.True_``) count as the Python values they hold."""
        plain = {name: _plain(value) for name, value in decoding.items()}
        return self.resolve_decoding(decoding_request(style=style, prompt=prompt, **plain))

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
        errors: ErrorMode = "raise",
        style: str | None = None,
        prompt: str | None = None,
        attention: bool = False,
        **decoding: Any,
    ) -> list[CaptionResult]:
        """Caption one image or an iterable of them (a list, a generator): a list of :class:`CaptionResult`, one per
        image, in input order. The list is a list for one image too: ``[result] = captioner.caption("photo.jpg")``
        (or ``captioner.caption("photo.jpg")[0].caption``). An image is a path, bytes, a binary stream, a PIL image
        (any mode: alpha over white, EXIF rotation applied), a numpy array ((height, width) or (height, width, 3|4),
        RGB(A); uint8, uint16, bool, or floats: in [0, 1], or else in 0..255; NaN or infinite samples are refused) or
        a torch tensor ((channels, height, width), as torchvision's, or (height, width); its samples as an array's).
        A dict is refused (give ``list(d.values())`` or ``list(d)``).

        ``batch_size``: images per model call (default 8), an integer >= 1.

        ``errors``: ``"raise"`` (the default) raises the first bad image's ``ImageError`` and returns nothing;
        ``"record"`` (as the ``caption`` CLI does) goes on and gives that image a result whose ``error`` says why
        (``result.ok`` is False); keep the good ones with ``[r for r in results if r.ok]``. To write results as they
        come, a batch at a time, use :meth:`caption_iter`.

        Decoding options (``captionkit.decoding.options``, the table the CLI and the server use; alias in brackets):

        * ``num_beams`` (``beams``): beam width, default 4 (1 when sampling); 1 is greedy decoding.
        * ``max_new_tokens`` (``max_length``): at most this many generated tokens, default 20.
        * ``num_return_sequences`` (``n_best``): captions per image, at most ``num_beams`` (or samples), default 1.
        * ``length_penalty``: beam score = log-prob / length ** this, in [-1, 5], default 1.
        * ``do_sample`` (``sample``): sample instead of searching, with ``temperature`` (default 1), ``top_k``
          (default 0: all tokens), ``top_p`` (in (0, 1], default 1) and ``seed`` (the same seed, the same captions,
          whatever ``batch_size``, and whether or not other images failed).
        * ``early_stopping`` (True, False, "never") and ``min_new_tokens``, as transformers' ``generate`` has them.

        ``style`` ("positive", "negative", "neutral") asks a style-controlled model for captions in that style (see
        :attr:`styles`). ``prompt`` is text the caption continues (the caption is what follows it, without it).
        ``attention=True`` fills each caption's ``tokens`` and ``attention`` maps (an ``InputError`` for a model
        without attention). A bad option raises an ``InputError`` naming it, before any image is read. A bad image
        is an ``ImageError`` naming it: an image of a list by its path (or file name) and its position,
        ``photos/bad.jpg (images[10])``, or by its position alone, ``images[10]``. An object that is no image kind
        is a ``TypeError`` naming its position, raised before any image is decoded, whatever ``errors`` says.
        """
        batch_size = _checked_batch_size(batch_size)
        _check_error_mode(errors)
        first = None if _is_one_image(images) else 0
        listed = _image_list(images)
        return list(self._start(iter(listed), first, batch_size, errors, style, prompt, attention, decoding))

    def caption_iter(
        self,
        images: ImageSource | Iterable[ImageSource],
        *,
        batch_size: int = 8,
        errors: ErrorMode = "raise",
        style: str | None = None,
        prompt: str | None = None,
        attention: bool = False,
        **decoding: Any,
    ) -> Iterator[CaptionResult]:
        """:meth:`caption`, one result at a time, a batch of ``batch_size`` images after another: what a long job
        writes as it goes. ``images`` is read lazily, a batch at a time (a generator of a million paths is never held
        whole), so an item that is no image kind is a ``TypeError`` when its batch comes. Options are checked now,
        before the first result is asked for. With ``errors="raise"`` the results before the bad image's batch
        have been given already; ``errors="record"`` goes on to the end::

            with open("captions.jsonl", "w") as out:
                for result in captioner.caption_iter(paths, errors="record"):
                    found = {"caption": result.caption} if result.ok else {"error": result.error}
                    print(json.dumps({"image": result.image, **found}), file=out, flush=True)
        """
        batch_size = _checked_batch_size(batch_size)
        _check_error_mode(errors)
        first = None if _is_one_image(images) else 0
        items = iter([cast(ImageSource, images)]) if first is None else _image_iter(images)
        return self._start(items, first, batch_size, errors, style, prompt, attention, decoding)

    def _start(
        self,
        images: Iterator[ImageSource],
        first: int | None,
        batch_size: int,
        errors: ErrorMode,
        style: str | None,
        prompt: str | None,
        attention: bool,
        decoding: dict[str, Any],
    ) -> Iterator[CaptionResult]:
        """Check the options now, then return the generator of results (whose body runs only when iterated)."""
        if not isinstance(attention, bool | np.bool_):  # attention="false" would be truthy: maps nobody asked for
            raise InputError("attention", f"must be True or False, got {attention!r}")
        if attention:
            check_attention(self.model)
        config = self.decoding_config(style, prompt, **decoding)
        return self._results(images, first, batch_size, errors == "record", config, attention)

    def _results(
        self,
        images: Iterator[ImageSource],
        first: int | None,
        batch_size: int,
        record: bool,
        config: DecodingConfig,
        attention: bool,
    ) -> Iterator[CaptionResult]:
        start = 0
        while chunk := list(islice(images, batch_size)):
            _check_items(chunk, start)
            opened, failures = self._open_chunk(chunk, None if first is None else start, record)
            found = self._caption_opened(opened, start, config, attention)
            for index, image in enumerate(chunk):
                if index in failures:
                    yield CaptionResult.failed(_name(image), failures[index])
                else:
                    yield CaptionResult(_name(image), found[index])
            start += len(chunk)

    def _open_chunk(
        self, chunk: Sequence[ImageSource], first: int | None, record: bool
    ) -> tuple[dict[int, Image.Image], dict[int, ImageError]]:
        """The chunk's images opened, by index, and (with ``record``) the errors of those that could not be."""
        opened: dict[int, Image.Image] = {}
        failures: dict[int, ImageError] = {}
        for index, image in enumerate(chunk):
            name = _position_name(image, first, index)
            try:
                opened[index] = self._load_image(image, name)
            except ImageError as failure:
                if not record:
                    raise
                failures[index] = failure
            except Exception as failure:  # as the CLI does: a decoder's bug costs this image, not the whole run
                if not record:
                    raise
                reason = f"cannot decode image ({type(failure).__name__}: {first_line(failure)})"
                failures[index] = ImageError(name or _name(image), reason)
        return opened, failures

    def _caption_opened(
        self, opened: dict[int, Image.Image], start: int, config: DecodingConfig, attention: bool
    ) -> dict[int, list[Caption]]:
        """n-best captions of the opened images of a chunk that starts at position ``start``, by index. Seeded
        sampling draws image i from ``seed + i``, which one decoder call gives only to consecutive positions: a
        failed image splits the chunk into runs, so that an image's captions do not depend on its neighbours."""
        indices = sorted(opened)
        seeded = config.do_sample and config.seed is not None
        runs = _consecutive_runs(indices) if seeded else [indices]
        found: dict[int, list[Caption]] = {}
        for run in runs:
            if not run:
                continue
            captions = self.caption_pil([opened[i] for i in run], config, start + run[0], attention)
            found.update(zip(run, captions, strict=True))
        return found

    def caption_pil(
        self,
        images: Image.Image | Sequence[Image.Image],
        config: DecodingConfig | None = None,
        image_offset: int = 0,
        attention: bool = False,
        starts: Sequence[int | None] | None = None,
    ) -> list[list[Caption]]:
        """n-best captions of already-opened PIL images, one batch: a list of captions per image, one image giving
        a list of one too. Any mode is converted to RGB as :meth:`caption` converts it (alpha over white); an EXIF
        rotation is not applied here (:meth:`load_images` applies it, as :meth:`caption` does).

        ``config``: a :class:`DecodingConfig`, e.g. ``captioner.decoding_config(num_beams=4)`` (None: the defaults
        of :meth:`caption`). ``image_offset`` is the first image's position in the caller's whole input: seeded
        sampling then gives each image the same captions whatever the batching. ``starts``: each image's own start
        token (a style's; None: the config's), so that one batch holds images of several styles.
        """
        batch = [images] if isinstance(images, Image.Image) else list(images)
        config = self._checked_config(config)
        for index, image in enumerate(batch):
            # A closed image failed inside Pillow as a bare AssertionError or "Operation on closed image".
            closed = _closed(image) if isinstance(image, Image.Image) else None
            if closed is not None:
                raise ImageError(_file_name(image) or f"images[{index}]", closed)
        if not batch:
            return []
        pixels = torch.from_numpy(self.preprocessing(batch)).to(self.device, self.dtype)
        with self._model_lock:
            hypotheses = generate(self.model, pixels, config=config, image_offset=image_offset, starts=starts)
        captions = to_captions(hypotheses, self.tokenizer)
        if not attention:
            return captions
        return self.add_attention(pixels, captions, config.start_token_id, config.prompt_ids, starts)

    def _checked_config(self, config: object) -> DecodingConfig:
        """``config``, or the default options for None; anything else failed deep in decoding as an AttributeError
        (``'dict' object has no attribute 'prompt_ids'``)."""
        if config is None:
            return self.decoding_config()
        if not isinstance(config, DecodingConfig):
            raise TypeError(
                f"config: expected a DecodingConfig, got {type(config).__name__}: build one with "
                "captioner.decoding_config(num_beams=4, ...)"
            )
        return config

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
            with self._model_lock:
                maps = caption_maps(self.model, pixels, rows, sequences, start, prompt_ids)
            found.update(zip(chosen, maps, strict=True))
        maps = iter(found[i] for i in range(len(flat)))
        return [
            [replace(c, tokens=token_texts(self.tokenizer, c.token_ids), attention=next(maps)) for c in per_image]
            for per_image in captions
        ]


_UNNAMED = "this model"
_ONE_IMAGE = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, torch.Tensor)
_SOURCES = "a path, bytes, a binary stream, a PIL image, a numpy array, a torch tensor"
ErrorMode = Literal["raise", "record"]
_ERROR_MODES: tuple[str, ...] = get_args(ErrorMode)


def _is_one_image(images: object) -> bool:
    if isinstance(images, np.ndarray):  # an array of strings or objects holds paths or images: np.array(paths)
        return images.dtype.kind not in "OSU"
    return isinstance(images, _ONE_IMAGE) or hasattr(images, "read")


def _image_iter(images: Iterable[ImageSource]) -> Iterator[ImageSource]:
    """An iterator over ``images``, a collection of images; a ``TypeError`` for what is not one."""
    if isinstance(images, Mapping):  # iterating a dict gives its keys: each then "no such file", or captioned as a path
        kind = type(images).__name__
        raise TypeError(
            f"cannot caption a {kind}: give {_SOURCES}, or a list of them (list(images.values()) or list(images))"
        )
    # A 2-D column of paths (a DataFrame, a 2-D array of strings) iterates over its rows, each of which would then be
    # refused as if it were the input; a column of one dimension (a pandas Series of paths, an array of them) is a list.
    if not isinstance(images, Iterable) or len(getattr(images, "shape", ())) > 1:
        raise TypeError(f"cannot caption a {type(images).__name__}: give {_SOURCES}, or a list of them")
    return iter(images)


def _image_list(images: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """``images`` as a list: one image (a path, bytes of any kind, a binary stream, a PIL image, a numpy array, a
    tensor) or many. Every item is checked here, before any is decoded: a bad one is a ``TypeError`` naming its
    position."""
    if _is_one_image(images):
        return [cast(ImageSource, images)]  # (a type checker cannot see what _is_one_image checked)
    listed = list(_image_iter(cast(Iterable[ImageSource], images)))
    _check_items(listed, 0)
    return listed


def _check_items(images: Sequence[object], first: int) -> None:
    """A ``TypeError`` naming the position of the first item that is no image kind (``images[0]`` is at ``first``)."""
    for index, image in enumerate(images):
        if not _is_one_image(image):
            raise TypeError(f"images[{first + index}]: cannot caption a {type(image).__name__}: give {_SOURCES}")


def _check_error_mode(errors: object) -> None:
    if errors not in _ERROR_MODES:
        raise InputError("errors", f"must be {' or '.join(map(repr, _ERROR_MODES))}, got {errors!r}")


def _position_name(image: ImageSource, first: int | None, index: int) -> str | None:
    """What errors call ``image``: None (load_image's default: its path, ``<bytes>``, ...) for an image that is not
    in a list; else its position, after its path or file name where it has one."""
    if first is None:
        return None
    position = f"images[{first + index}]"
    file_name = _file_name(image)
    return position if file_name is None else f"{file_name} ({position})"


def _file_name(image: ImageSource) -> str | None:
    """The file load_image names ``image`` by: a path, an open file's ``name``, a PIL image's ``filename``."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image) or None
    name = getattr(image, "filename", None) if isinstance(image, Image.Image) else getattr(image, "name", None)
    return name if isinstance(name, str) and name != "" else None


def _closed(image: ImageSource) -> str | None:
    """Why ``image`` can no longer be read: a stream, or a PIL image, closed (its ``with`` block left) before it was
    captioned; None when it is open. Read, they failed as a bare "ValueError: read of closed file", and as "corrupt or
    truncated JPEG data", which blamed the file."""
    if isinstance(image, Image.Image):
        closed = "the PIL image was closed before it was captioned (caption it inside its with block)"
        try:
            pixels = image.im  # Pillow's "Operation on closed image" ValueError after close()
        except ValueError:
            return closed
        except AssertionError:  # opened lazily: its pixels are read from its file on first use
            pixels = None
        # Leaving a with block closes the file of an image opened lazily: its pixels can no longer be read.
        return closed if pixels is None and getattr(image, "fp", "") is None else None
    if hasattr(image, "read") and getattr(image, "closed", False) is True:
        return "the stream was closed before it was captioned (caption it inside its with block)"
    return None


def _tensor_to_array(tensor: torch.Tensor, label: str) -> np.ndarray:
    """A torch image as numpy's (height, width[, channels]): (channels, height, width) with 1, 3 or 4 channels, as
    torchvision's, or (height, width). A tensor is never read as (height, width, channels): (3, 4, 3) would be
    ambiguous; ``tensor.numpy()`` gives numpy's layout, which arrays take."""
    shape = tuple(tensor.shape)
    if tensor.ndim == 3 and shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    elif tensor.ndim != 2:
        reason = f"a tensor of shape {shape} is not an image: give (channels, height, width) or (height, width)"
        raise ImageError(label, reason + _tensor_hint(shape))
    if tensor.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
        tensor = tensor.float()
    if tensor.is_complex():
        raise ImageError(label, f"a tensor of {tensor.dtype} is not an image: give integer, bool or float samples")
    return tensor.detach().cpu().numpy()


def _tensor_hint(shape: tuple[int, ...]) -> str:
    """How to pass a tensor of ``shape`` that is no image as it stands: a batch, or channels last (a photo read
    with PIL then ``torch.from_numpy``), whose refusal named no way out."""
    if len(shape) == 4:
        return " (one tensor per image: list(tensor))"
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return " (channels last: tensor.permute(2, 0, 1), or its numpy array)"
    return ""


def _check_float_samples(array: np.ndarray, label: str) -> None:
    """Refuse float samples that no image has: NaN or infinite ones (a division by zero upstream), and values outside
    0..255 (normalised model inputs, with their negative values): load_image would clip them, or make NaN black."""
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ImageError(label, f"{bad} of {array.size} float samples are NaN or infinite")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 255.0:
        reason = f"float samples must lie in [0, 1] or 0..255, got {low:g}..{high:g} (a normalised model input?)"
        raise ImageError(label, reason)


def _consecutive_runs(indices: Sequence[int]) -> list[list[int]]:
    """``indices`` (ascending) in runs that count up by one: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _check_model_source(source: object, argument: str) -> None:
    """A TypeError for a model given as anything but a path or hub id: ``str(source)`` would be looked up on the
    hub, and ``5`` or ``None`` fail as "cannot download from the Hugging Face Hub"."""
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"{argument}: expected a model directory or hub id, got {type(source).__name__}")


def _load_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype | None:
    """The dtype a checkpoint's weights are read in: ``dtype`` on the device they go to (None for fp32, read as
    stored, as before). A name that does not resolve gets here for an export alone (from_pretrained checks it first
    for anything else): it is left to the check after loading, so that the export's own error (it runs on the CPU,
    in fp32) comes first where it did."""
    try:
        resolved = resolve_dtype(dtype, resolve_device(device))
    except InputError:
        return None
    return None if resolved == torch.float32 else resolved


def _is_local_export(name_or_dir: str | Path) -> bool:
    directory = Path(name_or_dir).expanduser()
    return any((directory / marker).is_file() for marker in EXPORT_MARKERS)


def _check_save_directory(directory: Path) -> None:
    """Refuse what ``save_pretrained`` would fail on, or save wrongly: a file, and an export's directory (whose
    marker file, left beside the checkpoint, would have the directory load as the old export again)."""
    if directory.exists() and not directory.is_dir():
        raise InputError(directory, "is a file; expected a directory to save the checkpoint in")
    for marker, kind in EXPORT_MARKERS.items():
        if (directory / marker).is_file():
            raise InputError(
                directory, f"holds {kind} ({marker}), which it would go on loading as: save to another directory"
            )


def _check_threads(threads: object) -> None:
    """onnxruntime takes a negative count without a word, and answers a float or a string with a many-line pybind
    signature dump."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError("threads", f"must be an integer >= 1 (or None: torch's thread count), got {threads!r}")


def _checked_batch_size(batch_size: object) -> int:
    plain = _plain(batch_size)
    if isinstance(plain, bool) or not isinstance(plain, int) or plain < 1:
        raise InputError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
    return plain


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds. A notebook's sweep (``for beams in np.arange(1, 5)``) passes
    np.int64, which the options table (shared with the CLI and the server, which never see numpy) refused as "must
    be an integer, got np.int64(2)"; np.float32 and np.True_ likewise."""
    return value.item() if isinstance(value, np.generic) else value


def _name(image: ImageSource) -> str:
    if isinstance(image, str | os.PathLike):
        return str(os.fspath(image))
    return "<image>"
