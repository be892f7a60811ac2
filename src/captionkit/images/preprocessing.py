"""Model preprocessing: :class:`Preprocessing` turns loaded images into the ``(B, 3, H, W)`` float32 array a
ViT-style encoder takes.

It reads and writes Hugging Face's ``preprocessor_config.json`` (or the image settings of ``processor_config.json``)
and gives the same numbers as transformers' image processors, so checkpoints move between the two. numpy only: no
torch here, so light paths stay light.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from captionkit.errors import ConfigError, ImageError
from captionkit.files import write_atomic
from captionkit.images.loading import describe_error, is_number, to_rgb
from captionkit.jsontext import parse_json

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers >= 4.47 saves a processor's image settings here, under "image_processor", instead.
PROCESSOR_CONFIG = "processor_config.json"
# A model directory without its image settings: size, mean and std belong to the weights, so none is guessed.
NO_PREPROCESSOR = (
    f"no such file: copy the base model's {PREPROCESSOR_CONFIG} here (its image size, mean and std are not guessed)"
)

_RESAMPLE_NAMES = {int(f): f.name for f in Image.Resampling}
CROP_ROUNDINGS = ("floor", "half-even")
# Names under which transformers has saved a ViT image processor, and BLIP's, which does the same (a resize to a
# fixed output size): one preprocessing.
_VIT_PROCESSOR_TYPES = frozenset(
    {"ViTImageProcessor", "ViTImageProcessorPil", "ViTImageProcessorFast", "ViTFeatureExtractor"}
    | {"BlipImageProcessor", "BlipImageProcessorPil", "BlipImageProcessorFast"}
)
# Processors that resize (the shorter edge, keeping the aspect ratio, or to a fixed height x width), then may take a
# centre crop, and whether they crop when their file does not say: CLIP's, BiT's (DINOv2), DeiT's, BEiT's, SigLIP's.
# Their ``size: N`` means the shorter edge; their ``crop_size`` is what the model sees.
_CROPS_BY_DEFAULT = {"CLIP": True, "Bit": True, "DeiT": True, "Beit": False, "Siglip": False}
_CROP_PROCESSOR_TYPES = {
    f"{name}{kind}{suffix}": crops
    for name, crops in _CROPS_BY_DEFAULT.items()
    for kind in ("ImageProcessor", "FeatureExtractor")
    for suffix in ("", "Pil", "Fast")
}
# ConvNeXt's (microsoft/resnet-50 uses it): below 384 px, the shorter edge goes to size / crop_pct, then a centre
# crop of size x size; from 384 px up, a plain resize to size x size.
_CONVNEXT_PROCESSOR_TYPES = frozenset(
    {"ConvNextImageProcessor", "ConvNextImageProcessorPil", "ConvNextImageProcessorFast", "ConvNextFeatureExtractor"}
)
_CONVNEXT_CROP_BELOW = 384
_TYPE_KEYS = ("image_processor_type", "feature_extractor_type")
# Processors whose ``size: N`` means the shorter edge when the file has no ``default_to_square``; for all others (ViT,
# BLIP, DeiT, BEiT) it means N x N, as transformers reads it.
_SHORTER_EDGE_BY_DEFAULT = frozenset(
    f"{name}{kind}{suffix}"
    for name in ("CLIP", "Bit", "Siglip", "ConvNext")
    for kind in ("ImageProcessor", "FeatureExtractor")
    for suffix in ("", "Pil", "Fast")
)
# Settings transformers may write that change nothing while they hold these values; other values are refused.
_INERT_SETTINGS: dict[str, tuple[Any, ...]] = {
    "do_center_crop": (None, False),
    "do_pad": (None, False),
    "data_format": (None, "channels_first"),
    "input_data_format": (None,),
    "do_convert_rgb": (None, True, False),  # captionkit's images are RGB by the time they get here
    "do_reduce_labels": (None, False),  # BEiT's segmentation labels: none here
    # A fast (torchvision) processor's call settings, which transformers 4 writes into its file: where it computes,
    # what array type it returns, and whether it batches images by shape. None of them changes what a pixel means.
    "device": (None, "cpu"),
    "return_tensors": (None, "np", "pt"),
    "disable_grouping": (None, True, False),
}
_IGNORED_KEYS = frozenset({"crop_size", "pad_size", "processor_class"})  # read only when the above are on
# What each processor takes for a setting its file leaves out, where that is not ViTImageProcessor's (the dataclass's
# defaults): the hub's BLIP file (Salesforce/blip-image-captioning-base) names no resample, and BlipImageProcessor
# then resizes bicubic. Values as transformers' image processors define them.
_CLIP_NORM: dict[str, Any] = {
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
_BICUBIC: dict[str, Any] = {"resample": int(Image.Resampling.BICUBIC)}
_DEFAULTS_BY_PROCESSOR = {
    "Blip": _BICUBIC | _CLIP_NORM,
    "CLIP": _BICUBIC | _CLIP_NORM,
    "Bit": _BICUBIC | _CLIP_NORM,
    "DeiT": _BICUBIC,
    "Beit": _BICUBIC,
    "Siglip": _BICUBIC,
    "ConvNext": _BICUBIC,
}
_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    f"{name}{kind}{suffix}": defaults
    for name, defaults in _DEFAULTS_BY_PROCESSOR.items()
    for kind in ("ImageProcessor", "FeatureExtractor")
    for suffix in ("", "Pil", "Fast")
}


@dataclass(frozen=True)
class Preprocessing:
    """Resize, rescale and normalise RGB images into ``(B, 3, H, W)`` float32, as ``ViTImageProcessor`` does.

    It travels with the weights (``preprocessor_config.json``), so callers never choose mean, std or size.
    The defaults are ViTImageProcessor's: 224x224, bilinear, x/255, mean and std 0.5 per channel.
    """

    size: tuple[int, int] = (224, 224)  # (height, width)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = int(Image.Resampling.BILINEAR)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    do_resize: bool = True
    # Set: resize to this first, then take the centre ``size`` crop (CLIP, ResNet, DeiT): an int is the shorter
    # edge (the aspect ratio kept), a pair (height, width) exactly. None: resize straight to ``size`` (ViT).
    crop_from: int | tuple[int, int] | None = None
    # How the centre crop's offsets round when the margin is odd: "floor" as transformers' processors do, or
    # "half-even" as torchvision's CenterCrop (Python's round), which timm and torchvision backbones use.
    crop_rounding: str = "floor"

    def __post_init__(self) -> None:
        # Lists (from JSON or callers) become the declared tuples, through object.__setattr__ as it is frozen.
        object.__setattr__(self, "size", _check_size(self.size))
        object.__setattr__(self, "image_mean", _check_channels("image_mean", self.image_mean, positive=False))
        object.__setattr__(self, "image_std", _check_channels("image_std", self.image_std, positive=True))
        object.__setattr__(self, "resample", _check_resample(self.resample))
        for name in ("do_rescale", "do_normalize", "do_resize"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError("Preprocessing", f"{name} must be true or false, got {value!r}")
        object.__setattr__(self, "crop_from", _check_crop_from(self.crop_from, self.size))
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise ConfigError(
                "Preprocessing", f"crop_rounding must be one of {CROP_ROUNDINGS}, got {self.crop_rounding!r}"
            )
        factor = self.rescale_factor
        if not is_number(factor) or not 0 < factor < math.inf:
            raise ConfigError("Preprocessing", f"rescale_factor must be a positive number, got {factor!r}")
        object.__setattr__(self, "rescale_factor", float(factor))

    @classmethod
    def for_size(cls, height: int, width: int) -> Preprocessing:
        """The usual ViT preprocessing (bilinear, x/255, mean = std = 0.5) at another input size."""
        return cls(size=(height, width), image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))

    def __call__(self, images: Image.Image | Sequence[Image.Image]) -> np.ndarray:
        """Return the batch as float32 ``(B, 3, H, W)``; non-RGB images are converted as by load_image."""
        batch = [images] if isinstance(images, Image.Image) else list(images)
        for index, image in enumerate(batch):
            if not isinstance(image, Image.Image):
                kind = type(image).__name__
                raise TypeError(f"image {index} is a {kind}, not a PIL image; open files with load_image")
        if not batch:
            return np.zeros((0, 3, *self.size), dtype=np.float32)
        arrays = [self._one(image) for image in batch]
        shapes = sorted({array.shape[1:] for array in arrays})
        if len(shapes) > 1:
            raise ImageError("<batch>", f"images have different sizes {shapes} and do_resize is off")
        return np.stack(arrays)

    def _one(self, image: Image.Image) -> np.ndarray:
        return self.normalised(self.resized(image))

    def resized(self, image: Image.Image) -> np.ndarray:
        """The first half of :meth:`__call__` for one image: RGB, resized and cropped, as uint8 (H, W, 3).

        The batch job's workers stop here on a GPU (a quarter of the bytes to hand over and copy); the device then
        does the second half (:func:`captionkit.jobs.pipeline.normalise_on_device`, the same operations)."""
        rgb = to_rgb(image)
        if self.do_resize:
            rgb = rgb.resize(self.resized_size(rgb.size), resample=self.resample)
            if self.crop_from is not None:
                rgb = _centre_crop(rgb, self.size, self.crop_rounding)
        return np.asarray(rgb, dtype=np.uint8)

    def normalised(self, pixels: np.ndarray) -> np.ndarray:
        """The second half of :meth:`__call__`: uint8 (H, W, 3) -> rescaled, normalised float32 (3, H, W)."""
        # transformers' order (x scale in float64, to float32, normalise in float32) makes results identical.
        if self.do_rescale:
            values = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            values = pixels.astype(np.float32)
        if self.do_normalize:
            mean, std = np.asarray(self.image_mean, np.float32), np.asarray(self.image_std, np.float32)
            values = (values - mean) / std
        return values.transpose(2, 0, 1)

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """(width, height) that :func:`load_image`'s ``draft`` may reduce a JPEG to before this preprocessing
        resizes it (None: no resize, so the full image is needed). With ``crop_from`` as a shorter edge, both
        sides at least that edge."""
        if not self.do_resize:
            return None
        if self.crop_from is None:
            return self.size[1], self.size[0]
        if isinstance(self.crop_from, tuple):
            return self.crop_from[1], self.crop_from[0]
        return self.crop_from, self.crop_from

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """PIL's (width, height) that an image of (width, height) ``size`` is resized to, before any crop: the model's
        ``size`` without a crop; with one, ``crop_from`` itself, or the shorter edge at ``crop_from`` with the longer
        one truncated as transformers does."""
        if self.crop_from is None:
            return self.size[1], self.size[0]
        if isinstance(self.crop_from, tuple):
            return self.crop_from[1], self.crop_from[0]
        edge, (width, height) = self.crop_from, size
        if width <= height:
            return edge, int(edge * height / width)
        return int(edge * width / height), edge

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``ViTImageProcessor`` (or, with a centre crop, ``CLIPImageProcessor``) writes them in
        ``preprocessor_config.json``."""
        height, width = self.size
        if self.crop_from is not None:
            return self._crop_dict(self.crop_from)
        return {
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "ViTImageProcessor",
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"height": height, "width": width},
        }

    def _crop_dict(self, crop_from: int | tuple[int, int]) -> dict[str, Any]:
        height, width = self.size
        if isinstance(crop_from, tuple):
            resize = {"height": crop_from[0], "width": crop_from[1]}
        else:
            resize = {"shortest_edge": crop_from}
        # Written only when not transformers' own rounding: the file stays a plain CLIPImageProcessor's.
        rounding = {} if self.crop_rounding == "floor" else {"crop_rounding": self.crop_rounding}
        return rounding | {
            "crop_size": {"height": height, "width": width},
            "do_center_crop": True,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "CLIPImageProcessor",
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": resize,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "preprocessing") -> Preprocessing:
        """Read a ``preprocessor_config.json`` mapping; ``source`` names it in errors.

        Takes what ViTImageProcessor takes for a fixed output size: ``size`` as an int, ``[h, w]`` or
        ``{"height", "width"}``; one number for mean or std; legacy ``ViTFeatureExtractor`` files. Missing
        settings get the named processor's defaults (BLIP's and CLIP's: bicubic), else ViTImageProcessor's. What
        captionkit cannot honour (edge-based sizes, centre crop, padding, another processor, unknown keys) is an
        error, never a silently different model input.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(source, f"expected a JSON object, got {type(data).__name__}")
        data = _crop_settings(_explicit_size(_with_processor_defaults(data)), source)
        field_keys = {field.name for field in dataclasses.fields(cls)}
        _check_known_keys(data, source, field_keys)
        fields = {key: value for key, value in data.items() if key in field_keys and value is not None}
        if "size" in fields:
            fields["size"] = _parse_size(fields["size"], source)
        for key in ("image_mean", "image_std"):
            if is_number(fields.get(key)):
                fields[key] = (fields[key],) * 3
        try:
            return cls(**fields)
        except ConfigError as exc:
            raise ConfigError(source, exc.reason) from None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``preprocessor_config.json`` into ``directory`` atomically (creating it if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PREPROCESSOR_CONFIG
        return write_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Preprocessing:
        """Read ``preprocessor_config.json`` from a checkpoint directory (or from the file's own path); a directory
        without one may hold the newer ``processor_config.json``, whose ``image_processor`` is read instead."""
        path = Path(path)
        file = path / PREPROCESSOR_CONFIG if path.is_dir() else path
        if path.is_dir() and not file.exists() and (path / PROCESSOR_CONFIG).is_file():
            file = path / PROCESSOR_CONFIG
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(file, NO_PREPROCESSOR if path.is_dir() else "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, f"cannot read ({describe_error(exc)})") from exc
        data = parse_json(text, file, error=ConfigError)
        if file.name == PROCESSOR_CONFIG:
            if not isinstance(data, dict) or not isinstance(data.get("image_processor"), dict):
                raise ConfigError(file, "has no image_processor settings")
            data = data["image_processor"]
        return cls.from_dict(data, source=str(file))


def _with_processor_defaults(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings with those the file leaves out (or sets to null) as its named processor has them."""
    kind = next((data[key] for key in _TYPE_KEYS if key in data), None)
    defaults = _PROCESSOR_DEFAULTS.get(kind, {}) if isinstance(kind, str) else {}
    return {**data, **{key: value for key, value in defaults.items() if data.get(key) is None}}


def _explicit_size(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings with an int ``size`` spelled out as transformers reads it, by ``default_to_square`` (the file's, or
    its processor's default): ``{"height": N, "width": N}`` or ``{"shortest_edge": N}``. A size given as a mapping
    already says which; ``default_to_square`` then changes nothing and is dropped."""
    rest = {key: value for key, value in data.items() if key != "default_to_square"}
    size = data.get("size")
    if not is_number(size, integer=True):
        return rest
    square = data.get("default_to_square")
    if square is None:
        square = next((data[key] for key in _TYPE_KEYS if key in data), None) not in _SHORTER_EDGE_BY_DEFAULT
    return rest | {"size": {"height": size, "width": size} if square else {"shortest_edge": size}}


def _crop_settings(data: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """A CLIP / BiT / DeiT / BEiT / SigLIP / ConvNeXt processor's settings as captionkit's fields (output ``size``
    and ``crop_from``); a ViT processor's as they are."""
    kind = next((data[key] for key in _TYPE_KEYS if key in data), None)
    if kind not in _CROP_PROCESSOR_TYPES and kind not in _CONVNEXT_PROCESSOR_TYPES:
        return data
    size = _resize_size(data.get("size"), source)
    rest = {key: value for key, value in data.items() if key not in (*_TYPE_KEYS, "size", "crop_size", "crop_pct")}
    if kind in _CONVNEXT_PROCESSOR_TYPES:
        if not isinstance(size, int):
            raise ConfigError(source, f"size {data.get('size')!r} is not supported: expected a shortest edge")
        if size >= _CONVNEXT_CROP_BELOW:
            return rest | {"size": (size, size)}
        crop_pct = data.get("crop_pct") or 224 / 256
        return rest | {"size": (size, size), "crop_from": int(size / crop_pct)}
    crops = rest.pop("do_center_crop", None)
    if crops if crops is not None else _CROP_PROCESSOR_TYPES[kind]:
        return rest | {"size": _parse_size(data.get("crop_size", size), source), "crop_from": size}
    if isinstance(size, int):
        raise ConfigError(source, f"{kind} without do_center_crop is not supported (images of different shapes)")
    return rest | {"size": size}


def _resize_size(size: Any, source: str) -> int | tuple[int, int]:
    """A processor's ``size``: an int (the shorter edge) or (height, width)."""
    if isinstance(size, Mapping) and set(size) == {"shortest_edge"}:
        size = size["shortest_edge"]
    if isinstance(size, Mapping) and set(size) == {"height", "width"}:
        return _check_size((size["height"], size["width"]))
    if is_number(size, integer=True) and size >= 1:
        return int(size)
    raise ConfigError(source, f"size {size!r} is not supported: expected a shortest edge or a height and width")


def _check_crop_from(crop_from: Any, size: tuple[int, int]) -> int | tuple[int, int] | None:
    if crop_from is None:
        return None
    if is_number(crop_from, integer=True) and crop_from >= max(size):
        return int(crop_from)
    if isinstance(crop_from, Sequence) and not isinstance(crop_from, str) and len(crop_from) == 2:
        pair = _check_size(crop_from)
        if pair[0] >= size[0] and pair[1] >= size[1]:
            return pair
    raise ConfigError("Preprocessing", f"crop_from must be an int or a pair no smaller than {size}, got {crop_from!r}")


def centre_crop_offsets(image_size: tuple[int, int], size: tuple[int, int], rounding: str) -> tuple[int, int]:
    """(left, top) of the centre ``size`` (height, width) of a (width, height) ``image_size`` image (at least that
    large), offsets rounded down or half to even (``rounding``)."""
    margins = (image_size[0] - size[1], image_size[1] - size[0])
    left, top = (m // 2 for m in margins) if rounding == "floor" else (round(m / 2) for m in margins)
    return left, top


def _centre_crop(image: Image.Image, size: tuple[int, int], rounding: str) -> Image.Image:
    """The centre ``size`` (height, width) of ``image`` (see :func:`centre_crop_offsets`)."""
    height, width = size
    left, top = centre_crop_offsets(image.size, size, rounding)
    return image.crop((left, top, left + width, top + height))


def _check_known_keys(data: Mapping[str, Any], source: str, field_keys: set[str]) -> None:
    for key in _TYPE_KEYS:
        if key in data and data[key] not in _VIT_PROCESSOR_TYPES:
            raise ConfigError(source, f"{key} {data[key]!r} is not a ViT image processor")
    unknown = sorted(set(data) - field_keys - _INERT_SETTINGS.keys() - _IGNORED_KEYS - set(_TYPE_KEYS))
    if unknown:
        raise ConfigError(source, f"unknown setting(s) {', '.join(map(repr, unknown))}")
    for key, harmless in _INERT_SETTINGS.items():
        if key in data and data[key] not in harmless:
            raise ConfigError(source, f"{key}={data[key]!r} is not supported")


def _parse_size(value: Any, source: str) -> Any:
    """Turn ViTImageProcessor's spellings of a fixed size into (height, width); refuse aspect-keeping ones."""
    if is_number(value, integer=True):
        return (value, value)
    if isinstance(value, Mapping):
        given = {key: side for key, side in value.items() if side is not None}
        if set(given) == {"height", "width"}:
            return (given["height"], given["width"])
        raise ConfigError(
            source,
            f"size {given!r} is not supported: captionkit needs {{'height': H, 'width': W}}, so that every "
            "image gives the same (3, H, W) array (shortest_edge or longest_edge keeps the aspect ratio)",
        )
    return value  # [height, width]; __post_init__ checks it


def _check_size(size: Any) -> tuple[int, int]:
    is_pair = isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
    if is_pair and all(is_number(side, integer=True) and side >= 1 for side in size):
        return (int(size[0]), int(size[1]))
    raise ConfigError("Preprocessing", f"size must be two positive integers (height, width), got {size!r}")


def _check_channels(name: str, values: Any, *, positive: bool) -> tuple[float, float, float]:
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 3:
        numbers = [float(v) for v in values if is_number(v) and math.isfinite(v)]
        if len(numbers) == 3 and (not positive or min(numbers) > 0):
            return (numbers[0], numbers[1], numbers[2])
    need = "positive numbers" if positive else "finite numbers"
    raise ConfigError("Preprocessing", f"{name} must be 3 {need} (one per RGB channel), got {values!r}")


def _check_resample(resample: Any) -> int:
    if is_number(resample, integer=True) and int(resample) in _RESAMPLE_NAMES:
        return int(resample)
    names = ", ".join(f"{value} ({name})" for value, name in sorted(_RESAMPLE_NAMES.items()))
    raise ConfigError("Preprocessing", f"resample must be one of {names}; got {resample!r}")
