"""The frozen-encoder feature cache: encode each training image once, then train the rest from the cached tokens.

Valid only while nothing :meth:`CaptionModel.encode` uses is trained (the trainer checks the stages) and the
pixels of an image never change (captionkit does no random augmentation). Features live in memory on the CPU:
(images, tokens, width) floats, e.g. 16 x 64 x 4 bytes for a tiny model, 197 x 768 x 4 bytes = 0.6 MB for ViT-B/16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from captionkit.data.dataset import CaptionDataset, Unreadable
from captionkit.data.records import CaptionRecord
from captionkit.models.base import CaptionModel


@torch.no_grad()
def encode_images(
    model: CaptionModel,
    dataset: CaptionDataset,
    records: Sequence[CaptionRecord],
    device: torch.device,
    batch_size: int = 32,
    autocast: Callable[[], AbstractContextManager[object]] | None = None,
) -> dict[str, torch.Tensor | Unreadable]:
    """image path -> (N, D) encoder tokens (or why the image cannot be read), each distinct image encoded once.

    Runs the model in eval mode (no dropout): the features are those of the frozen encoder.
    """
    paths = list(dict.fromkeys(str(record.image_path) for record in records))
    by_path = {str(record.image_path): record for record in records}
    cache: dict[str, torch.Tensor | Unreadable] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(paths), batch_size):
            pixels: list[np.ndarray] = []
            good: list[str] = []
            for path in paths[start : start + batch_size]:
                found = dataset.pixels_of(by_path[path])
                if isinstance(found, Unreadable):
                    cache[path] = found
                else:
                    pixels.append(found)
                    good.append(path)
            if not good:
                continue
            with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
                tokens = model.encode(torch.from_numpy(np.stack(pixels)).to(device)).tokens
            for path, row in zip(good, tokens.cpu(), strict=True):
                cache[path] = row.clone()
    finally:
        model.train(was_training)
    return cache
