"""Safe image loading and model preprocessing: the one place in captionkit that opens image bytes.

Images come from folders, datasets and HTTP uploads, so every path goes through :func:`load_image`, which
treats the bytes as hostile: the size is capped before anything is read; the format is sniffed from magic
bytes against an allowlist; the pixel count is checked from the header before decoding (a 50 KB PNG can
claim 400 megapixels); and the image is fully decoded here, so a truncated file fails now, with a one-line
:class:`ImageError`, not in the middle of a batch. What comes out is always an upright 8-bit RGB image.

:class:`Preprocessing` turns such images into the ``(B, 3, H, W)`` float32 array a ViT-style encoder takes.
It reads and writes Hugging Face's ``preprocessor_config.json`` and gives the same numbers as transformers'
``ViTImageProcessor``, so checkpoints move between the two. numpy only: no torch here, so light paths stay
light.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageFile, ImageOps

from captionkit.errors import ConfigError, ImageError, InputError
from captionkit.files import write_atomic
from captionkit.jsontext import parse_json
from captionkit.shards import read_member

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_LIMITS",
    "PREPROCESSOR_CONFIG",
    "ImageLimits",
    "ImageSource",
    "Preprocessing",
    "load_image",
]

MiB = 1024 * 1024

ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image

# Formats a user may hand us, named as errors show them. Everything else Pillow reads (ICO, PSD, EPS, FITS,
# ...) is refused: each extra decoder is extra attack surface, and none of them holds photos to caption.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF")
_PILLOW_FORMAT = {"JPEG": "JPEG", "PNG": "PNG", "WebP": "WEBP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF"}

# (magic prefix, kind). Allowed kinds first; the others only let the refusal say what the file was.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x7fELF", "ELF executable"),
)
# BMP's magic is just "BM", which text can start with; the DIB header size after it tells them apart.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_SNIFF_BYTES = 4096

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_PREMULTIPLIED_MODES = frozenset({"RGBa", "La"})


def _is_number(value: object, *, integer: bool = False) -> bool:
    """True for int (and float unless ``integer``), but not bool, which Python counts as an int."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


@dataclass(frozen=True)
class ImageLimits:
    """What :func:`load_image` accepts; anything beyond is refused before it can cost memory or time."""

    # Larger than any camera JPEG; an upload beyond this is refused without being read.
    max_bytes: int = 50 * MiB
    # 40 MP covers 12-24 MP photos with room to spare; decoded, it already takes 120 MB as RGB. Raise it for
    # 48-200 MP sensor modes. Pillow's own hard limit (2 x PIL.Image.MAX_IMAGE_PIXELS, about 179 MP by
    # default) still applies above it: captionkit never loosens that process-wide setting for everyone.
    max_pixels: int = 40_000_000
    # Panoramas run to about 10:1; past 20:1 (a 10000x1 strip) a square model input keeps nothing to caption.
    max_aspect_ratio: float = 20.0
    # 1 refuses only empty images: a tiny image is useless but harmless.
    min_side: int = 1

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "min_side"):
            value = getattr(self, name)
            if not _is_number(value, integer=True) or value < 1:
                raise ConfigError("ImageLimits", f"{name} must be a positive integer, got {value!r}")
        ratio = self.max_aspect_ratio
        if not _is_number(ratio) or not 1.0 <= ratio < math.inf:
            raise ConfigError("ImageLimits", f"max_aspect_ratio must be a finite number >= 1, got {ratio!r}")


DEFAULT_LIMITS = ImageLimits()


def load_image(
    source: ImageSource,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    name: str | None = None,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Open, check and fully decode one image; return it upright, 8-bit RGB, with alpha over white.

    ``source`` is a path, the bytes of an upload, a binary stream, or an already-open PIL image (which skips
    the byte-level checks and gets every other rule). ``name`` is what errors call the image: by default the
    path, ``<bytes>``, ``<stream>`` or the PIL image's filename. Every problem raises :class:`ImageError`.

    ``draft`` (width, height): the size the caller will resize to. A JPEG at least twice as large on both sides is
    then decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode, the largest reduction that keeps both sides at
    least the longer of ``draft``'s sides): several times less decoding work. Measured on the 300 shared
    COCO/Flickr8k photos preprocessed to 224 x 224: 56 are decoded reduced (COCO's 640 x 480 at 320 x 240), and
    their pixels differ from a full decode by 1.8/255 on average (the worst photo 5.3/255); the others are
    untouched. Limits are checked on the full size.
    """
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "<image>"
        with _STRICT_TRUNCATION:
            _check_geometry(source.size, limits, label)
            return _decode(source, label, source.format or "image")
    label, data = _read_source(source, limits, name)
    kind = _sniff(data[:_SNIFF_BYTES])
    if kind not in _PILLOW_FORMAT:
        raise _fail(label, f"unsupported image format ({kind}); allowed: {', '.join(ALLOWED_FORMATS)}")
    with _STRICT_TRUNCATION, _open(data, kind, label) as image:
        _check_geometry(image.size, limits, label)
        if draft is not None and kind == "JPEG":
            # Both sides at least the longer target side: an EXIF rotation may swap them afterwards.
            image.draft(image.mode, (max(draft), max(draft)))
        return _decode(image, label, kind)


# --- reading the bytes ---------------------------------------------------------------------------------


def _read_source(source: ImageSource, limits: ImageLimits, name: str | None) -> tuple[str, bytes]:
    """Return ``(label, data)`` for a path, bytes or stream, reading at most ``max_bytes + 1`` bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        view = memoryview(source)
        _check_byte_count(view.nbytes, limits, label)
        return label, bytes(view)
    if isinstance(source, str | os.PathLike):
        label = name or os.fspath(source)
        return label, _read_file(Path(source), limits, label)
    if hasattr(source, "read"):
        label = name or str(getattr(source, "name", "") or "<stream>")
        try:
            data = source.read(limits.max_bytes + 1)
        except OSError as exc:
            raise _fail(label, f"cannot read stream ({_describe(exc)})") from exc
        if not isinstance(data, bytes):
            raise TypeError(f"{label}: the stream gave {type(data).__name__}; open it in binary mode")
        _check_byte_count(len(data), limits, label, read_capped=True)
        return label, data
    kind = type(source).__name__
    raise TypeError(f"cannot load an image from a {kind}; give a path, bytes, a binary stream or a PIL image")


def _read_file(path: Path, limits: ImageLimits, label: str) -> bytes:
    """Read a regular file whose size, from ``stat``, is within the cap: a huge file is never read at all."""
    try:
        info = path.stat()
    except NotADirectoryError as exc:  # a file on the way: the path may name a member of a tar or Parquet shard
        return _read_member(path, limits, label, exc)
    except OSError as exc:
        raise _fail(label, _os_error_reason(exc)) from exc
    if stat.S_ISDIR(info.st_mode):
        raise _fail(label, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise _fail(label, "not a regular file")  # a FIFO or device: its size says nothing, it may never end
    _check_byte_count(info.st_size, limits, label)
    try:
        with path.open("rb") as handle:
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise _fail(label, _os_error_reason(exc)) from exc
    _check_byte_count(len(data), limits, label, read_capped=True)  # it may have grown since stat
    return data


def _read_member(path: Path, limits: ImageLimits, label: str, not_a_directory: OSError) -> bytes:
    try:
        data = read_member(path, limits.max_bytes)
    except InputError as exc:
        raise _fail(label, exc.reason) from exc
    if data is None:
        raise _fail(label, _os_error_reason(not_a_directory)) from not_a_directory
    _check_byte_count(len(data), limits, label, read_capped=True)
    return data


def _os_error_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    return f"cannot read file ({exc.strerror or _describe(exc)})"


def _check_byte_count(count: int, limits: ImageLimits, label: str, *, read_capped: bool = False) -> None:
    """Refuse empty and oversized data.

    With ``read_capped``, ``count`` comes from a read that stopped one byte past the limit: the true size is
    unknown, and the message does not pretend to know it.
    """
    if count == 0:
        raise _fail(label, "empty file")
    if count > limits.max_bytes:
        size = "" if read_capped else f" {_human_bytes(count)},"
        raise _fail(label, f"file is{size} over the {_human_bytes(limits.max_bytes)} limit")


def _human_bytes(count: int) -> str:
    return f"{count} bytes" if count < MiB else f"{count / MiB:.1f} MiB"


# --- what kind of file is it ---------------------------------------------------------------------------


def _sniff(head: bytes) -> str:
    """Name a file's format from its first bytes: an allowed format, a refused kind, or 'unrecognised'.

    The answer comes from the content, never from the file name, which whoever uploads it chooses.
    """
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] == b"RIFF":
        form = head[8:12]
        return {b"WEBP": "WebP", b"WAVE": "WAV audio", b"AVI ": "AVI video"}.get(form, "RIFF container")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC"
        return "AVIF" if brand in (b"avif", b"avis") else "MP4/QuickTime video"
    return _sniff_text(head) or "unrecognised"


def _sniff_text(head: bytes) -> str | None:
    """Name markup and plain text: SVG is the usual 'image' that is not one."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    xml_like = start.startswith((b"<?xml", b"<!--", b"<!doctype svg"))
    if start.startswith(b"<svg") or (xml_like and b"<svg" in start):
        return "SVG"
    if start.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if start.startswith(b"<?xml"):
        return "XML"
    text = head.decode("utf-8", errors="replace")
    # One replacement character is allowed: the sniff window may cut a multi-byte character in two.
    printable = all(c.isprintable() or c in "\t\n\r\f\v" for c in text)
    if printable and "\x00" not in text and text.count("\ufffd") <= 1:
        return "text"
    return None


# --- decoding ------------------------------------------------------------------------------------------


def _open(data: bytes, kind: str, label: str) -> ImageFile.ImageFile:
    """Read the header only (Pillow is lazy), trying nothing but the sniffed format's decoder."""
    try:
        return Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[kind]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's global limit fired before ours could look (the warning is raised under -W error).
        raise _fail(label, f"image too large, possible decompression bomb ({_describe(exc)})") from exc
    except Image.UnidentifiedImageError as exc:
        raise _fail(label, f"corrupt {kind} header (Pillow cannot identify the image data)") from exc
    except Exception as exc:  # plugins raise SyntaxError, struct.error, ValueError, ...: all mean bad bytes
        raise _fail(label, f"corrupt {kind} header ({_describe(exc)})") from exc


def _check_geometry(size: tuple[int, int], limits: ImageLimits, label: str) -> None:
    """Refuse by the dimensions in the header, before a single pixel is decoded."""
    width, height = size
    if min(width, height) < limits.min_side:
        raise _fail(label, f"image is {width}x{height}; each side must be at least {limits.min_side} pixels")
    pixels = width * height
    if pixels > limits.max_pixels:
        reason = f"image is {width}x{height} = {pixels:,} pixels, over the {limits.max_pixels:,}-pixel limit"
        raise _fail(label, reason + " (possible decompression bomb)")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        limit = limits.max_aspect_ratio
        raise _fail(label, f"aspect ratio {ratio:.1f}:1 ({width}x{height}) is over the {limit:g}:1 limit")


def _decode(image: Image.Image, label: str, kind: str) -> Image.Image:
    """Decode every pixel now, turn the image upright and make it RGB; a new image, never ``image`` itself."""
    try:
        image.load()  # the first frame only, for animated GIF, WebP and PNG
        upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise _fail(label, f"image too large, possible decompression bomb ({_describe(exc)})") from exc
    except Exception as exc:  # whatever a decoder raises on bad bytes: OSError, ValueError, struct.error, ...
        raise _fail(label, f"corrupt or truncated {kind} data ({_describe(exc)})") from exc
    try:
        return _to_rgb(upright)
    except Exception as exc:
        raise _fail(label, f"cannot convert a {upright.mode} image to RGB ({_describe(exc)})") from exc


class _StrictTruncation:
    """Keep ``ImageFile.LOAD_TRUNCATED_IMAGES`` off while captionkit decodes; restore a True it found.

    Other code in the process may turn the flag on for itself, and Pillow then pads a truncated file with grey
    and returns it as whole. The flag is process-wide, so a count of loads in progress, under a lock, decides:
    the first load turns it off, the last restores it. Meanwhile other code's loads get stricter, not looser.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._restore = False

    def __enter__(self) -> None:
        with self._lock:
            if self._active == 0:
                self._restore = ImageFile.LOAD_TRUNCATED_IMAGES
            self._active += 1
            ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._restore:
                ImageFile.LOAD_TRUNCATED_IMAGES = True


_STRICT_TRUNCATION = _StrictTruncation()


# --- mode conversion -----------------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by value, compositing transparency over white.

    ``Image.convert("RGB")`` alone is wrong for three families: it clips 16-bit and float samples at 255
    instead of scaling them, and it drops alpha, showing whatever colour hides under transparent pixels.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_sixteen_bit_to_8(np.asarray(image)))
    if mode == "F":
        return _grey_to_rgb(_float_to_8(np.asarray(image, dtype=np.float64)))
    if mode in _PREMULTIPLIED_MODES:
        return _premultiplied_over_white(np.asarray(image))
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # L, 1, P, RGBX, CMYK (Pillow has already undone Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV.
    return image.convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:  # PNG tRNS, GIF transparent index
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _sixteen_bit_to_8(samples: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with rounding (65535 -> 255, 32768 -> 128).

    Mode I is taken to hold 16-bit samples, as Pillow gave 16-bit PNGs before I;16; beyond that range, clip.
    """
    wide = np.clip(samples.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_8(samples: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] are scaled by 255; other ranges are taken as 0..255 and clipped. NaN becomes black."""
    finite = samples[np.isfinite(samples)]
    unit_range = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
    scaled = np.nan_to_num(samples * (255.0 if unit_range else 1.0), nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _premultiplied_over_white(samples: np.ndarray) -> Image.Image:
    """Colour premultiplied by alpha (c' = c * a) composites over white as simply c' + (255 - a)."""
    colour, alpha = samples[..., :-1].astype(np.int32), samples[..., -1:].astype(np.int32)
    over_white = np.clip(colour + (255 - alpha), 0, 255).astype(np.uint8)
    if over_white.shape[-1] == 1:
        return _grey_to_rgb(over_white[..., 0])
    return Image.fromarray(np.ascontiguousarray(over_white))


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")


# --- errors --------------------------------------------------------------------------------------------


def _fail(label: str, reason: str) -> ImageError:
    return ImageError(_one_line(label), _one_line(reason))


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _one_line(text: str) -> str:
    """Escape newlines and other control characters: an error stays one line even for a file named 'a\\nb'."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


# --- preprocessing -------------------------------------------------------------------------------------

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers >= 4.47 saves a processor's image settings here, under "image_processor", instead.
PROCESSOR_CONFIG = "processor_config.json"

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
        if not _is_number(factor) or not 0 < factor < math.inf:
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
        rgb = _to_rgb(image)
        if self.do_resize and self.crop_from is not None:
            resized = rgb.resize(self._resized_size(rgb), resample=self.resample)
            rgb = _centre_crop(resized, self.size, self.crop_rounding)
        elif self.do_resize:
            height, width = self.size
            rgb = rgb.resize((width, height), resample=self.resample)
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

    def _resized_size(self, image: Image.Image) -> tuple[int, int]:
        """PIL's (width, height) before the crop: ``crop_from`` itself, or the shorter edge at ``crop_from`` with
        the longer one truncated as transformers does."""
        if isinstance(self.crop_from, tuple):
            return self.crop_from[1], self.crop_from[0]
        assert self.crop_from is not None
        edge, (width, height) = self.crop_from, image.size
        if width <= height:
            return edge, int(edge * height / width)
        return int(edge * width / height), edge

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``ViTImageProcessor`` (or, with a centre crop, ``CLIPImageProcessor``) writes them in
        ``preprocessor_config.json``."""
        height, width = self.size
        if self.crop_from is not None:
            return self._crop_dict()
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

    def _crop_dict(self) -> dict[str, Any]:
        height, width = self.size
        if isinstance(self.crop_from, tuple):
            resize = {"height": self.crop_from[0], "width": self.crop_from[1]}
        else:
            resize = {"shortest_edge": self.crop_from}
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
        settings get ViTImageProcessor's defaults. What captionkit cannot honour (edge-based sizes, centre
        crop, padding, another processor, unknown keys) is an error, never a silently different model input.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(source, f"expected a JSON object, got {type(data).__name__}")
        data = _crop_settings(_explicit_size(data), source)
        field_keys = {field.name for field in dataclasses.fields(cls)}
        _check_known_keys(data, source, field_keys)
        fields = {key: value for key, value in data.items() if key in field_keys and value is not None}
        if "size" in fields:
            fields["size"] = _parse_size(fields["size"], source)
        for key in ("image_mean", "image_std"):
            if _is_number(fields.get(key)):
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
            raise ConfigError(file, "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, f"cannot read ({_describe(exc)})") from exc
        data = parse_json(text, file, error=ConfigError)
        if file.name == PROCESSOR_CONFIG:
            if not isinstance(data, dict) or not isinstance(data.get("image_processor"), dict):
                raise ConfigError(file, "has no image_processor settings")
            data = data["image_processor"]
        return cls.from_dict(data, source=str(file))


def _explicit_size(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings with an int ``size`` spelled out as transformers reads it, by ``default_to_square`` (the file's, or
    its processor's default): ``{"height": N, "width": N}`` or ``{"shortest_edge": N}``. A size given as a mapping
    already says which; ``default_to_square`` then changes nothing and is dropped."""
    rest = {key: value for key, value in data.items() if key != "default_to_square"}
    size = data.get("size")
    if not _is_number(size, integer=True):
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
    if _is_number(size, integer=True) and size >= 1:
        return int(size)
    raise ConfigError(source, f"size {size!r} is not supported: expected a shortest edge or a height and width")


def _check_crop_from(crop_from: Any, size: tuple[int, int]) -> int | tuple[int, int] | None:
    if crop_from is None:
        return None
    if _is_number(crop_from, integer=True) and crop_from >= max(size):
        return int(crop_from)
    if isinstance(crop_from, Sequence) and not isinstance(crop_from, str) and len(crop_from) == 2:
        pair = _check_size(crop_from)
        if pair[0] >= size[0] and pair[1] >= size[1]:
            return pair
    raise ConfigError("Preprocessing", f"crop_from must be an int or a pair no smaller than {size}, got {crop_from!r}")


def _centre_crop(image: Image.Image, size: tuple[int, int], rounding: str) -> Image.Image:
    """The centre ``size`` (height, width) of ``image`` (at least that large), offsets rounded down or half to even
    (``rounding``)."""
    height, width = size
    margins = (image.height - height, image.width - width)
    top, left = (m // 2 for m in margins) if rounding == "floor" else (round(m / 2) for m in margins)
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
    if _is_number(value, integer=True):
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
    if is_pair and all(_is_number(side, integer=True) and side >= 1 for side in size):
        return (int(size[0]), int(size[1]))
    raise ConfigError("Preprocessing", f"size must be two positive integers (height, width), got {size!r}")


def _check_channels(name: str, values: Any, *, positive: bool) -> tuple[float, float, float]:
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 3:
        numbers = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
        if len(numbers) == 3 and (not positive or min(numbers) > 0):
            return (numbers[0], numbers[1], numbers[2])
    need = "positive numbers" if positive else "finite numbers"
    raise ConfigError("Preprocessing", f"{name} must be 3 {need} (one per RGB channel), got {values!r}")


def _check_resample(resample: Any) -> int:
    if _is_number(resample, integer=True) and int(resample) in _RESAMPLE_NAMES:
        return int(resample)
    names = ", ".join(f"{value} ({name})" for value, name in sorted(_RESAMPLE_NAMES.items()))
    raise ConfigError("Preprocessing", f"resample must be one of {names}; got {resample!r}")
