"""vit-gpt2: a ViT encoder and a GPT-2 decoder joined by cross-attention (Hugging Face VisionEncoderDecoder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captionkit.errors import ConfigError
from captionkit.models.family import Family, both_parts

if TYPE_CHECKING:
    from captionkit.models.base import CaptionModel

NAME = "vit-gpt2"


def _from_parts(encoder: str | None, decoder: str | None, **overrides: Any) -> CaptionModel:
    from captionkit.models.vit_gpt2 import VitGpt2Model

    encoder, decoder = both_parts(NAME, encoder, decoder)
    if overrides:
        given = ", ".join(overrides)
        raise ConfigError("model.overrides", f"the architecture comes from the pretrained parts; remove {given}")
    return VitGpt2Model.from_parts(encoder, decoder)


FAMILIES = (
    Family(
        NAME,
        "captionkit.models.vit_gpt2",
        "VitGpt2Model",
        ("tiny", "small", "base"),
        "bpe",
        "ViT + GPT-2 with cross-attention",
        hub_model_type="vision-encoder-decoder",
        sincos_positions=True,
        attention_maps=True,
        from_parts=_from_parts,
    ),
)
