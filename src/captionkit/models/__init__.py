"""Captioning model families behind one interface, :class:`CaptionModel` (see ``base.py``).

``registry``: families by name (``create_model``, ``list_models``, ``load_model``), each declared in a tiny module of
``families`` (see ``family.py``) so that the registry answers without importing model code. The families:

* ``vit_gpt2``: ViT encoder + GPT-2 decoder with cross-attention (Hugging Face ``VisionEncoderDecoderModel``);
* ``prefix_gpt2``: frozen ViT -> mapper -> prefix tokens -> GPT-2 (ClipCap style);
* ``cnn_lstm``: ResNet + LSTM over words, without (Show and Tell) or with soft attention (Show, Attend and Tell).

``native`` holds what the last two share: typed configs and captionkit's own checkpoint files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captionkit.models.base import CaptionModel, DecoderState, Encoded

if TYPE_CHECKING:
    from captionkit.models.cnn_lstm import CnnLstmAttentionModel, CnnLstmConfig, CnnLstmModel
    from captionkit.models.prefix_gpt2 import PrefixGpt2Config, PrefixGpt2Model
    from captionkit.models.vit_gpt2 import VitGpt2Config, VitGpt2Model

__all__ = [
    "CaptionModel",
    "CnnLstmAttentionModel",
    "CnnLstmConfig",
    "CnnLstmModel",
    "DecoderState",
    "Encoded",
    "PrefixGpt2Config",
    "PrefixGpt2Model",
    "VitGpt2Config",
    "VitGpt2Model",
]

# Lazy: importing the interface must not import transformers (seconds of start-up).
_LAZY = {
    "VitGpt2Config": "vit_gpt2",
    "VitGpt2Model": "vit_gpt2",
    "PrefixGpt2Config": "prefix_gpt2",
    "PrefixGpt2Model": "prefix_gpt2",
    "CnnLstmConfig": "cnn_lstm",
    "CnnLstmModel": "cnn_lstm",
    "CnnLstmAttentionModel": "cnn_lstm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"captionkit.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'captionkit.models' has no attribute {name!r}")
