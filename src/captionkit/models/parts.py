"""Pretrained parts: a vision encoder or a GPT-2 decoder from a hub id or a local directory in the hub layout.

Each part is read the way its hub repository stores it (``config.json``, ``model.safetensors``, the image
processor or tokenizer files), as transformers 4 wrote it or as transformers 5 does. Only safetensors weights are
read, never remote code. A family builds its new captioner around these parts and copies their weights unchanged;
the layers a part lacks (GPT-2's cross-attention) start from transformers' own initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import AutoModel, CLIPVisionModel, GPT2LMHeadModel, PreTrainedModel, SiglipVisionModel
from transformers.utils import logging as hf_logging

from captionkit.errors import ModelLoadError, first_line
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.config_file import CONFIG_FILE, read_config_json

# Vision transformers whose last hidden state is a sequence of patch tokens (CLIP and SigLIP: their vision tower).
VISION_TRANSFORMER_TYPES = (
    "vit",
    "deit",
    "beit",
    "dinov2",
    "clip",
    "clip_vision_model",
    "siglip",
    "siglip_vision_model",
)
DECODER_TYPES = ("gpt2",)
# A full CLIP / SigLIP checkpoint holds a text tower too: only the vision tower is loaded from it.
_VISION_TOWERS: dict[str, type[PreTrainedModel]] = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}
# Weights a part may lack without harm: a ViT's pooling head, which no captioner here uses.
_UNUSED_WEIGHT = "pooler."
_CROSS_ATTENTION = (".crossattention.", ".ln_cross_attn.")


def model_type_of(directory: Path, source: str) -> str:
    """The ``model_type`` in a part's config.json."""
    model_type = read_config_json(directory, source).get("model_type")
    if not isinstance(model_type, str):
        raise ModelLoadError(directory / CONFIG_FILE, "names no model_type")
    return model_type


def load_vision_encoder(source: str | Path, kinds: tuple[str, ...] = VISION_TRANSFORMER_TYPES) -> PreTrainedModel:
    """The vision model of ``source`` (the vision tower of a CLIP / SigLIP checkpoint), in eval mode."""
    directory = resolve_model_source(source)
    model_type = model_type_of(directory, str(source))
    if model_type not in kinds:
        raise ModelLoadError(source, f"is a {model_type!r} model; an encoder part must be one of {', '.join(kinds)}")
    model_class = _VISION_TOWERS.get(model_type, AutoModel)
    model, missing = _from_pretrained(model_class, directory, str(source))
    _refuse_missing(source, [key for key in missing if _UNUSED_WEIGHT not in key])
    return model


def load_gpt2_decoder(source: str | Path, *, cross_attention: bool) -> GPT2LMHeadModel:
    """A GPT-2-family LM; with ``cross_attention`` its new cross-attention layers start from GPT-2's initialisation."""
    directory = resolve_model_source(source)
    model_type = model_type_of(directory, str(source))
    if model_type not in DECODER_TYPES:
        raise ModelLoadError(source, f"is a {model_type!r} model; a decoder part must be a GPT-2-family LM")
    extra = {"add_cross_attention": True} if cross_attention else {}
    model, missing = _from_pretrained(GPT2LMHeadModel, directory, str(source), **extra)
    _refuse_missing(source, [key for key in missing if not any(part in key for part in _CROSS_ATTENTION)])
    return model  # type: ignore[return-value]


def part_preprocessing(source: str | Path) -> Preprocessing:
    """The preprocessing of an encoder part: its own image processor's size, mean and std."""
    return Preprocessing.load(resolve_model_source(source))


def _from_pretrained(
    model_class: Any, directory: Path, source: str, **config_overrides: Any
) -> tuple[PreTrainedModel, list[str]]:
    if not (directory / "model.safetensors").is_file() and not (directory / "model.safetensors.index.json").is_file():
        raise ModelLoadError(source, "no model.safetensors: only safetensors weights are loaded, never pickles")
    # transformers' load report would list the layers a part lacks by design (GPT-2's new cross-attention) and the
    # ones left behind (CLIP's text tower) as problems; the callers check what is missing themselves.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(
            directory, use_safetensors=True, local_files_only=True, output_loading_info=True, **config_overrides
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ModelLoadError(source, first_line(error)) from None
    finally:
        hf_logging.set_verbosity(previous)
    if info["mismatched_keys"]:
        raise ModelLoadError(source, f"weight shapes do not match its config.json ({len(info['mismatched_keys'])})")
    return model.eval(), sorted(info["missing_keys"])


def _refuse_missing(source: str | Path, missing: list[str]) -> None:
    # A part with weights missing would start partly random while claiming to be pretrained.
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelLoadError(source, f"lacks {len(missing)} pretrained tensors ({shown})")
