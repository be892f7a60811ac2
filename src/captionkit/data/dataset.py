"""CaptionDataset: records -> (pixels, token ids) for teacher forcing, and the collate that pads a batch.

A sample whose image cannot be read becomes an :class:`Unreadable` marker; :func:`collate` drops it and counts it, so
training skips a corrupt or missing file instead of dying on it (ARCHITECTURE.md, error policy).

With ``features`` (image path -> encoder tokens, from a frozen encoder), samples carry those features instead of
pixels and no image is opened at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from captionkit.data.records import CaptionRecord
from captionkit.errors import ImageError
from captionkit.images import ImageLimits, Preprocessing, load_image
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import style_token_ids


@dataclass
class Sample:
    pixel_values: np.ndarray | None  # (3, H, W) float32; None when the sample carries features
    input_ids: list[int]  # bos, caption tokens, eos
    image_id: str
    features: torch.Tensor | None = None  # (N, D) cached encoder tokens


@dataclass
class Unreadable:
    """A sample whose image could not be read: which file and why."""

    image: str
    reason: str


@dataclass
class Batch:
    pixel_values: torch.Tensor  # (B, 3, H, W); empty when the batch carries features
    input_ids: torch.Tensor  # (B, T), padded with pad_token_id
    attention_mask: torch.Tensor  # (B, T), 1 for real tokens
    image_ids: list[str]
    skipped: int  # samples dropped because their image could not be read
    features: torch.Tensor | None = None  # (B, N, D) cached encoder tokens
    unreadable: list[Unreadable] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_ids)

    def pin_memory(self) -> Batch:
        """Page-locked copies (``DataLoader(pin_memory=True)`` calls this): they go to a GPU without blocking."""
        features = None if self.features is None else self.features.pin_memory()
        pixels, ids, mask = (t.pin_memory() for t in (self.pixel_values, self.input_ids, self.attention_mask))
        return replace(self, pixel_values=pixels, input_ids=ids, attention_mask=mask, features=features)


class CaptionDataset(Dataset):
    """One item per caption record."""

    def __init__(
        self,
        records: Sequence[CaptionRecord],
        tokenizer: CaptionTokenizer,
        preprocessing: Preprocessing,
        max_length: int = 40,
        cache_images: bool = False,
        limits: ImageLimits | None = None,
        features: Mapping[str, torch.Tensor | Unreadable] | None = None,
    ) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (bos, a token, eos), got {max_length}")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.max_length = max_length
        self.limits = limits or ImageLimits()
        self.features = features
        self._pixels: dict[str, np.ndarray | Unreadable] | None = {} if cache_images else None
        # A tokenizer with style tokens (a model trained with style control) starts each caption with its style's
        # token; neutral captions, and every caption for a tokenizer without them, start with bos.
        self._starts = style_token_ids(tokenizer)
        # Tokenize once: captions are short and tokenization is cheap next to an epoch of image decoding.
        self._ids = [self._token_ids(record.caption, record.style) for record in self.records]

    def _token_ids(self, caption: str, style: str = "neutral") -> list[int]:
        body = self.tokenizer.encode(caption)[: self.max_length - 2]
        start = self._starts.get(style, self.tokenizer.bos_token_id)
        return [start, *body, self.tokenizer.eos_token_id]

    def __len__(self) -> int:
        return len(self.records)

    def pixels_of(self, record: CaptionRecord) -> np.ndarray | Unreadable:
        """Preprocessed pixels of a record's image, or why they cannot be had."""
        key = str(record.image_path)
        if self._pixels is not None and key in self._pixels:
            return self._pixels[key]
        try:
            pixels: np.ndarray | Unreadable = self.preprocessing([load_image(record.image_path, limits=self.limits)])[0]
        except ImageError as error:
            pixels = Unreadable(key, error.reason)
        if self._pixels is not None:
            self._pixels[key] = pixels
        return pixels

    def cache_all(self, on_image: Callable[[int, int], None] | None = None) -> None:
        """Read every image into the cache now (a cached dataset otherwise fills it during the first epoch);
        ``on_image(done, total)`` after each distinct image."""
        if self._pixels is None:
            return
        firsts = {str(record.image_path): record for record in self.records}
        for done, record in enumerate(firsts.values(), start=1):
            self.pixels_of(record)
            if on_image is not None:
                on_image(done, len(firsts))

    def __getitem__(self, index: int) -> Sample | Unreadable:
        record = self.records[index]
        if self.features is not None:
            cached = self.features[str(record.image_path)]
            if isinstance(cached, Unreadable):
                return cached
            return Sample(None, self._ids[index], record.image_id, cached)
        pixels = self.pixels_of(record)
        if isinstance(pixels, Unreadable):
            return pixels
        return Sample(pixels, self._ids[index], record.image_id)


def collate(samples: Sequence[Sample | Unreadable | None], pad_token_id: int) -> Batch:
    """Stack pixels (or features), right-pad ids with ``pad_token_id`` and build the attention mask; drop and count
    unreadable samples."""
    good = [sample for sample in samples if isinstance(sample, Sample)]
    unreadable = [sample for sample in samples if isinstance(sample, Unreadable)]
    skipped = len(samples) - len(good)
    if not good:
        empty = Batch(torch.empty(0), torch.empty(0, 0, dtype=torch.long), torch.empty(0, 0), [], skipped)
        empty.unreadable = unreadable
        return empty
    length = max(len(sample.input_ids) for sample in good)
    input_ids = torch.full((len(good), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(good), length), dtype=torch.long)
    for row, sample in enumerate(good):
        input_ids[row, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
        attention_mask[row, : len(sample.input_ids)] = 1
    features = None
    if good[0].features is not None:
        features = torch.stack([sample.features for sample in good])  # type: ignore[misc]
        pixel_values = torch.empty(0)
    else:
        pixel_values = torch.from_numpy(np.stack([sample.pixel_values for sample in good]))  # type: ignore[misc]
    image_ids = [sample.image_id for sample in good]
    return Batch(pixel_values, input_ids, attention_mask, image_ids, skipped, features, unreadable)
