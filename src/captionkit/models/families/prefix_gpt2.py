"""prefix-gpt2 (ClipCap): a frozen image encoder, a mapper to prefix tokens, and GPT-2 reading them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captionkit.models.family import Family, both_parts

if TYPE_CHECKING:
    from captionkit.models.base import CaptionModel

NAME = "prefix-gpt2"


def _from_parts(encoder: str | None, decoder: str | None, **overrides: Any) -> CaptionModel:
    from captionkit.models.prefix_gpt2 import PrefixGpt2Model

    return PrefixGpt2Model.from_parts(*both_parts(NAME, encoder, decoder), **overrides)


FAMILIES = (
    Family(
        NAME,
        "captionkit.models.prefix_gpt2",
        "PrefixGpt2Model",
        ("tiny", "small", "base"),
        "bpe",
        "frozen ViT -> mapper -> prefix tokens -> GPT-2 (ClipCap)",
        sincos_positions=True,
        image_prefix=True,
        from_parts=_from_parts,
    ),
)
