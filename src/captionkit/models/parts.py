"""Pretrained parts: a vision encoder or a GPT-2 decoder from a hub id or a local directory in the hub layout.

Each part is read the way its hub repository stores it (``config.json``, ``model.safetensors``, the image
processor or tokenizer files), as transformers 4 wrote it or as transformers 5 does. Only safetensors weights are
read, never remote code. A family builds its new captioner around these parts and copies their weights unchanged;
the layers a part lacks (GPT-2's cross-attention) start from transformers' own initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, CLIPVisionModel, GPT2LMHeadModel, PreTrainedModel, SiglipVisionModel

from captionkit.errors import ModelLoadError
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.config_file import CONFIG_FILE, read_config_json
from captionkit.models.hf_checkpoint import load_safetensors_model

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
# Weights a part may lack without harm: a ViT's pooling head, which no captioner here uses. Parts load without
# transformers' load report, which would list these (and GPT-2's new cross-attention, CLIP's text tower left behind)
# as problems.
_UNUSED_WEIGHT = "pooler."
# A new captioner is built in fp32 (train.precision autocasts): a part stored in fp16 or bf16 (config.json's
# torch_dtype, or none, which transformers reads as "as stored") would otherwise come in half and meet fp32 layers
# around it ("mat1 and mat2 must have the same dtype"). The upcast is exact, so every weight is kept unchanged.
PART_DTYPE = torch.float32
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
    return load_safetensors_model(
        model_class, directory, str(source), may_lack=(_UNUSED_WEIGHT,), report=False, dtype=PART_DTYPE
    )


def check_decoder_part(source: str | Path) -> Path:
    """The directory of ``source``, refused unless it holds a GPT-2-family LM (before its tokenizer is read, whose
    failure on another kind of model would not say what is wrong)."""
    directory = resolve_model_source(source)
    model_type = model_type_of(directory, str(source))
    if model_type not in DECODER_TYPES:
        raise ModelLoadError(source, f"is a {model_type!r} model; a decoder part must be a GPT-2-family LM")
    return directory


def load_gpt2_decoder(source: str | Path, *, cross_attention: bool) -> GPT2LMHeadModel:
    """A GPT-2-family LM; with ``cross_attention`` its new cross-attention layers start from GPT-2's initialisation."""
    directory = check_decoder_part(source)
    extra = {"add_cross_attention": True} if cross_attention else {}
    model = load_safetensors_model(
        GPT2LMHeadModel, directory, str(source), may_lack=_CROSS_ATTENTION, report=False, dtype=PART_DTYPE, **extra
    )
    return model  # type: ignore[return-value]


def decoder_token_ids(language: GPT2LMHeadModel, source: str | Path) -> dict[str, int]:
    """The bos, eos and pad ids of a GPT-2 part, each a row of its vocabulary; pad is eos when it has none (GPT-2).

    transformers fills a config.json that lacks them with gpt2's 50256, which a smaller vocabulary has no row for:
    refused here, naming the part and the field, before a captioner is built around them.
    """
    config = language.config
    eos = config.eos_token_id
    ids = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": eos if config.pad_token_id is None else config.pad_token_id,
    }
    for name, token_id in ids.items():
        if token_id is None:
            raise ModelLoadError(source, f"config.json names no {name}")
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < config.vocab_size:
            reason = f"{name} {token_id!r} is not a token id in its vocabulary [0, {config.vocab_size})"
            raise ModelLoadError(source, f"{reason}: set it in config.json")
    return ids


def part_preprocessing(source: str | Path) -> Preprocessing:
    """The preprocessing of an encoder part: its own image processor's size, mean and std."""
    return Preprocessing.load(resolve_model_source(source))
