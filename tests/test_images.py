"""Tests for captionkit.images. Every file is generated in tmp_path (Pillow writes the good ones; bad bytes
are made by hand); preprocessing is compared with transformers' ViTImageProcessor on real COCO photos."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from _data import SHARED_DATA, real_photos
from _hub_parts import FAST_FILES, fast_processor_file
from captionkit.errors import ConfigError, ImageError
from captionkit.images import (
    ALLOWED_FORMATS,
    PREPROCESSOR_CONFIG,
    ImageLimits,
    Preprocessing,
    load_image,
)

COCO_DIR = SHARED_DATA / "coco" / "val2017"
ALLOWED_LIST = "allowed: JPEG, PNG, WebP, GIF, BMP, TIFF"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# --- helpers -----------------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, image_format: str, **params: object) -> Path:
    image.save(path, image_format, **params)
    return path


def _encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, so tests can say exactly what the header claims and what the data holds."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_from_rows(rows: list[bytes], width: int, bit_depth: int, colour_type: int) -> bytes:
    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 on every scanline
    return _png(width, len(rows), bit_depth, colour_type, zlib.compress(raw))


def _bomb_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of all-black pixels: tens of KB on disk, ``width * height`` pixels decoded."""
    compressor = zlib.compressobj(9)
    remaining = height * (1 + math.ceil(width / 8))
    block = bytes(1 << 20)
    parts = []
    while remaining:
        step = min(remaining, len(block))
        parts.append(compressor.compress(block[:step]))
        remaining -= step
    parts.append(compressor.flush())
    return _png(width, height, 1, 0, b"".join(parts))


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _quadrants() -> np.ndarray:
    """A 48x32 upright test picture with a distinct colour in each quadrant (top-left red, clockwise)."""
    picture = np.zeros((32, 48, 3), dtype=np.uint8)
    picture[:16, :24], picture[:16, 24:] = RED, GREEN
    picture[16:, 24:], picture[16:, :24] = BLUE, WHITE
    return picture


def _assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 0) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


def _load_error(source: object, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as caught:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    return caught.value


# --- formats -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "suffix", "params", "tolerance"),
    [
        ("JPEG", "jpg", {"quality": 95}, 4),
        ("PNG", "png", {}, 0),
        ("WEBP", "webp", {"lossless": True}, 0),
        ("GIF", "gif", {}, 0),
        ("BMP", "bmp", {}, 0),
        ("TIFF", "tif", {}, 0),
    ],
)
def test_each_allowed_format_loads(
    tmp_path: Path, image_format: str, suffix: str, params: dict[str, object], tolerance: int
) -> None:
    path = _save(Image.new("RGB", (40, 30), (200, 40, 90)), tmp_path / f"a.{suffix}", image_format, **params)
    image = load_image(path)
    assert (image.mode, image.size) == ("RGB", (40, 30))
    _assert_close(image.getpixel((20, 15)), (200, 40, 90), tolerance)


def test_allowed_formats_are_the_documented_six() -> None:
    assert ALLOWED_FORMATS == ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b'<?xml version="1.0"?>\n<!-- drawn by hand -->\n<svg width="1" height="1"></svg>', "SVG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (b"<!DOCTYPE html><html><body><img src=x></body></html>", "HTML"),
        (b"a dog running on a beach\nthe dog is brown\n", "text"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC"),
        (b"PK\x03\x04" + bytes(60), "ZIP archive"),
        (bytes(range(256)) * 4, "unrecognised"),
    ],
    ids=["svg", "svg-xml", "pdf", "html", "text", "heic", "zip", "binary"],
)
def test_non_image_bytes_are_refused_by_kind(tmp_path: Path, data: bytes, kind: str) -> None:
    path = tmp_path / "upload.jpg"  # the extension lies; only the content counts
    path.write_bytes(data)
    error = _load_error(path)
    assert str(error) == f"{path}: unsupported image format ({kind}); {ALLOWED_LIST}"


def test_real_ico_file_is_refused_though_pillow_reads_it(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (16, 16), RED), tmp_path / "icon.png", "ICO")
    assert Image.open(path).format == "ICO"
    assert "unsupported image format (ICO)" in str(_load_error(path))


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    assert str(_load_error(path)) == f"{path}: empty file"


def test_zero_bytes_are_refused() -> None:
    assert str(_load_error(b"")) == "<bytes>: empty file"


# --- size limits -------------------------------------------------------------------------------------------


def test_byte_cap_is_checked_from_stat_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.truncate(60 * 1024 * 1024)  # sparse: costs no disk, and must never be read

    def refuse_to_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", refuse_to_open)
    assert str(_load_error(path)) == f"{path}: file is 60.0 MiB, over the 50.0 MiB limit"


def test_byte_cap_applies_to_bytes() -> None:
    data = _encode(_noise(32, 32), "PNG")
    error = _load_error(data, limits=ImageLimits(max_bytes=1000))
    assert str(error) == f"<bytes>: file is {len(data)} bytes, over the 1000 bytes limit"


def test_pixel_bomb_png_is_refused_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(20_000, 20_000))  # 400 MP, whose decoding would take 400 MB
    assert path.stat().st_size < 200_000
    error = _load_error(path)
    assert str(error).startswith(f"{path}: image too large, possible decompression bomb")


def test_pixel_limit_is_ours_below_pillows(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(8_000, 8_000))  # 64 MP: under Pillow's limit, over captionkit's 40 MP
    assert str(_load_error(path)) == (
        f"{path}: image is 8000x8000 = 64,000,000 pixels, over the 40,000,000-pixel limit (possible decompression bomb)"
    )


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = _save(_noise(100, 100), tmp_path / "small.png", "PNG")
    error = _load_error(path, limits=ImageLimits(max_pixels=5000))
    assert "image is 100x100 = 10,000 pixels, over the 5,000-pixel limit" in str(error)
    assert load_image(path, limits=ImageLimits(max_pixels=10_000)).size == (100, 100)


def test_pillow_bomb_warning_as_error_becomes_image_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(10_000, 10_000))  # 100 MP: over Pillow's warning threshold (about 89 MP)
    limits = ImageLimits(max_pixels=150_000_000)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        error = _load_error(path, limits=limits)
    assert "possible decompression bomb" in str(error)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's process-wide limit is left alone


def test_an_image_over_pillows_warning_limit_is_refused_without_pillows_warning(tmp_path: Path) -> None:
    # Over 89 MP Pillow warns in two lines on stderr; captionkit's own limit refuses the image in one.
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(10_000, 10_000))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        error = _load_error(path)
    assert str(error) == f"{path}: image is 10000x10000 = 100,000,000 pixels, over the 40,000,000-pixel limit " + (
        "(possible decompression bomb)"
    )
    assert [str(warning.message) for warning in seen] == []
    with warnings.catch_warnings(record=True) as seen:  # a limit raised past Pillow's: its warning still comes
        warnings.simplefilter("always")
        assert load_image(path, limits=ImageLimits(max_pixels=150_000_000)).size == (10_000, 10_000)
    assert [warning.category for warning in seen] == [Image.DecompressionBombWarning]


def test_absurd_aspect_ratio_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (2100, 100), RED), tmp_path / "strip.png", "PNG")
    assert str(_load_error(path)) == f"{path}: aspect ratio 21.0:1 (2100x100) is over the 20:1 limit"
    assert load_image(path, limits=ImageLimits(max_aspect_ratio=25)).size == (2100, 100)


def test_min_side_is_enforced(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4, 40), RED), tmp_path / "thin.png", "PNG")
    error = _load_error(path, limits=ImageLimits(min_side=8))
    assert str(error) == f"{path}: image is 4x40; each side must be at least 8 pixels"


@pytest.mark.parametrize(
    "changes",
    [
        {"max_bytes": 0},
        {"max_bytes": 1.5},
        {"max_pixels": True},
        {"max_pixels": -1},
        {"min_side": 0},
        {"max_aspect_ratio": 0.5},
        {"max_aspect_ratio": math.nan},
        {"max_aspect_ratio": math.inf},
    ],
)
def test_image_limits_validate_their_fields(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=f"^ImageLimits: {next(iter(changes))} must be"):
        ImageLimits(**changes)  # type: ignore[arg-type]


# --- orientation -------------------------------------------------------------------------------------------

# How each EXIF orientation stores an upright picture, written from the EXIF definition of where the stored
# 0th row and 0th column lie on the displayed image (not from Pillow's transposes, which are under test).
_STORED_AS = {
    1: lambda up: up,  # row 0 top, column 0 left
    2: lambda up: up[:, ::-1],  # row 0 top, column 0 right
    3: lambda up: up[::-1, ::-1],  # row 0 bottom, column 0 right
    4: lambda up: up[::-1, :],  # row 0 bottom, column 0 left
    5: lambda up: up.transpose(1, 0, 2),  # row 0 left, column 0 top
    6: lambda up: np.rot90(up, 1),  # row 0 right, column 0 top
    7: lambda up: up[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
    8: lambda up: np.rot90(up, -1),  # row 0 left, column 0 bottom
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    upright = _quadrants()
    stored = Image.fromarray(np.ascontiguousarray(_STORED_AS[orientation](upright)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(stored, tmp_path / "photo.jpg", "JPEG", exif=exif, quality=95, subsampling=0)
    image = load_image(path)
    assert image.size == (48, 32)
    for (x, y), colour in {(12, 8): RED, (36, 8): GREEN, (36, 24): BLUE, (12, 24): WHITE}.items():
        _assert_close(image.getpixel((x, y)), colour, tolerance=12)


def test_a_damaged_exif_block_is_read_without_pillows_warning(tmp_path: Path) -> None:
    # A TIFF header whose first directory claims 50 entries and holds less than one: Pillow warns "Corrupt EXIF data".
    damaged = (
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + struct.pack("<H", 50) + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"
    )
    path = _save(Image.new("RGB", (40, 20), RED), tmp_path / "photo.jpg", "JPEG", exif=damaged)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        Image.open(path).getexif()  # Pillow alone warns
        assert [str(w.message) for w in shown if "EXIF" in str(w.message)], "the block is not damaged"
        shown.clear()
        image = load_image(path)
    assert image.size == (40, 20)
    assert [str(w.message) for w in shown] == []


# --- modes -------------------------------------------------------------------------------------------------


def test_sixteen_bit_grey_png_is_scaled_by_value(tmp_path: Path) -> None:
    samples = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(samples), tmp_path / "grey16.png", "PNG")
    assert Image.open(path).mode == "I;16"
    image = load_image(path)
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128,) * 3, (255,) * 3]


@pytest.mark.parametrize(("dtype", "mode"), [(">u2", "I;16B"), ("<i4", "I")])
def test_other_sixteen_bit_modes_are_scaled_by_value(dtype: str, mode: str) -> None:
    source = Image.fromarray(np.array([[0, 32768, 65535]], dtype=dtype))
    assert source.mode == mode
    image = load_image(source)
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128,) * 3, (255,) * 3]


def test_sixteen_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    # Pillow 13 opens 16-bit RGB(A) PNGs as 8-bit RGB(A), keeping each sample's high byte (32768 -> 128).
    row = struct.pack(">9H", 65535, 0, 0, 0, 32768, 0, 0, 0, 65535)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_from_rows([row], width=3, bit_depth=16, colour_type=2))
    image = load_image(path)
    assert [image.getpixel((x, 0)) for x in range(3)] == [RED, (0, 128, 0), BLUE]


def test_sixteen_bit_rgba_png_composites_over_white(tmp_path: Path) -> None:
    row = struct.pack(">8H", 0, 0, 0, 0, 0, 0, 65535, 65535)  # transparent black, opaque blue
    path = tmp_path / "rgba16.png"
    path.write_bytes(_png_from_rows([row], width=2, bit_depth=16, colour_type=6))
    image = load_image(path)
    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    source = Image.new("RGBA", (3, 1))
    source.putdata([(255, 0, 0, 0), (0, 0, 0, 128), (0, 0, 255, 255)])
    image = load_image(_save(source, tmp_path / "alpha.png", "PNG"))
    assert [image.getpixel((x, 0)) for x in range(3)] == [WHITE, (127, 127, 127), BLUE]


def test_la_png_composites_over_white(tmp_path: Path) -> None:
    source = Image.new("LA", (2, 1))
    source.putdata([(0, 0), (0, 255)])
    image = load_image(_save(source, tmp_path / "la.png", "PNG"))
    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, BLACK]


@pytest.mark.parametrize("image_format", ["PNG", "GIF"])
def test_palette_with_transparency_composites_over_white(tmp_path: Path, image_format: str) -> None:
    source = Image.new("P", (2, 1))
    source.putpalette([*BLACK, *BLUE] + [0] * 762)
    source.putdata([0, 1])
    path = _save(source, tmp_path / f"palette.{image_format.lower()}", image_format, transparency=0)
    assert Image.open(path).mode == "P"
    image = load_image(path)
    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_pa_image_composites_over_white() -> None:
    source = Image.new("PA", (2, 1))
    source.putpalette([*BLACK, *BLUE])
    source.putdata([(0, 0), (1, 255)])
    image = load_image(source)
    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_palette_with_alpha_in_the_palette_composites_over_white() -> None:
    source = Image.new("P", (2, 1))
    source.putpalette([0, 0, 0, 0, 0, 0, 255, 255], "RGBA")  # entry 0 transparent black, 1 opaque blue
    source.putdata([0, 1])
    image = load_image(source)
    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


@pytest.mark.parametrize(
    ("mode", "samples", "expected"),
    [
        ("RGBa", bytes([128, 0, 0, 128, 0, 0, 0, 0]), [(255, 127, 127), WHITE]),
        ("La", bytes([64, 128, 0, 0]), [(191,) * 3, WHITE]),
    ],
)
def test_premultiplied_alpha_composites_over_white(mode: str, samples: bytes, expected: list[tuple]) -> None:
    image = load_image(Image.frombytes(mode, (2, 1), samples))
    assert [image.getpixel((x, 0)) for x in range(2)] == expected


def test_cmyk_jpeg_gives_the_right_colour(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert b"Adobe" in path.read_bytes()[:64]  # Pillow writes Adobe's inverted CMYK
    _assert_close(load_image(path).getpixel((8, 8)), RED, tolerance=8)


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 77, (77, 77, 77)), ("1", 1, WHITE)])
def test_grey_and_bilevel_images(tmp_path: Path, mode: str, value: int, expected: tuple[int, ...]) -> None:
    image = load_image(_save(Image.new(mode, (8, 8), value), tmp_path / "grey.png", "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((4, 4)) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0, 0.25], [0, 128, 255, 64]), ([0.0, 100.4, 300.0, math.nan], [0, 100, 255, 0])],
    ids=["unit-range", "byte-range"],
)
def test_float_images_map_sensibly(values: list[float], expected: list[int]) -> None:
    image = load_image(Image.fromarray(np.array([values], dtype=np.float32)))
    assert [image.getpixel((x, 0))[0] for x in range(4)] == expected


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    assert load_image(path).getpixel((4, 4)) == RED


# --- broken files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_truncated_file_is_refused(tmp_path: Path, image_format: str) -> None:
    data = _encode(_noise(64, 64), image_format)
    path = tmp_path / f"cut.{image_format.lower()}"
    path.write_bytes(data[: len(data) * 6 // 10])
    message = str(_load_error(path))
    assert message.startswith(f"{path}: corrupt or truncated {image_format} data (OSError: image file is truncated")


def test_truncated_file_is_refused_even_if_pillow_is_told_to_allow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _encode(_noise(64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 6 // 10])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    Image.open(path).load()  # what another library asked for: Pillow pads the missing part with grey
    assert "corrupt or truncated JPEG data" in str(_load_error(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the other library's setting is back


def test_concurrent_loads_restore_the_truncation_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(_noise(64, 64), "JPEG")
    truncated, whole = data[: len(data) // 2], data
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    def load(index: int) -> str:
        try:
            return load_image(truncated if index % 2 else whole).mode
        except ImageError:
            return "refused"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(load, range(40)))
    assert outcomes == ["RGB", "refused"] * 20
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the broken TIFF tags it skips
@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_mutated_files_raise_nothing_but_image_error(image_format: str) -> None:
    """Cut and bit-flipped files: whatever the decoder thinks of them, only ImageError may come out."""
    data = _encode(_noise(24, 16), image_format)
    rng = np.random.default_rng(7)
    for _ in range(40):
        mutated = bytearray(data[: int(rng.integers(1, len(data)))] if rng.random() < 0.3 else data)
        for position in rng.integers(0, len(mutated), int(rng.integers(1, 8))):
            mutated[position] = int(rng.integers(0, 256))
        try:
            assert load_image(bytes(mutated)).mode == "RGB"
        except ImageError as error:
            assert "\n" not in str(error)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(range(200)),
        b"\xff\xd8\xff\xe0" + bytes(200),
        _png(16, 16, 8, 2, b"not zlib data at all"),
    ],
    ids=["png-garbage-header", "jpeg-garbage", "png-bad-idat"],
)
def test_corrupt_data_behind_valid_magic_is_refused(data: bytes) -> None:
    error = _load_error(data, name="upload.bin")
    assert str(error).startswith("upload.bin: corrupt ")


# --- paths and error messages ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    assert str(_load_error(path)) == f"{path}: no such file"


def test_directory_is_refused(tmp_path: Path) -> None:
    assert str(_load_error(tmp_path)) == f"{tmp_path}: is a directory, not an image file"


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "locked.png", "PNG")

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")  # chmod cannot lock out root, who may run the tests

    monkeypatch.setattr(Path, "open", deny)
    assert str(_load_error(path)) == f"{path}: permission denied"


def test_error_is_one_line_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "holiday\nphoto.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 and then\nnothing useful")
    message = str(_load_error(path))
    assert "\n" not in message
    assert message.startswith(str(path).replace("\n", "\\n") + ": corrupt JPEG")


# --- sources -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_load_from_bytes(wrap: type) -> None:
    data = _encode(Image.new("RGB", (5, 3), GREEN), "PNG")
    image = load_image(wrap(data))
    assert (image.size, image.getpixel((2, 1))) == ((5, 3), GREEN)
    assert str(_load_error(wrap(b"GIF89a broken"), name="cat.gif")).startswith("cat.gif: corrupt GIF header")


def test_load_from_binary_stream(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (5, 3), BLUE), tmp_path / "s.png", "PNG")
    with path.open("rb") as handle:
        assert load_image(handle).getpixel((0, 0)) == BLUE
    assert str(_load_error(io.BytesIO(b""))) == "<stream>: empty file"
    error = _load_error(io.BytesIO(bytes(2000)), limits=ImageLimits(max_bytes=1000))
    assert str(error) == "<stream>: file is over the 1000 bytes limit"  # read stops at 1001 bytes


def test_load_from_pil_image_returns_a_new_rgb_image() -> None:
    source = Image.new("RGBA", (6, 4), (0, 0, 0, 0))
    image = load_image(source)
    assert image is not source and source.mode == "RGBA"
    assert (image.mode, image.getpixel((0, 0))) == ("RGB", WHITE)
    rgb = Image.new("RGB", (6, 4), RED)
    assert load_image(rgb) is not rgb


def test_pil_image_gets_the_geometry_limits() -> None:
    error = _load_error(Image.new("RGB", (100, 1)), name="strip")
    assert str(error) == "strip: aspect ratio 100.0:1 (100x1) is over the 20:1 limit"


def test_a_url_is_refused_as_a_url_not_as_a_missing_file() -> None:
    """A URL was "no such file", as if it had been looked for; captionkit opens local files only."""
    reason = "a URL: captionkit opens local files only (download the image first)"
    assert str(_load_error("https://example.com/cat.jpg")) == f"https://example.com/cat.jpg: {reason}"
    assert str(_load_error("s3://bucket/cat.jpg")) == f"s3://bucket/cat.jpg: {reason}"
    # A drive letter is no URL scheme: a Windows path written with forward slashes is looked for, as any path.
    assert str(_load_error("C://photos/cat.jpg")) == "C://photos/cat.jpg: no such file"


def test_an_empty_path_is_refused_as_empty_not_as_a_directory() -> None:
    """Path("") is the current directory: "": is a directory, not an image file" said nothing useful."""
    assert str(_load_error("")) == "'': empty path: name an image file"


def test_a_path_with_a_nul_character_is_one_line_not_a_bare_value_error() -> None:
    """The OS takes no NUL in a file name: Python raised a bare "ValueError: embedded null byte"."""
    reason = "a path with a NUL character, which no file name holds"
    assert str(_load_error("photos/a\x00b.jpg")) == f"photos/a\\x00b.jpg: {reason}"


ARRAY_PIXELS = [
    (np.full((2, 3, 3), (10, 200, 30), np.uint8), (10, 200, 30)),
    (np.full((2, 3), 77, np.uint8), (77, 77, 77)),
    (np.full((2, 3, 1), 77, np.uint8), (77, 77, 77)),
    (np.full((2, 3, 4), (10, 20, 30, 0), np.uint8), WHITE),  # alpha over white, as for a PIL image
    (np.full((2, 3, 3), 0.5, np.float32), (128, 128, 128)),  # floats in [0, 1] scale by 255
    (np.full((2, 3), 200.0), (200, 200, 200)),  # floats beyond it are 0..255
    (np.full((2, 3, 3), 65535, np.uint16), WHITE),  # 16-bit by value
    (np.ones((2, 3), bool), WHITE),
    (np.full((2, 3, 3), 9, np.int64), (9, 9, 9)),  # np.zeros(..., dtype=int) and the like
]


@pytest.mark.parametrize(("array", "pixel"), ARRAY_PIXELS, ids=[f"{a.dtype}{a.shape}" for a, _ in ARRAY_PIXELS])
def test_numpy_arrays_load_by_value(array: np.ndarray, pixel: tuple[int, ...]) -> None:
    image = load_image(array)
    assert (image.mode, image.size, image.getpixel((2, 1))) == ("RGB", (3, 2), pixel)


NOT_AN_IMAGE = "is not an image: give (height, width) or (height, width, 3 or 4)"
TRANSPOSE = "array.transpose(1, 2, 0)"  # the way out for a tensor's .numpy(), which had none
ARRAY_ERRORS = [
    (np.zeros((3, 8, 9), np.uint8), f"an array of shape (3, 8, 9) {NOT_AN_IMAGE} (channels first: {TRANSPOSE})"),
    (np.zeros((5, 8, 9), np.uint8), f"an array of shape (5, 8, 9) {NOT_AN_IMAGE}"),
    (np.zeros((2, 8, 8, 3), np.uint8), f"an array of shape (2, 8, 8, 3) {NOT_AN_IMAGE} (one array per image)"),
    (np.full((2, 2), 300), "int64 samples must lie in 0..255, got 300..300"),
    (np.zeros((2, 2), complex), "an array of complex128 is not an image: give integer, bool or float samples"),
    (np.zeros((100, 1, 3), np.uint8), "aspect ratio 100.0:1 (1x100) is over the 20:1 limit"),
]


@pytest.mark.parametrize(("array", "reason"), ARRAY_ERRORS, ids=[f"{a.dtype}{a.shape}" for a, _ in ARRAY_ERRORS])
def test_arrays_that_are_not_one_image_are_refused_in_one_line(array: np.ndarray, reason: str) -> None:
    assert str(_load_error(array)) == f"<array>: {reason}"
    assert str(_load_error(array, name="images[3]")) == f"images[3]: {reason}"


def test_images_module_does_not_import_torch() -> None:
    code = "import sys, captionkit.images; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- preprocessing -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_processor() -> type:
    """transformers' PIL-backed ViTImageProcessor: the default backend needs torchvision, not a dependency."""
    from transformers import ViTImageProcessorPil  # a core dependency: never skipped

    return ViTImageProcessorPil


def _reference(vit_processor: type, preprocessing: Preprocessing, images: list[Image.Image]) -> np.ndarray:
    height, width = preprocessing.size
    processor = vit_processor(
        do_resize=preprocessing.do_resize,
        size={"height": height, "width": width},
        resample=preprocessing.resample,
        do_rescale=preprocessing.do_rescale,
        rescale_factor=preprocessing.rescale_factor,
        do_normalize=preprocessing.do_normalize,
        image_mean=list(preprocessing.image_mean),
        image_std=list(preprocessing.image_std),
    )
    return np.asarray(processor(images, return_tensors="np").pixel_values)


def _coco_photos(count: int) -> list[Image.Image]:
    paths = sorted(COCO_DIR.glob("*.jpg"))[:count]
    assert len(paths) == count, f"COCO photos not found in {COCO_DIR} (set CAPTIONKIT_DATA)"
    return [load_image(path) for path in paths]


@pytest.mark.parametrize(
    "preprocessing",
    [Preprocessing(), Preprocessing(size=(160, 192), resample=int(Image.Resampling.BICUBIC))],
    ids=["vit-default", "non-square-bicubic"],
)
def test_matches_vit_image_processor_on_coco_photos(vit_processor: type, preprocessing: Preprocessing) -> None:
    photos = _coco_photos(3)
    ours = preprocessing(photos)
    assert ours.shape == (3, 3, *preprocessing.size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference(vit_processor, preprocessing, photos), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing.for_size(32, 48),
        Preprocessing(size=(40, 40), resample=0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        Preprocessing(size=(24, 64), resample=1, do_normalize=False),
        Preprocessing(size=(50, 30), resample=4, do_rescale=False, image_mean=(120, 110, 100), image_std=(60,) * 3),
        Preprocessing(size=(100, 100), resample=5, rescale_factor=1 / 127.5),
        Preprocessing(do_resize=False),
    ],
    ids=["for-size", "nearest-imagenet", "lanczos-raw", "box-no-rescale", "hamming-upscale", "no-resize"],
)
def test_matches_vit_image_processor_on_generated_images(vit_processor: type, preprocessing: Preprocessing) -> None:
    images = [_noise(64, 48, seed=1), _noise(64, 48, seed=2)]
    ours = preprocessing(images)
    np.testing.assert_allclose(ours, _reference(vit_processor, preprocessing, images), rtol=0, atol=1e-5)


def test_preprocessing_converts_non_rgb_images_like_load_image() -> None:
    images = [Image.new("RGBA", (8, 8), (0, 0, 0, 0)), Image.new("L", (8, 8), 0)]
    pixels = Preprocessing.for_size(4, 4)(images)
    assert pixels.shape == (2, 3, 4, 4)
    assert np.all(pixels[0] == 1.0) and np.all(pixels[1] == -1.0)  # white and black after mean = std = 0.5


def test_preprocessing_refuses_mixed_sizes_without_resize() -> None:
    with pytest.raises(ImageError, match="different sizes"):
        Preprocessing(do_resize=False)([_noise(8, 8), _noise(8, 9)])


def test_for_size_is_the_usual_vit_setup() -> None:
    preprocessing = Preprocessing.for_size(384, 320)
    assert preprocessing == Preprocessing(size=(384, 320))
    assert (preprocessing.image_mean, preprocessing.image_std, preprocessing.resample) == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        int(Image.Resampling.BILINEAR),
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    preprocessing = Preprocessing(size=(96, 128), image_mean=(0.4, 0.5, 0.6), resample=3, do_normalize=False)
    path = preprocessing.save(tmp_path / "checkpoint")
    assert path == tmp_path / "checkpoint" / PREPROCESSOR_CONFIG
    assert json.loads(path.read_text())["size"] == {"height": 96, "width": 128}
    assert Preprocessing.load(tmp_path / "checkpoint") == preprocessing
    assert Preprocessing.load(path) == preprocessing


def test_saved_config_is_read_by_transformers(tmp_path: Path, vit_processor: type) -> None:
    preprocessing = Preprocessing(size=(40, 56), resample=3, image_mean=(0.1, 0.2, 0.3), image_std=(0.3,) * 3)
    preprocessing.save(tmp_path)
    processor = vit_processor.from_pretrained(tmp_path)
    images = [_noise(30, 20)]
    np.testing.assert_allclose(
        processor(images, return_tensors="np").pixel_values, preprocessing(images), rtol=0, atol=1e-5
    )


def test_reads_config_saved_by_transformers(tmp_path: Path, vit_processor: type) -> None:
    processor = vit_processor(size={"height": 64, "width": 32}, resample=3, image_mean=[0.2, 0.2, 0.2])
    processor.save_pretrained(tmp_path)
    expected = Preprocessing(size=(64, 32), resample=3, image_mean=(0.2, 0.2, 0.2))
    assert Preprocessing.load(tmp_path) == expected


def test_reads_legacy_feature_extractor_config(tmp_path: Path) -> None:
    legacy = {  # the shape of nlpconnect/vit-gpt2-image-captioning's file: int size, no rescale keys
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 224,
    }
    (tmp_path / PREPROCESSOR_CONFIG).write_text(json.dumps(legacy))
    assert Preprocessing.load(tmp_path) == Preprocessing()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"size": {"shortest_edge": 224}}, "size {'shortest_edge': 224} is not supported"),
        ({"do_center_crop": True, "crop_size": 200}, "do_center_crop=True is not supported"),
        ({"image_processor_type": "DetrImageProcessor"}, "image_processor_type 'DetrImageProcessor' is not"),
        ({"do_resise": False}, "unknown setting(s) 'do_resise'"),
        ({"size": [224]}, "size must be two positive integers (height, width), got [224]"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std must be 3 positive numbers"),
        ({"resample": 99}, "resample must be one of 0 (NEAREST)"),
        ({"do_normalize": "yes"}, "do_normalize must be true or false, got 'yes'"),
        # An int size with default_to_square false is a shorter edge: images of different shapes.
        ({"size": 224, "default_to_square": False}, "size {'shortest_edge': 224} is not supported"),
        ({"device": "cuda"}, "device='cuda' is not supported"),
    ],
    ids=["shortest-edge", "crop", "other-processor", "unknown", "size", "std", "resample", "bool", "edge", "device"],
)
def test_unsupported_or_invalid_config_is_a_clear_error(
    tmp_path: Path, changes: dict[str, object], reason: str
) -> None:
    path = tmp_path / PREPROCESSOR_CONFIG
    path.write_text(json.dumps({**Preprocessing().to_dict(), **changes}))
    with pytest.raises(ConfigError) as caught:
        Preprocessing.load(tmp_path)
    assert str(caught.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(caught.value)


def test_missing_or_malformed_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        Preprocessing.load(tmp_path)
    (tmp_path / PREPROCESSOR_CONFIG).write_text('{"size": 224,')
    with pytest.raises(ConfigError, match="invalid JSON: Expecting"):
        Preprocessing.load(tmp_path)


# The preprocessor_config.json files of openai/clip-vit-base-patch32, microsoft/resnet-50 and facebook/dinov2-small
# (field sets as on the hub), and a ConvNeXt one at 384 px (a plain resize).
CLIP_FILE = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
RESNET_FILE = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "resample": 3,
    "size": 224,
}
DINOV2_FILE = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "BitImageProcessor",
    "image_std": IMAGENET_STD,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}


@pytest.mark.parametrize(
    ("settings", "size"),
    [
        (CLIP_FILE, (224, 224)),
        (RESNET_FILE, (224, 224)),
        (DINOV2_FILE, (224, 224)),
        (RESNET_FILE | {"size": {"shortest_edge": 384}}, (384, 384)),
    ],
    ids=["clip", "resnet", "dinov2", "convnext-384"],
)
def test_shortest_edge_and_crop_processors_match_transformers(
    tmp_path: Path, settings: dict[str, object], size: tuple[int, int]
) -> None:
    assert_matches_transformers(tmp_path, settings, size)


def assert_matches_transformers(tmp_path: Path, settings: dict[str, object], size: tuple[int, int]) -> None:
    """The preprocessing of a hub ``preprocessor_config.json`` is transformers' (PIL backend), to 1e-6."""
    from transformers import AutoImageProcessor

    (tmp_path / PREPROCESSOR_CONFIG).write_text(json.dumps(settings))
    ours = Preprocessing.load(tmp_path)
    # Real photos of both orientations and odd sizes (the crop offsets round down) and a generated tall image.
    photos = [*_coco_photos(3), _noise(301, 227, seed=3)]
    expected = np.asarray(
        AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)(photos, return_tensors="np").pixel_values
    )
    assert expected.shape == (4, 3, *size)
    np.testing.assert_allclose(ours(photos), expected, rtol=0, atol=1e-6)
    # Saved and read back (as a CLIPImageProcessor file), it is the same preprocessing, for transformers too.
    saved = ours.save(tmp_path / "saved").parent
    assert Preprocessing.load(saved) == ours
    again = np.asarray(
        AutoImageProcessor.from_pretrained(saved, use_fast=False)(photos, return_tensors="np").pixel_values
    )
    np.testing.assert_array_equal(again, expected)


@pytest.mark.parametrize(
    ("settings", "size"),
    [
        # facebook/deit-base-distilled-patch16-224: a fixed 256 x 256 resize, then the centre 224 crop.
        (
            {
                "crop_size": {"height": 224, "width": 224},
                "do_center_crop": True,
                "image_mean": IMAGENET_MEAN,
                "image_processor_type": "DeiTImageProcessor",
                "image_std": IMAGENET_STD,
                "resample": 3,
                "size": {"height": 256, "width": 256},
            },
            (224, 224),
        ),
        # microsoft/beit-base-patch16-224-pt22k: a fixed resize, no crop, no segmentation labels.
        (
            {
                "do_center_crop": False,
                "do_reduce_labels": False,
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "BeitImageProcessor",
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "size": {"height": 224, "width": 224},
            },
            (224, 224),
        ),
        # google/siglip-base-patch16-224: a fixed resize, no crop.
        (
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "SiglipImageProcessor",
                "image_std": [0.5, 0.5, 0.5],
                "resample": 3,
                "size": {"height": 224, "width": 224},
            },
            (224, 224),
        ),
        # The transformers 4 feature extractors' spelling: an int size, which DeiT and BEiT read as N x N (their
        # default_to_square), CLIP, BiT and SigLIP as the shorter edge.
        (
            {
                "crop_size": 224,
                "do_center_crop": True,
                "feature_extractor_type": "DeiTFeatureExtractor",
                "image_mean": IMAGENET_MEAN,
                "image_std": IMAGENET_STD,
                "resample": 3,
                "size": 256,
            },
            (224, 224),
        ),
        (
            {
                "do_center_crop": False,
                "feature_extractor_type": "BeitFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "size": 224,
            },
            (224, 224),
        ),
        # An int size with default_to_square set in the file: it decides, whatever the processor's own default.
        (CLIP_FILE | {"size": 256, "default_to_square": True}, (224, 224)),
    ],
    ids=["deit", "beit", "siglip", "deit-int-size", "beit-int-size", "clip-square"],
)
def test_fixed_size_processors_with_and_without_a_crop_match_transformers(
    tmp_path: Path, settings: dict[str, object], size: tuple[int, int]
) -> None:
    assert_matches_transformers(tmp_path, settings, size)


@pytest.mark.parametrize("name", sorted(FAST_FILES))
def test_files_of_fast_processors_match_transformers(tmp_path: Path, name: str) -> None:
    """A file naming a fast processor (``...ImageProcessorFast``) loads without torchvision, and gives the pixels of
    transformers' PIL backend for it (what ``use_fast=False`` picks) to 1e-6."""
    settings, size = fast_processor_file(name)
    assert_matches_transformers(tmp_path, settings, size)


def test_draft_decodes_large_jpegs_reduced_and_close_to_a_full_decode() -> None:
    from _data import SHARED_DATA

    preprocessing = Preprocessing.for_size(224, 224)
    coco = real_photos(6)
    flickr = sorted((SHARED_DATA / "flickr8k" / "Images").glob("*.jpg"))[:3]
    assert len(coco) == 6 and len(flickr) == 3, f"real photos missing under {SHARED_DATA}"
    for path in coco + flickr:
        full, reduced = load_image(path), load_image(path, draft=(224, 224))
        if min(full.size) >= 448:  # halving keeps both sides >= 224: decoded at half size
            assert reduced.size == ((full.size[0] + 1) // 2, (full.size[1] + 1) // 2)
        else:
            assert reduced.size == full.size and np.array_equal(np.asarray(reduced), np.asarray(full))
        difference = np.abs(preprocessing([full])[0] - preprocessing([reduced])[0]).mean() * 127.5
        assert difference < 6.0, f"{path.name}: {difference:.2f}/255 from a full decode"
    assert any(min(load_image(path).size) >= 448 for path in coco)
    png = io.BytesIO()
    Image.new("RGB", (900, 900), (10, 20, 30)).save(png, format="PNG")
    assert load_image(png.getvalue(), draft=(224, 224)).size == (900, 900)  # only JPEGs have a draft mode
