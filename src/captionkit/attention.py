"""Attention maps: where a captioner looked while writing each token, as arrays and as heatmap overlays.

Families with spatial attention (``CaptionModel.has_attention``: vit-gpt2's cross-attention, cnn-lstm-attention's
soft attention) return, for a caption fed back teacher-forced, one (h, w) map per generated token that sums to 1
over the image grid (see ``CaptionModel.attention_maps``). :func:`caption_maps` runs that for decoded captions;
:func:`overlay` and :func:`write_overlays` draw the maps over the image with Pillow alone: the grid is upsampled
bilinearly to the image size, coloured with an inferno-like colour map scaled to the token's strongest weight, and
blended over the photo more opaquely where the weight is high. Where the preprocessing took a centre crop (CLIP,
DeiT, DINOv2 and ResNet encoders), the grid covers only that crop: it is drawn there, and the margins the model never
saw are drawn as weight 0.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.errors import InputError
from captionkit.files import write_atomic
from captionkit.images import Preprocessing
from captionkit.images.preprocessing import centre_crop_offsets
from captionkit.models.base import CaptionModel
from captionkit.precision import model_dtype
from captionkit.text import CaptionTokenizer

__all__ = ["caption_maps", "check_attention", "overlay", "overlay_name", "seen_box", "token_texts", "write_overlays"]

# Colour map anchors from low to high weight (dark purple through red and orange to pale yellow), interpolated.
COLOUR_ANCHORS = np.array(
    [[0, 0, 4], [66, 10, 104], [147, 38, 103], [221, 81, 58], [252, 165, 10], [252, 255, 164]], dtype=np.float32
)
# Overlay opacity where the weight is lowest / highest: the photo stays visible where the model did not look.
MIN_ALPHA, MAX_ALPHA = 0.15, 0.75
# Overlays of larger images are drawn at this longest side (a 12-megapixel photo need not give 12 MB PNGs).
MAX_OVERLAY_SIDE = 512
WORD_CHARACTERS = re.compile(r"[^\w-]+")
# (left, top, right, bottom) as fractions of an image's width and height: the whole image.
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


def check_attention(model: CaptionModel, source: str = "attention") -> None:
    """Raise an ``InputError`` naming ``source`` unless ``model`` returns attention maps."""
    if not model.has_attention:
        from captionkit.models.registry import families_with_attention_maps

        family = getattr(model, "family", type(model).__name__)
        *others, last = families_with_attention_maps()
        raise InputError(
            source,
            f"the {family} family has no spatial attention to show (maps come from {', '.join(others)} and {last})",
        )


def caption_maps(
    model: CaptionModel,
    pixels: torch.Tensor,
    rows: Sequence[int],
    sequences: Sequence[Sequence[int]],
    start_token_id: int | None = None,
    prompt_ids: Sequence[int] = (),
) -> list[np.ndarray]:
    """One float32 (len(sequence), h, w) array per caption: token k's map is the attention while predicting it.

    ``sequences[i]`` are a caption's generated ids (no start token, no final eos) of the image ``pixels[rows[i]]``;
    the decoder starts from ``start_token_id`` (None: the model's bos) and reads ``prompt_ids``, as in decoding.
    """
    check_attention(model)
    if not sequences:
        return []
    start = model.bos_token_id if start_token_id is None else start_token_id
    fed = 1 + len(prompt_ids)  # tokens before the caption's first
    longest = max(len(ids) for ids in sequences)
    # Input: start token, prompt, then the caption but its last token, which predicts nothing: the positions decoding
    # used, so a caption as long as the model's positions allow fits too. Right padding leaves every earlier
    # position's attention unchanged.
    input_ids = torch.full((len(sequences), fed + max(longest - 1, 0)), model.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        fed_ids = [start, *prompt_ids, *ids[:-1]]
        input_ids[row, : len(fed_ids)] = torch.tensor(fed_ids, dtype=torch.long)
        attention_mask[row, : len(fed_ids)] = 1
    device = pixels.device
    index = torch.tensor(list(rows), dtype=torch.long, device=device)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            chosen = pixels.index_select(0, index).to(model_dtype(model))
            maps = model.attention_maps(chosen, input_ids.to(device), attention_mask.to(device))
    finally:
        model.train(training)
    assert maps is not None  # check_attention passed
    arrays = maps.float().cpu().numpy()
    return [arrays[row, fed - 1 : fed - 1 + len(ids)] for row, ids in enumerate(sequences)]


def token_texts(tokenizer: CaptionTokenizer, token_ids: Sequence[int]) -> list[str]:
    """Each token's own text, stripped (subword pieces of byte-level BPE stay pieces; specials keep their name)."""
    return [tokenizer.hf.decode([token_id], skip_special_tokens=False).strip() for token_id in token_ids]


def colour_table(levels: int = 256) -> np.ndarray:
    """(levels, 3) uint8: the colour map sampled at ``levels`` evenly spaced values from 0 to 1."""
    position = np.linspace(0.0, 1.0, levels) * (len(COLOUR_ANCHORS) - 1)
    low = np.floor(position).astype(np.int64).clip(max=len(COLOUR_ANCHORS) - 2)
    fraction = (position - low)[:, None]
    colours = COLOUR_ANCHORS[low] * (1.0 - fraction) + COLOUR_ANCHORS[low + 1] * fraction
    return np.rint(colours).astype(np.uint8)


COLOUR_TABLE = colour_table()


def colourize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of the colour map (256 levels)."""
    return COLOUR_TABLE[np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)]


def seen_box(preprocessing: Preprocessing | None, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of a (width, height) ``size`` image that ``preprocessing`` hands the model, as (left, top, right,
    bottom) fractions of the width and height: the centre crop's box, or the whole image (None: no crop).

    It follows ``Preprocessing.resized``: resize (``Preprocessing.resized_size``), then the centre crop of the
    preprocessing's ``size`` (:func:`captionkit.images.preprocessing.centre_crop_offsets`).
    """
    if preprocessing is None or not preprocessing.do_resize or preprocessing.crop_from is None:
        return WHOLE_IMAGE
    resized_width, resized_height = preprocessing.resized_size(size)
    left, top = centre_crop_offsets((resized_width, resized_height), preprocessing.size, preprocessing.crop_rounding)
    crop_height, crop_width = preprocessing.size
    return (
        left / resized_width,
        top / resized_height,
        (left + crop_width) / resized_width,
        (top + crop_height) / resized_height,
    )


def overlay(
    image: Image.Image,
    grid: np.ndarray,
    max_side: int = MAX_OVERLAY_SIDE,
    seen: tuple[float, float, float, float] = WHOLE_IMAGE,
) -> Image.Image:
    """The RGB ``image`` (shrunk to ``max_side``) with the (h, w) attention ``grid`` drawn over it as a heatmap.

    The grid is stretched over ``seen`` (see :func:`seen_box`), the part of the image the model saw; the rest of the
    image gets weight 0.
    """
    if grid.ndim != 2 or not np.isfinite(grid).all():
        raise ValueError(f"an attention grid must be a finite (h, w) array, got shape {grid.shape}")
    photo = image.convert("RGB")
    if max(photo.size) > max_side:
        photo.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    peak = float(grid.max())
    scaled = (grid / peak if peak > 0 else np.zeros_like(grid)).astype(np.float32)
    width, height = photo.size
    left, top, right, bottom = (round(f * side) for f, side in zip(seen, (width, height, width, height), strict=True))
    right, bottom = max(right, left + 1), max(bottom, top + 1)  # a sliver of a thumbnail still gets its grid
    upsampled = np.zeros((height, width), dtype=np.float32)
    box = Image.fromarray(scaled).resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    upsampled[top:bottom, left:right] = np.asarray(box)
    heat = Image.fromarray(colourize(upsampled))
    opacity = np.rint((MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * np.clip(upsampled, 0.0, 1.0)) * 255).astype(np.uint8)
    return Image.composite(heat, photo, Image.fromarray(opacity))


def overlay_name(index: int, token: str) -> str:
    """``003-dog.png``: the token's position in the caption and its text, made safe for any file system."""
    word = WORD_CHARACTERS.sub("_", token).strip("_")[:40] or "token"
    return f"{index:03d}-{word}.png"


def write_overlays(
    image: Image.Image,
    tokens: Sequence[str],
    maps: np.ndarray,
    directory: Path,
    preprocessing: Preprocessing | None = None,
) -> list[Path]:
    """Write one heatmap PNG per token into ``directory`` (created); returns the paths in caption order.

    ``preprocessing`` is the model's (None: the maps cover the whole image): a centre crop puts the maps on the crop.

    Overlays an earlier run left there (``NNN-*.png``) are removed first: they may belong to another caption.
    """
    if len(tokens) != len(maps):
        raise ValueError(f"{len(tokens)} tokens but {len(maps)} attention maps")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("[0-9][0-9][0-9]-*.png"):
        stale.unlink()
    seen = seen_box(preprocessing, image.size)
    photo = image.convert("RGB")
    photo.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE), Image.Resampling.LANCZOS)  # once, not per token
    paths = []
    for index, (token, grid) in enumerate(zip(tokens, maps, strict=True)):
        path = directory / overlay_name(index, token)
        png = io.BytesIO()
        overlay(photo, grid, seen=seen).save(png, "PNG", compress_level=1)  # fast: these are previews, not archives
        write_atomic(path, png.getvalue())
        paths.append(path)
    return paths
