"""cnn-lstm and cnn-lstm-attention: a ResNet under an LSTM over words, without or with soft attention."""

from __future__ import annotations

import importlib
from functools import partial
from typing import TYPE_CHECKING, Any

from captionkit.errors import ConfigError
from captionkit.models.family import Family

if TYPE_CHECKING:
    from captionkit.models.base import CaptionModel

MODULE = "captionkit.models.cnn_lstm"


def _from_parts(class_name: str, encoder: str | None, decoder: str | None, **fields: Any) -> CaptionModel:
    if encoder is None or decoder is not None:
        raise ConfigError("model.decoder", "a CNN + LSTM starts from a pretrained model.encoder only (its LSTM is new)")
    return getattr(importlib.import_module(MODULE), class_name).from_parts(encoder, **fields)  # type: ignore[no-any-return]


FAMILIES = tuple(
    Family(
        name,
        MODULE,
        class_name,
        ("tiny", "small", "base"),
        "word",
        description,
        attention_maps=attention,
        from_parts=partial(_from_parts, class_name),
    )
    for name, class_name, description, attention in (
        ("cnn-lstm", "CnnLstmModel", "ResNet + LSTM (Show and Tell)", False),
        (
            "cnn-lstm-attention",
            "CnnLstmAttentionModel",
            "ResNet + LSTM with soft attention (Show, Attend and Tell)",
            True,
        ),
    )
)
