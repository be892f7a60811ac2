"""Tiny random BLIP and GIT checkpoints saved as their hub repositories store them (tests/test_blip_git.py).

``hub_layout(family, directory, legacy)`` writes what ``Salesforce/blip-image-captioning-base`` (BLIP) or
``microsoft/git-base-coco`` (GIT) hold: config.json, generation_config.json, model.safetensors, a BERT WordPiece
tokenizer and the image processor's settings. ``legacy=False`` is what transformers 5 saves (processor_config.json,
tokenizer.json only); ``legacy=True`` is the transformers-4 field set those repositories were uploaded with
(``torch_dtype``, a flat preprocessor_config.json, vocab.txt + special_tokens_map.json, no tokenizer.json).
Decoder weights are redrawn large, so captions differ between images and near-ties are rare.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertTokenizerFast, BlipForConditionalGeneration, GitForCausalLM

from _helpers import tiny_model
from captionkit.models.blip import BlipModel
from captionkit.models.git import GitModel

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "photography",
    "picture",
    "dog",
    "cat",
    "man",
    "woman",
    "grass",
    "street",
    "red",
    "blue",
    "sitting",
    "standing",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The processors' own settings at the tiny image size (32 px): BLIP's (bicubic, CLIP mean and std) and GIT's CLIP
# processor.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
PROCESSORS = {
    "blip": {"image_processor_type": "BlipImageProcessor", "size": {"height": 32, "width": 32}},
    # microsoft/git-base-coco's settings at 32 px: the shorter edge resized, then a centre crop.
    "git": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
    },
}
# A sample of the generic fields transformers 4 wrote into each sub-config.
TRANSFORMERS_4_FIELDS = {
    "_name_or_path": "",
    "architectures": None,
    "chunk_size_feed_forward": 0,
    "do_sample": False,
    "early_stopping": False,
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "pruned_heads": {},
    "return_dict": True,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "use_bfloat16": False,
}
PROCESSOR_CLASSES = {"blip": "BlipProcessor", "git": "GitProcessor"}


def tiny_tokenizer(directory: Path, family: str) -> BertTokenizerFast:
    """An uncased WordPiece tokenizer over a few caption words; BLIP's adds its decoder start token ``[DEC]``."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(str(vocab), do_lower_case=True)
    if family == "blip":
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def _peaked_model(family: str, tokenizer: BertTokenizerFast, seed: int = 0) -> BlipModel | GitModel:
    """A tiny eval-mode model with the tokenizer's ids (BLIP: bos [DEC], eos [SEP]; GIT: bos [CLS], eos [SEP])."""
    bos = tokenizer.bos_token_id if family == "blip" else tokenizer.cls_token_id
    ids = {"bos_token_id": bos, "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = tiny_model(family, seed, vocab_size=len(tokenizer), **ids)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3 if "vision" not in name and "image_encoder" not in name else 0.1)
    return model.eval()  # type: ignore[return-value]


def hub_layout(family: str, directory: Path, legacy: bool = False, seed: int = 0) -> BlipModel | GitModel:
    """Write a tiny ``family`` checkpoint into ``directory`` as the hub stores it; returns the model."""
    tokenizer = tiny_tokenizer(directory, family)
    model = _peaked_model(family, tokenizer, seed)
    model.hf.save_pretrained(directory)  # plain transformers, no captionkit metadata
    tokenizer.save_pretrained(str(directory))
    processor = PROCESSORS[family] | {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
    }
    if legacy:
        _as_transformers_4(directory, family, processor)
    else:
        (directory / "vocab.txt").unlink()
        settings = {"image_processor": processor, "processor_class": PROCESSOR_CLASSES[family]}
        (directory / "processor_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return model


def _as_transformers_4(directory: Path, family: str, processor: dict) -> None:
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["torch_dtype"] = config.pop("dtype")
    config["transformers_version"] = "4.26.0.dev0" if family == "blip" else "4.25.0.dev0"
    # transformers 4 wrote every sub-config with PretrainedConfig's generic fields, generation settings included, and
    # these repositories hold no generation_config.json.
    config = TRANSFORMERS_4_FIELDS | config  # GIT's text settings are the top level
    for key in ("text_config", "vision_config"):
        if key in config:
            config[key] = TRANSFORMERS_4_FIELDS | config[key]
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "generation_config.json").unlink()
    processor = processor | {"processor_class": PROCESSOR_CLASSES[family]}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")
    specials = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]"}
    specials |= {"unk_token": "[UNK]"} | ({"bos_token": "[DEC]"} if family == "blip" else {})
    (directory / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    tokenizer_config = {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512} | specials
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    if family == "blip":
        added = {"[DEC]": len(SPECIALS) + len(WORDS)}
        (directory / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    (directory / "tokenizer.json").unlink()


def hf_class(family: str) -> type:
    return BlipForConditionalGeneration if family == "blip" else GitForCausalLM
