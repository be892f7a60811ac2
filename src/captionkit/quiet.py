"""transformers' progress bars ("Loading weights", "Writing model shards") off while captionkit loads or saves a
model: each is a short step, and the bars would leak into the Python API's, ``train()``'s and ``benchmark``'s output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_transformers_progress_bars() -> Iterator[None]:
    """The bars off meanwhile, and the caller's setting back afterwards."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
