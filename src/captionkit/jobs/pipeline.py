"""The input side of batch captioning: decode and preprocess image files in DataLoader worker processes.

Decoding JPEGs takes as long as running a small captioner, so with ``workers > 0`` a torch ``DataLoader`` opens
and preprocesses the next batches in other processes (through :func:`captionkit.images.load_image` and the
captioner's :class:`~captionkit.images.Preprocessing`, nothing else) while the model captions the current one.
JPEGs much larger than the model's input are decoded reduced (``load_image``'s draft mode, to the preprocessing's
:attr:`~captionkit.images.Preprocessing.draft_size`): several times less decoding work, pixels within the
tolerance ``load_image`` documents; images at or below twice the target size decode exactly as in the API.
At most ``prefetch`` batches per worker are in flight, and the images to read are taken from their (lazy) stream only
as batches are sent out, so memory stays bounded however many images there are.
For a GPU, batches are page-locked (pinned) before they are handed out, by the DataLoader's pinning thread with
workers and in this process without, so that their copy to the device can run without blocking; and they are
uint8, resized but not yet rescaled or normalised (a quarter of float32's bytes to hand over, pin and copy):
:func:`normalise_on_device` finishes them there with the same operations as the CPU, so the pixels are the same.
A file that cannot be read comes back as its error message: a worker never raises on a bad image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from captionkit.cpus import usable_cpus
from captionkit.errors import ImageError, InputError, first_line
from captionkit.images import ImageLimits, Preprocessing, load_image


@dataclass
class ImageBatch:
    """One batch from the loader: the positions it covers and their paths, the pixels of its good images, the errors
    of the rest.

    ``paths[i]`` is the image at ``positions[i]``; ``pixels[i]`` belongs to position ``good[i]``; ``errors`` maps each
    bad position to its one-line reason.
    """

    positions: list[int]
    good: list[int]
    pixels: torch.Tensor
    errors: dict[int, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    def pin_memory(self) -> ImageBatch:
        """Called by the DataLoader (``pin_memory=True``) so that the copy to the GPU can overlap compute."""
        self.pixels = self.pixels.pin_memory()
        return self


# An image to read: its position in the job and its path (a file or a member path).
Item = tuple[int, str]
# What reading one gives: its position and path, and its pixels or the reason it has none.
Decoded = tuple[int, str, np.ndarray | None, str | None]


class ImageFiles(Dataset):
    """Reads the image an item names: ``(position, path)`` -> ``(position, path, pixels or None, error or None)``;
    pixels (3, H, W) float32 as the preprocessing gives them, or with ``uint8`` its first half only
    (:meth:`Preprocessing.resized`, (H, W, 3)). It holds no list of images: the items come from the batch sampler,
    one batch at a time."""

    def __init__(self, preprocessing: Preprocessing, limits: ImageLimits, uint8: bool = False) -> None:
        self._preprocessing = preprocessing
        self._limits = limits
        self._uint8 = uint8

    def __getitem__(self, item: Item) -> Decoded:
        position, path = item
        try:
            image = load_image(path, limits=self._limits, draft=self._preprocessing.draft_size)
            pixels = self._preprocessing.resized(image) if self._uint8 else self._preprocessing(image)[0]
            return position, path, pixels, None
        except ImageError as error:
            return position, path, None, with_place(error.reason, path)
        except Exception as error:  # a decoder bug must cost one record, not the worker and the whole run
            return position, path, None, f"cannot decode image ({type(error).__name__}: {first_line(error)})"


def with_place(reason: str, path: str | Path) -> str:
    """A missing file's reason with the absolute path looked for. A list's paths are found relative to its folder,
    and the record names one joined to the list's path as given ("photo.jpg" for a list in the working directory):
    that alone does not show where a wrong relative path sent the search. For a broken link, which is there, the
    path is that of the missing file it points to."""
    if reason != "no such file":
        return reason
    if os.path.islink(path):
        return f"no such file (broken link to {os.path.realpath(path)})"
    return f"no such file (looked for {os.path.abspath(path)})"


class _Batches:
    """The DataLoader's batch sampler: ``batch_size`` consecutive items at a time, taken from ``items`` only as the
    loader asks for the next batch (``prefetch`` per worker ahead), so an input stream is never held whole."""

    def __init__(self, items: Iterable[tuple[int, str | Path]], batch_size: int) -> None:
        self._items = items
        self._batch_size = batch_size

    def __iter__(self) -> Iterator[list[Item]]:
        items = ((position, str(path)) for position, path in self._items)
        while batch := list(islice(items, self._batch_size)):
            yield batch


def collate(items: Sequence[Decoded]) -> ImageBatch:
    """Stack the good images' pixels (in the worker, so one tensor crosses the process boundary)."""
    good = [(position, pixels) for position, _, pixels, _ in items if pixels is not None]
    pixels = torch.from_numpy(np.stack([array for _, array in good])) if good else torch.zeros(0)
    errors = {position: error for position, _, _, error in items if error is not None}
    positions = [position for position, _, _, _ in items]
    return ImageBatch(positions, [position for position, _ in good], pixels, errors, [path for _, path, _, _ in items])


def load_batches(
    paths: Iterable[str | Path],
    preprocessing: Preprocessing,
    limits: ImageLimits,
    batch_size: int,
    workers: int = 0,
    prefetch: int = 2,
    pin_memory: bool = False,
    uint8: bool = False,
) -> Iterator[ImageBatch]:
    """Batches of ``paths`` in order, at positions 0, 1, ... (see :func:`load_items`)."""
    return load_items(enumerate(paths), preprocessing, limits, batch_size, workers, prefetch, pin_memory, uint8)


def load_items(
    items: Iterable[tuple[int, str | Path]],
    preprocessing: Preprocessing,
    limits: ImageLimits,
    batch_size: int,
    workers: int = 0,
    prefetch: int = 2,
    pin_memory: bool = False,
    uint8: bool = False,
) -> Iterator[ImageBatch]:
    """Batches of ``items`` (position, path) in order, decoded in ``workers`` processes (0: in this process),
    page-locked when ``pin_memory`` (only where torch sees a GPU); with ``uint8``, pixels for
    :func:`normalise_on_device`. ``items`` is read lazily, a batch at a time as batches are sent to be decoded."""
    loader = DataLoader(
        ImageFiles(preprocessing, limits, uint8),
        batch_sampler=_Batches(items, batch_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None,
    )
    return iter(loader)


def normalise_on_device(preprocessing: Preprocessing, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) pixels of :meth:`Preprocessing.resized` -> float32 (B, 3, H, W), on their device: the
    second half of ``preprocessing`` (:meth:`Preprocessing.normalised`), its operations in its precisions (float64
    scale, float32 normalise, a true division), so that the result is the CPU's bit for bit."""
    scaled = pixels.double() * preprocessing.rescale_factor if preprocessing.do_rescale else pixels
    values = scaled.float()
    if preprocessing.do_normalize:
        mean = _per_channel(preprocessing.image_mean, pixels.device)
        values = (values - mean) / _per_channel(preprocessing.image_std, pixels.device)
    return values.permute(0, 3, 1, 2).contiguous()


@lru_cache(maxsize=8)
def _per_channel(values: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    """float32 (3,) on ``device``, made once per run (a copy to a GPU from a list waits for the device)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def parse_workers(text: str, processes_per_node: int) -> int:
    """``--workers``: a count >= 0, or auto: this process's share of the CPUs, one left for it, at most 8."""
    if text.strip().lower() == "auto":
        cpus = usable_cpus()
        return max(0, min(8, cpus // processes_per_node - 1))
    if text.strip().isdigit():
        return int(text)
    raise InputError("--workers", f"expected a number of processes (0 = none) or auto, got {text!r}")
