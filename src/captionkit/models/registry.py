"""Model families by name: build a new model from a preset, or load a saved one by the family its config names.

>>> sorted(list_models())
['blip', 'cnn-lstm', 'cnn-lstm-attention', 'git', 'prefix-gpt2', 'vit-gpt2']
>>> list_models()["prefix-gpt2"]
('tiny', 'small', 'base')

Families register themselves: each declares its :class:`Family` (presets, tokenizer kind, hub model_type, how it
starts from pretrained parts) in a tiny module of :mod:`captionkit.models.families`, which the registry reads without
importing any model module; a model module is imported when one of its models is built or loaded.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from captionkit.errors import ConfigError, ModelLoadError
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models import families
from captionkit.models.base import CaptionModel
from captionkit.models.config_file import read_config_json
from captionkit.models.family import Family
from captionkit.text import CaptionTokenizer, train_bpe_tokenizer, train_word_tokenizer

METADATA_KEY = "captionkit"
POSITION_INITS = ("random", "sincos")
# Special ids of a model made without a tokenizer (overridable as bos_token_id=... etc.).
DEFAULT_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


FAMILIES: dict[str, Family] = {}


def register_model(family: Family) -> Family:
    """Add a family (a new name; replacing one is refused so two modules cannot silently fight over it)."""
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def _register_declared_families() -> None:
    """Every family declared in :mod:`captionkit.models.families`, module by module in name order."""
    for module in pkgutil.iter_modules(families.__path__):
        for family in importlib.import_module(f"{families.__name__}.{module.name}").FAMILIES:
            register_model(family)


_register_declared_families()


def hub_model_types() -> dict[str, str]:
    """The family of a Hugging Face checkpoint without captionkit's metadata, by its config's model_type."""
    return {family.hub_model_type: name for name, family in FAMILIES.items() if family.hub_model_type}


def families_with_attention_maps() -> list[str]:
    """The families whose models return spatial attention maps, as they declare it."""
    return [name for name, family in FAMILIES.items() if family.attention_maps]


def hub_layout_families() -> list[str]:
    """The families that wrap a transformers model and save it in the Hugging Face layout (a hub model_type)."""
    return [name for name, family in FAMILIES.items() if family.hub_model_type]


def list_models() -> dict[str, tuple[str, ...]]:
    """Every registered family and its presets."""
    return {name: family.presets for name, family in FAMILIES.items()}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError("model.family", f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def create_model(
    name: str,
    preset: str = "tiny",
    tokenizer: CaptionTokenizer | None = None,
    position_init: str = "random",
    encoder: str | None = None,
    decoder: str | None = None,
    **overrides: Any,
) -> CaptionModel:
    """A new model with random weights: family ``name`` (or ``"family/preset"``), a preset, config overrides.

    With a ``tokenizer`` the vocabulary size and special ids are its own; without one they come from the preset
    and from ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` overrides (defaults 1, 2, 0).

    With an ``encoder`` and/or ``decoder`` part (hub id or directory in the hub layout) the model is built around
    their pretrained weights instead (see :func:`create_from_parts`); the preset is then unused.

    >>> create_model("cnn-lstm/tiny", vocab_size=40).vocab_size
    40
    """
    if "/" in name:
        name, preset = name.split("/", 1)
    family = get_family(name)
    if encoder is not None or decoder is not None:
        return create_from_parts(family, encoder, decoder, tokenizer, position_init, overrides)
    if preset not in family.presets:
        raise ConfigError("model.preset", f"unknown {name} preset {preset!r} (known: {', '.join(family.presets)})")
    if position_init not in POSITION_INITS:
        raise ConfigError("model.position_init", f"unknown {position_init!r} (known: {', '.join(POSITION_INITS)})")
    if position_init == "sincos" and not family.sincos_positions:
        raise ConfigError("model.position_init", f"'sincos' needs a ViT encoder; {name} has none")
    token_ids = {key: overrides.pop(key, default) for key, default in DEFAULT_TOKEN_IDS.items()}
    if tokenizer is not None:
        token_ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        overrides = {"vocab_size": tokenizer.vocab_size} | overrides
    try:
        model = family.load_class().from_config(preset, **token_ids, **overrides)  # type: ignore[attr-defined]
    except ConfigError as error:  # an override's key or value: named as the recipe names it
        if error.source not in overrides:
            raise
        raise ConfigError(f"model.overrides.{error.source}", error.reason) from None
    if position_init == "sincos":
        family.init_sincos_positions(model)
    return model


def create_from_parts(
    family: Family,
    encoder: str | None,
    decoder: str | None,
    tokenizer: CaptionTokenizer | None,
    position_init: str,
    overrides: dict[str, Any],
) -> CaptionModel:
    """A new ``family`` model around pretrained parts; a ``tokenizer`` (the decoder's, maybe with style tokens
    added) must share its special ids, and grows the vocabulary when it has more tokens."""
    if family.from_parts is None:
        raise ConfigError("model.encoder", f"{family.name} cannot start from pretrained parts")
    if position_init != "random":
        raise ConfigError("model.position_init", "a pretrained encoder keeps its own position embeddings")
    if decoder is None:
        # No pretrained decoder (a CNN + LSTM): the vocabulary and special ids are the (trained) tokenizer's.
        ids = {key: overrides.pop(key, default) for key, default in DEFAULT_TOKEN_IDS.items()}
        if tokenizer is not None:
            ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
            ids |= {"pad_token_id": tokenizer.pad_token_id}
            overrides = {"vocab_size": tokenizer.vocab_size} | overrides
        overrides |= ids
    model = family.from_parts(encoder, decoder, **overrides)
    if tokenizer is None:
        return model
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if ids != (model.bos_token_id, model.eos_token_id, model.pad_token_id):
        want = (model.bos_token_id, model.eos_token_id, model.pad_token_id)
        raise ConfigError("tokenizer.pretrained", f"special ids (bos, eos, pad) {ids} differ from the decoder's {want}")
    if tokenizer.vocab_size > model.vocab_size:
        model.resize_vocabulary(tokenizer.vocab_size)
    return model


def train_tokenizer(family: str, captions: Iterable[str], vocab_size: int, lowercase: bool = True) -> CaptionTokenizer:
    """The tokenizer ``family`` reads, trained on ``captions``: a byte-level BPE or a word vocabulary.

    For a word vocabulary ``vocab_size`` counts the whole vocabulary (the four special tokens included).
    """
    if get_family(family).tokenizer == "word":
        return train_word_tokenizer(captions, max(vocab_size - 4, 1), lowercase)
    return train_bpe_tokenizer(captions, vocab_size, lowercase)


def family_of(directory: Path) -> str:
    """The family a checkpoint directory holds: captionkit's metadata key, else the Hugging Face model type."""
    config = read_config_json(directory, directory)
    metadata = config.get(METADATA_KEY)
    family = metadata.get("family") if isinstance(metadata, dict) else None
    if family is None:
        return _hub_family(config.get("model_type"), directory)
    if family not in FAMILIES:
        raise ModelLoadError(
            directory, f"unknown model family {family!r} in config.json (known: {', '.join(FAMILIES)})"
        )
    return family


def _hub_family(model_type: object, directory: Path) -> str:
    """The family of a checkpoint without captionkit's key, by its model_type: a pretrained part given as the model
    (GPT-2, ViT) or a captioner no family wraps (BLIP-2) is refused by its model_type, not by a family of None."""
    known = hub_model_types()
    if isinstance(model_type, str) and model_type in known:
        return known[model_type]
    if model_type is None:
        raise ModelLoadError(directory, "config.json names neither a captionkit family nor a model_type")
    raise ModelLoadError(
        directory, f"is a {model_type!r} model, not one of the captioners loaded here (hub types: {', '.join(known)})"
    )


def load_model(source: str | Path, *, dtype: torch.dtype | None = None) -> CaptionModel:
    """Load a saved model: a local checkpoint directory (any family), or a hub id (its snapshot; any family); with a
    ``dtype``, its weights are read in it (:meth:`CaptionModel.from_pretrained`)."""
    directory = resolve_model_source(source)
    return FAMILIES[family_of(directory)].load_class().from_pretrained(directory, dtype=dtype)


def preprocessing_for(model: CaptionModel) -> Preprocessing:
    """Preprocessing for a new model: its encoder part's own, else resize to its input size, normalise to [-1, 1]."""
    if model.preprocessing is not None:
        return model.preprocessing
    size = model.config.image_size  # type: ignore[attr-defined]
    return Preprocessing.for_size(size, size)
