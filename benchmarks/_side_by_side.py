"""What the export benchmarks share: their photo arguments and captioning the same photos with two engines.

Both engines caption each batch in turn (interleaved, each going first in every other batch), so load on a shared
machine hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from _data import SHARED_DATA
from captionkit.decoding import DecodingConfig
from captionkit.errors import CaptionkitError, InputError
from captionkit.jobs.inputs import collect_images

PHOTOS = SHARED_DATA / "coco" / "val2017"


def positive_int(text: str) -> int:
    """An argparse type: 0 or less would fail later with a traceback (a zero range step, a division by zero)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def photo_arguments(parser: argparse.ArgumentParser, beams: int) -> None:
    """--model, --images, --count, --beams, --batch-size, --threads."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, default=PHOTOS)
    parser.add_argument("--count", type=positive_int, default=64)
    parser.add_argument("--beams", type=positive_int, default=beams)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--threads", type=positive_int, default=2)


def photo_paths(images: Path, count: int) -> list[Path]:
    """The first ``count`` images under ``images``; none found is an error naming the folder (not a ZeroDivision)."""
    paths = collect_images([images])[:count]
    if not paths:
        raise InputError(images, "no images found")
    return paths


def run_main(name: str, main: Callable[[], None]) -> None:
    """``main()``, a bad ``--model`` or ``--images`` ending it in one line (exit 1), as captionkit's commands do."""
    try:
        main()
    except CaptionkitError as error:
        sys.exit(f"{name}: error: {error}")


def caption_side_by_side(
    engines: dict[str, Any], images: list[Image.Image], config: DecodingConfig, batch_size: int
) -> tuple[dict[str, list[list[int]]], dict[str, list[float]]]:
    """Each engine's best caption (token ids) of every image and its seconds per batch, after one warm-up batch.

    ``engines`` have ``caption_pil(images, config)`` (a ``Captioner`` or the ONNX captioner).
    """
    captions: dict[str, list[list[int]]] = {name: [] for name in engines}
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.caption_pil(images[:batch_size], config)
    in_turn = list(engines.items())
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        # Each engine goes first in every other batch: what running right after the other brings falls on both.
        for name, engine in in_turn if start // batch_size % 2 == 0 else in_turn[::-1]:
            began = time.perf_counter()
            found = engine.caption_pil(batch, config)
            seconds[name].append(time.perf_counter() - began)
            captions[name] += [per_image[0].token_ids for per_image in found]
    return captions, seconds


def token_accuracy(pairs: list[tuple[list[int], list[int]]]) -> float:
    """The share of positions (over the longer caption of each pair) where both captions have the same token."""
    same = sum(sum(a == b for a, b in zip(x, y, strict=False)) for x, y in pairs)
    total = sum(max(len(x), len(y), 1) for x, y in pairs)
    return same / total
