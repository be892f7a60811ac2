"""Captioning model families behind one interface, :class:`CaptionModel` (see ``base.py``).

``vit_gpt2``: ViT encoder + GPT-2 decoder (Hugging Face ``VisionEncoderDecoderModel``), presets, hub loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captionkit.models.base import CaptionModel, DecoderState, Encoded

if TYPE_CHECKING:
    from captionkit.models.vit_gpt2 import VitGpt2Config, VitGpt2Model

__all__ = ["CaptionModel", "DecoderState", "Encoded", "VitGpt2Config", "VitGpt2Model"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the interface must not import transformers (seconds of start-up).
    if name in ("VitGpt2Config", "VitGpt2Model"):
        from captionkit.models import vit_gpt2

        return getattr(vit_gpt2, name)
    raise AttributeError(f"module 'captionkit.models' has no attribute {name!r}")
