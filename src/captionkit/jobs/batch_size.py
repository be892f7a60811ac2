"""``--batch-size auto``: the number of images per batch that a captioner takes on its device.

On a GPU: the largest power of two up to :data:`MAX_AUTO_BATCH` whose batch of random pixels decodes (with the run's
decoding settings, every caption forced to full length) without running out of GPU memory, halved once for the
memory a real run adds (pinned batches in flight, longer-lived allocator blocks). On a CPU: :data:`CPU_BATCH`. A
beam-4 decoding step on a few cores is bound by reading the weights, so more images per batch gain little beyond
8 while each batch's latency (and the memory of its beams' caches) grows with it.
"""

from __future__ import annotations

import dataclasses

import torch

from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import InputError
from captionkit.models.base import CaptionModel
from captionkit.models.gpt2_graph import release_graphs
from captionkit.precision import model_dtype

__all__ = ["CPU_BATCH", "MAX_AUTO_BATCH", "choose_batch_size", "parse_batch_size"]

CPU_BATCH = 8
MAX_AUTO_BATCH = 1024


def parse_batch_size(text: str) -> int | None:
    """``--batch-size``: a count >= 1, or None for ``auto``; an ``InputError`` otherwise."""
    if text.strip().lower() == "auto":
        return None
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise InputError("--batch-size", f"must be at least 1 or auto, got {text!r}")


def choose_batch_size(
    model: CaptionModel, image_size: tuple[int, int], config: DecodingConfig, device: torch.device
) -> int:
    """The batch size for ``--batch-size auto`` (see the module's notes)."""
    if device.type != "cuda":
        return CPU_BATCH
    seed = (config.seed or 0) if config.do_sample else None  # a probe that samples draws no random seed
    forced = dataclasses.replace(config, min_new_tokens=config.max_new_tokens, seed=seed)
    fits = 0
    size = 8
    while size <= MAX_AUTO_BATCH:
        pixels = torch.randn(size, 3, *image_size, device=device, dtype=model_dtype(model))
        try:
            generate(model, pixels, config=forced)
        except RuntimeError as error:
            if not _out_of_memory(error):
                raise
            break
        finally:
            del pixels
            torch.cuda.empty_cache()
        fits, size = size, size * 2
    release_graphs(model)  # the probes' CUDA graphs (CAPTIONKIT_CUDA_GRAPHS) hold memory the run needs
    return max(1, fits // 2) if fits < MAX_AUTO_BATCH else MAX_AUTO_BATCH


def _out_of_memory(error: RuntimeError) -> bool:
    """CUDA's out-of-memory error; or the plain RuntimeError ("CUDA error: out of memory") that a CUDA-graph capture
    (``CAPTIONKIT_CUDA_GRAPHS``) raises for the same cause as it ends."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)
