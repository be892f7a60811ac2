"""The centre crop's offsets when a margin is odd: rounded down (transformers' processors) or half to even
(torchvision's CenterCrop, which timm and torchvision backbones use); saved with the preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captionkit.errors import ConfigError
from captionkit.images import Preprocessing


def _columns(width: int, height: int) -> Image.Image:
    """An RGB image whose every pixel holds its column index."""
    row = np.arange(width, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.broadcast_to(row, (height, width))[..., None], 3, axis=2))


@pytest.mark.parametrize(("rounding", "left"), [("floor", 1), ("half-even", 2)])
def test_an_odd_margin_rounds_as_configured(rounding: str, left: int) -> None:
    # Already at the resize size (11 x 10): the 8 x 8 crop leaves 3 columns, 1.5 on each side.
    raw = {"do_rescale": False, "do_normalize": False}
    preprocessing = Preprocessing(size=(8, 8), crop_from=(10, 11), crop_rounding=rounding, **raw)
    pixels = preprocessing(_columns(11, 10))
    assert pixels.shape == (1, 3, 8, 8)
    assert pixels[0, 0, 0].tolist() == list(range(left, left + 8))


def test_the_rounding_is_saved_only_when_not_transformers(tmp_path: Path) -> None:
    torchvision = Preprocessing(size=(224, 224), crop_from=256, crop_rounding="half-even")
    torchvision.save(tmp_path / "a")
    assert Preprocessing.load(tmp_path / "a") == torchvision
    Preprocessing(size=(224, 224), crop_from=256).save(tmp_path / "b")
    assert "crop_rounding" not in (tmp_path / "b" / "preprocessor_config.json").read_text()
    with pytest.raises(ConfigError, match=r"crop_rounding must be one of \('floor', 'half-even'\), got 'up'"):
        Preprocessing(crop_from=256, crop_rounding="up")
