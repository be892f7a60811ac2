"""Model families by name: build a new model from a preset, or load a saved one by the family its config names.

The model-families issue grows this into the full registry (``register_model`` / ``list_models``); today the one
family is ``vit-gpt2``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captionkit.errors import ConfigError, ModelLoadError
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.vit_gpt2 import FAMILY as VIT_GPT2
from captionkit.models.vit_gpt2 import METADATA_KEY, VitGpt2Model, init_sincos_positions
from captionkit.text import CaptionTokenizer

FAMILIES: dict[str, type[CaptionModel]] = {VIT_GPT2: VitGpt2Model}


POSITION_INITS = ("random", "sincos")


def create_model(
    family: str, preset: str, tokenizer: CaptionTokenizer, position_init: str = "random", **overrides: Any
) -> CaptionModel:
    """A new model of ``family`` from ``preset``, its vocabulary and special ids taken from ``tokenizer``."""
    if family not in FAMILIES:
        raise ConfigError("model.family", f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    if position_init not in POSITION_INITS:
        raise ConfigError("model.position_init", f"unknown {position_init!r} (known: {', '.join(POSITION_INITS)})")
    overrides = {"vocab_size": tokenizer.vocab_size} | overrides
    model = VitGpt2Model.from_config(
        preset,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    if position_init == "sincos":
        init_sincos_positions(model)
    return model


def family_of(directory: Path) -> str:
    """The family a checkpoint directory holds: captionkit's metadata key, else the Hugging Face model type."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(directory, "no config.json (not a model directory)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(config_file, f"invalid JSON ({error})") from None
    family = (config.get(METADATA_KEY) or {}).get("family")
    if family is None and config.get("model_type") == "vision-encoder-decoder":
        family = VIT_GPT2
    if family not in FAMILIES:
        raise ModelLoadError(directory, f"unknown model family {family!r} in config.json")
    return family


def load_model(source: str | Path) -> CaptionModel:
    """Load a saved model: a local checkpoint directory, or a hub id (Hugging Face families)."""
    path = Path(source)
    family = family_of(path) if path.is_dir() else VIT_GPT2
    return FAMILIES[family].from_pretrained(source)


def preprocessing_for(model: CaptionModel) -> Preprocessing:
    """Default preprocessing for a new model: resize to its input size, normalise to [-1, 1]."""
    size = model.config.image_size
    return Preprocessing.for_size(size, size)
