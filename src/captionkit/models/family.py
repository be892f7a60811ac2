"""What a model family declares about itself, kept apart from its model code.

Each family's :class:`Family` sits in a tiny module of :mod:`captionkit.models.families`. The registry reads every
declaration there without importing the model modules, which pull in transformers; a model module is imported only
when one of its models is built or loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captionkit.errors import ConfigError

if TYPE_CHECKING:
    from captionkit.models.base import CaptionModel

TOKENIZER_KINDS = ("bpe", "word")


@dataclass(frozen=True)
class Family:
    """A model family: its name, where its model class lives, its presets and the tokenizer it reads."""

    name: str
    module: str  # the module defining the model class
    class_name: str
    presets: tuple[str, ...]
    tokenizer: str  # one of TOKENIZER_KINDS: bpe subwords (GPT-2, BERT decoders) or a word vocabulary (LSTMs)
    description: str
    # The model_type of its checkpoints in the Hugging Face layout, read when config.json has no captionkit key.
    hub_model_type: str | None = None
    # Whether the module's init_sincos_positions(model) sets the encoder's positions from a 2-D sin-cos table.
    sincos_positions: bool = False
    # Whether its models return spatial attention maps (``CaptionModel.has_attention``: cross-attention over image
    # patches, or soft attention over CNN regions).
    attention_maps: bool = False
    # Whether its decoder reads the image as prefix tokens in its own self-attention (GIT, ClipCap) rather than
    # through cross-attention (vit-gpt2, BLIP): the benchmark's FLOP estimate counts the image side accordingly.
    image_prefix: bool = False
    # Builds a new model around pretrained parts (encoder, decoder: hub ids or directories, None where the family
    # takes none; then the config fields the parts do not fix); None: the family cannot start from parts.
    from_parts: Callable[..., CaptionModel] | None = None

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {self.tokenizer!r}")

    def load_class(self) -> type[CaptionModel]:
        """The model class (its module imported now)."""
        return getattr(importlib.import_module(self.module), self.class_name)  # type: ignore[no-any-return]

    def init_sincos_positions(self, model: CaptionModel) -> None:
        importlib.import_module(self.module).init_sincos_positions(model)


def both_parts(family: str, encoder: str | None, decoder: str | None) -> tuple[str, str]:
    """(encoder, decoder) for a family that starts from both, or the config error saying one is missing."""
    if encoder is None or decoder is None:
        raise ConfigError("model.encoder", f"{family} from parts needs both model.encoder and model.decoder")
    return encoder, decoder
