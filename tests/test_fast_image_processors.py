"""captionkit's pixels against transformers' fast (torchvision) image processors on real photos (issue 16).

captionkit reproduces the PIL backend of each image processor to 1e-6 (tests/test_images.py, tests/test_parts.py). The
fast processor, which ``AutoImageProcessor.from_pretrained(part, use_fast=True)`` returns and transformers 5 picks by
default where torchvision is installed, resizes the same uint8 image with torchvision's antialiased kernels instead of
PIL's, so the two differ slightly. These tests measure by how much and hold that bound. They need torchvision and run
in .venv-vision (make test-vision, marker ``vision``); elsewhere they are deselected, never skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data import SHARED_DATA, real_photos
from _hub_parts import FAST_FILES, fast_processor_file
from captionkit.images import Preprocessing, load_image

pytestmark = [pytest.mark.vision, pytest.mark.usefixtures("single_thread")]

# 20 COCO and 10 Flickr8k photos: landscape and portrait, odd sizes.
PHOTO_PATHS = real_photos(20)
PHOTO_PATHS += sorted((SHARED_DATA / "flickr8k" / "Images").glob("*.jpg"))[:10]
# Measured on these photos (torch 2.14.1, torchvision 0.29.1, transformers 5.25), in grey levels (|difference| x std x
# 255): at most 1 level for the bilinear resizes and the shorter-edge bicubic ones (ViT, CLIP, BiT, ConvNeXt); up to
# 8 (DeiT), 10 (BEiT, SigLIP) and 16 (BLIP) levels for bicubic resizes to a fixed size, at a few pixels of sharp
# edges (bicubic overshoots, which the two libraries clamp at different steps). The mean stays under 0.05 levels and
# at most 0.03% of the values differ by more than one level.
MAX_LEVELS = {"ViT": 1, "CLIP": 1, "Bit": 1, "ConvNext": 1, "DeiT": 8, "Beit": 10, "Siglip": 10, "Blip": 16}
MEAN_LEVELS = 0.05
SHARE_OVER_ONE_LEVEL = 3e-4


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    assert len(PHOTO_PATHS) == 30, f"real photos missing under {SHARED_DATA}"
    return [load_image(path) for path in PHOTO_PATHS]


@pytest.mark.parametrize("name", sorted(FAST_FILES))
def test_pixels_are_within_the_measured_bound_of_the_fast_processor(
    name: str, photos: list[Image.Image], tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor
    from transformers.image_processing_backends import TorchvisionBackend

    settings, size = fast_processor_file(name)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    fast = AutoImageProcessor.from_pretrained(tmp_path, use_fast=True)
    assert isinstance(fast, TorchvisionBackend)
    # The file names the fast processor: with torchvision installed, it is also what a plain call gives.
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is type(fast)
    expected = np.asarray(fast(photos, return_tensors="np")["pixel_values"])
    ours = Preprocessing.load(tmp_path)(photos)
    assert ours.shape == expected.shape == (len(photos), 3, *size)
    std = np.asarray(settings["image_std"], dtype=np.float64).reshape(1, 3, 1, 1)
    levels = np.abs(ours.astype(np.float64) - expected) * std * 255
    assert levels.max() <= MAX_LEVELS[name] + 1e-3
    assert levels.mean() <= MEAN_LEVELS
    assert (levels > 1 + 1e-3).mean() <= SHARE_OVER_ONE_LEVEL
