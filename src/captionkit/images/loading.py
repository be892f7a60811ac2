"""Safe image loading: the one place in captionkit that opens image bytes.

Images come from folders, datasets and HTTP uploads, so every path goes through :func:`load_image`, which
treats the bytes as hostile: the size is capped before anything is read; the format is sniffed from magic
bytes against an allowlist; the pixel count is checked from the header before decoding (a 50 KB PNG can
claim 400 megapixels); and the image is fully decoded here, so a truncated file fails now, with a one-line
:class:`ImageError`, not in the middle of a batch. What comes out is always an upright 8-bit RGB image.
"""

from __future__ import annotations

import io
import math
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageFile, ImageOps

from captionkit.errors import ConfigError, ImageError, InputError
from captionkit.files import is_url
from captionkit.shards import read_member

MiB = 1024 * 1024

ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray

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
#: Why a URL is refused, wherever one is given (an image, a command-line input, a line of an image list).
URL_REASON = "a URL: captionkit opens local files only (download the image first)"
_WARNINGS_LOCK = threading.Lock()
# Pillow's warnings about a damaged EXIF block: the photo decodes all the same (see _read_exif).
DAMAGED_EXIF = r"(Possibly )?[Cc]orrupt EXIF"
# As a module's __warningregistry__: a "default" warning shows once.
_WARNED_ABOUT: dict[str | tuple[str, type[Warning], int], int] = {}

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_PREMULTIPLIED_MODES = frozenset({"RGBa", "La"})


def is_number(value: object, *, integer: bool = False) -> bool:
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
            if not is_number(value, integer=True) or value < 1:
                raise ConfigError("ImageLimits", f"{name} must be a positive integer, got {value!r}")
        ratio = self.max_aspect_ratio
        if not is_number(ratio) or not 1.0 <= ratio < math.inf:
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

    ``source`` is a path, the bytes of an upload, a binary stream, or an already-open PIL image or numpy array
    (which skip the byte-level checks and get every other rule; arrays: see :func:`array_to_image`). ``name`` is
    what errors call the image: by default the path, ``<bytes>``, ``<stream>``, ``<array>`` or the PIL image's
    filename. Every problem raises :class:`ImageError`.

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
    if isinstance(source, np.ndarray):
        label = name or "<array>"
        _check_geometry(_array_size(source, label), limits, label)
        return to_rgb(array_to_image(source, label))
    label, data = _read_source(source, limits, name)
    kind = _sniff(data[:_SNIFF_BYTES])
    if kind not in _PILLOW_FORMAT:
        raise _fail(label, f"unsupported image format ({kind}); allowed: {', '.join(ALLOWED_FORMATS)}")
    with _STRICT_TRUNCATION, _open(data, kind, label, limits) as image:
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
        path = os.fspath(source)
        label = name or path or "''"
        _check_path_text(path, label)
        return label, _read_file(Path(source), limits, label)
    if hasattr(source, "read"):
        label = name or str(getattr(source, "name", "") or "<stream>")
        try:
            data = source.read(limits.max_bytes + 1)
        except OSError as exc:
            raise _fail(label, f"cannot read stream ({describe_error(exc)})") from exc
        if not isinstance(data, bytes):
            raise TypeError(f"{label}: the stream gave {type(data).__name__}; open it in binary mode")
        _check_byte_count(len(data), limits, label, read_capped=True)
        return label, data
    kind = type(source).__name__
    raise TypeError(
        f"cannot load an image from a {kind}; give a path, bytes, a binary stream, a numpy array or a PIL image"
    )


def _check_path_text(path: str | bytes, label: str) -> None:
    """Refuse the path strings that would otherwise get a misleading reason or none: "" (which ``Path`` reads as
    the current directory), a URL ("no such file", when the file was never looked for where it is) and one holding
    a NUL character (the OS takes none: Python's bare "embedded null byte")."""
    if not path:
        raise _fail(label, "empty path: name an image file")
    if isinstance(path, str) and is_url(path):
        raise _fail(label, URL_REASON)
    if ("\x00" if isinstance(path, str) else b"\x00") in path:
        raise _fail(label, "a path with a NUL character, which no file name holds")


def _read_file(path: Path, limits: ImageLimits, label: str) -> bytes:
    """Read a regular file whose size, from ``stat``, is within the cap: a huge file is never read at all."""
    try:
        info = path.stat()
    except NotADirectoryError as exc:  # a file on the way: the path may name a member of a tar or Parquet shard
        return _read_member(path, limits, label, exc)
    except OSError as exc:
        raise _fail(label, _os_error_reason(exc)) from exc
    if stat.S_ISDIR(info.st_mode):
        raise _fail(label, _directory_reason(path))
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


def _directory_reason(path: Path) -> str:
    """Why a directory is no image: a folder walk gives one it cannot list as an input, so that its images are
    accounted for (see :func:`captionkit.files.folder_files`)."""
    try:
        with os.scandir(path):
            return "is a directory, not an image file"
    except OSError as exc:
        return f"a folder that cannot be listed ({exc.strerror or describe_error(exc)}): its images are not captioned"


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
    return f"cannot read file ({exc.strerror or describe_error(exc)})"


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


def _open(data: bytes, kind: str, label: str, limits: ImageLimits) -> ImageFile.ImageFile:
    """Read the header only (Pillow is lazy), trying nothing but the sniffed format's decoder, and check the
    dimensions it gives.

    Pillow warns on stderr about a header over its own pixel limit (about 89 MP), which is over captionkit's default
    limit too: its warnings are held until the image passes :func:`_check_geometry`, so an image refused in one line
    is not also a two-line warning. One that passes (``max_pixels`` raised) gets them, under the caller's filters.
    """
    # catch_warnings swaps process-wide state: two threads in it at once could leave each other's filters behind.
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always", Image.DecompressionBombWarning)  # held, even where the caller says error
        warnings.filterwarnings("ignore", message=DAMAGED_EXIF, category=UserWarning)  # JPEG reads it for its DPI
        image = _open_header(data, kind, label)
    try:
        _check_geometry(image.size, limits, label)
        for warning in held:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno, registry=_WARNED_ABOUT
            )
    except Image.DecompressionBombWarning as exc:  # the caller made Pillow's warning an error (-W error)
        image.close()
        raise _fail(label, f"image too large, possible decompression bomb ({describe_error(exc)})") from exc
    except BaseException:
        image.close()
        raise
    return image


def _open_header(data: bytes, kind: str, label: str) -> ImageFile.ImageFile:
    try:
        return Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[kind]])
    except Image.DecompressionBombError as exc:  # Pillow's hard limit, twice its warning's
        raise _fail(label, f"image too large, possible decompression bomb ({describe_error(exc)})") from exc
    except Image.UnidentifiedImageError as exc:
        raise _fail(label, f"corrupt {kind} header (Pillow cannot identify the image data)") from exc
    except Exception as exc:  # plugins raise SyntaxError, struct.error, ValueError, ...: all mean bad bytes
        raise _fail(label, f"corrupt {kind} header ({describe_error(exc)})") from exc


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
        _read_exif(image)
        upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise _fail(label, f"image too large, possible decompression bomb ({describe_error(exc)})") from exc
    except Exception as exc:  # whatever a decoder raises on bad bytes: OSError, ValueError, struct.error, ...
        raise _fail(label, f"corrupt or truncated {kind} data ({describe_error(exc)})") from exc
    try:
        return to_rgb(upright)
    except Exception as exc:
        raise _fail(label, f"cannot convert a {upright.mode} image to RGB ({describe_error(exc)})") from exc


def _read_exif(image: Image.Image) -> None:
    """Parse ``image``'s EXIF block (Pillow keeps it for :func:`ImageOps.exif_transpose`) without Pillow's warnings
    about a damaged one: the photo is decoded all the same, upright as far as the block says, and a two-line warning
    per photo would bury a batch job's output."""
    # catch_warnings swaps process-wide state, so under the lock that the header's warnings are held with.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DAMAGED_EXIF, category=UserWarning)
        image.getexif()


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


def to_rgb(image: Image.Image) -> Image.Image:
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


def array_to_image(array: np.ndarray, label: str = "<array>") -> Image.Image:
    """A numpy image as a PIL image, by value: (height, width) grey, or (height, width, channels) with 1, 3 (RGB)
    or 4 (RGBA) channels. uint8 and bool as they are; uint16 scaled from 0..65535; floats in [0, 1] scaled by 255
    (other floats taken as 0..255, clipped); other integers if they lie in 0..255. Anything else is an
    :class:`ImageError` naming ``label``: channels-first (3, H, W) arrays too, since a (3, H, 4) one is ambiguous."""
    _array_size(array, label)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(_array_samples(array, label)))


def _array_size(array: np.ndarray, label: str) -> tuple[int, int]:
    """(width, height) of an image array, or an ``ImageError`` for a shape that is not one image."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
        return int(array.shape[1]), int(array.shape[0])
    reason = f"an array of shape {tuple(array.shape)} is not an image: give (height, width) or (height, width, 3 or 4)"
    raise _fail(label, reason + _array_hint(array.shape))


def _array_hint(shape: tuple[int, ...]) -> str:
    """How to pass an array of ``shape`` that is no image as it stands: a batch, or channels first (a tensor's
    ``.numpy()``, torchvision's layout), whose refusal named no way out."""
    if len(shape) == 4:
        return " (one array per image)"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return " (channels first: array.transpose(1, 2, 0))"
    return ""


def _array_samples(array: np.ndarray, label: str) -> np.ndarray:
    """``array``'s samples as uint8 (Pillow reads a 3- or 4-channel array only in uint8)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _sixteen_bit_to_8(array)
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_8(array.astype(np.float64))
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise _fail(label, f"{array.dtype} samples must lie in 0..255, got {array.min()}..{array.max()}")
        return array.astype(np.uint8)
    raise _fail(label, f"an array of {array.dtype} is not an image: give integer, bool or float samples")


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


def describe_error(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _one_line(text: str) -> str:
    """Escape newlines and other control characters: an error stays one line even for a file named 'a\\nb'."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
