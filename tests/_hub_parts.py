"""Tiny random pretrained parts, saved exactly as their hub repositories store them.

Each builder writes one part into a directory, in one of two layouts:

* ``"t4"``: the files the hub holds today, written by transformers 4 (hand-written config fields as the hub repositories
  have them, weights without a head, ``vocab.json`` + ``merges.txt`` for GPT-2, a ``ViTFeatureExtractor`` file);
* ``"t5"``: what ``save_pretrained`` of the installed transformers (5.x) writes for the same part.

The architectures are tiny (seconds to build and train) and the weights random but seeded, so a test can compare a
saved run's tensors with the part's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoImageProcessor, AutoTokenizer, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

LAYOUTS = ("t4", "t5")
ENDOFTEXT = "<|endoftext|>"
# Words the tiny byte-level BPE learns merges from; any text still tokenizes (byte fallback).
_CORPUS = [
    "a man riding a wave on top of a surfboard",
    "a dog runs through the grass with a ball",
    "two children are playing in the water at the beach",
    "a group of people standing around a kitchen",
    "a black and white cat sitting on a red couch",
]
# google/vit-base-patch16-224-in21k, config.json and preprocessor_config.json (sizes shrunk).
VIT_T4_CONFIG: dict[str, Any] = {
    "architectures": ["ViTModel"],
    "attention_probs_dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 48,
    "image_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "layer_norm_eps": 1e-12,
    "model_type": "vit",
    "num_attention_heads": 2,
    "num_channels": 3,
    "num_hidden_layers": 2,
    "patch_size": 8,
    "qkv_bias": True,
    "transformers_version": "4.13.0.dev0",
}
VIT_T4_PREPROCESSOR: dict[str, Any] = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 32,
}
# gpt2, config.json (sizes shrunk; bos = eos = the vocabulary's <|endoftext|>, filled in by save_gpt2).
GPT2_T4_CONFIG: dict[str, Any] = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 64,
    "n_embd": 32,
    "n_head": 2,
    "n_layer": 2,
    "n_positions": 64,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
}
GPT2_T4_TOKENIZER_CONFIG: dict[str, Any] = {"model_max_length": 64}
# config.json fields that describe the file, not the architecture.
_FILE_ONLY = ("architectures", "transformers_version")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(path), metadata={"format": "pt"})


def _image_part_files(directory: Path, layout: str, config: dict[str, Any], preprocessor: dict[str, Any]) -> Path:
    """An image part's config.json and image processor settings, after transformers saved its weights: "t4" as the
    hub repository holds them (its config.json, its feature extractor file), or as transformers 5 rewrites them."""
    _write_json(directory / "preprocessor_config.json", preprocessor)
    if layout == "t4":
        _write_json(directory / "config.json", config)
    else:
        AutoImageProcessor.from_pretrained(directory).save_pretrained(directory)
    return directory


# The call settings that transformers 4's fast (torchvision) processors write into their files, as 4.57 does.
_FAST_NONE_SETTINGS = ("crop_size", "device", "disable_grouping", "do_center_crop", "do_convert_rgb", "do_pad")
FAST_CALL_SETTINGS: dict[str, Any] = dict.fromkeys(
    [*_FAST_NONE_SETTINGS, "input_data_format", "pad_size", "return_tensors"]
) | {"data_format": "channels_first"}

_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_CROP_224 = {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True}
# preprocessor_config.json as transformers 4.57 saves each fast processor with its defaults (use_fast=True): the
# hub holds such files. transformers 5 saves the same processors under their plain names (ViTImageProcessor).
FAST_FILES: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "ViT": ({"default_to_square": True, "resample": 2, "size": {"height": 224, "width": 224}}, (224, 224)),
    "CLIP": ({"default_to_square": False, "resample": 3, "size": {"shortest_edge": 224}} | _CROP_224, (224, 224)),
    "Bit": ({"default_to_square": False, "resample": 3, "size": {"shortest_edge": 224}} | _CROP_224, (224, 224)),
    "DeiT": (
        {"default_to_square": True, "resample": 3, "size": {"height": 256, "width": 256}}
        | _CROP_224
        | {"do_convert_rgb": None},
        (224, 224),
    ),
    "Beit": (
        {"crop_size": {"height": 224, "width": 224}, "default_to_square": True, "do_center_crop": False}
        | {"do_reduce_labels": False, "resample": 3, "size": {"height": 224, "width": 224}},
        (224, 224),
    ),
    "Siglip": ({"default_to_square": False, "resample": 3, "size": {"height": 224, "width": 224}}, (224, 224)),
    "ConvNext": (
        {"crop_pct": 0.875, "default_to_square": False, "resample": 2, "size": {"shortest_edge": 384}},
        (384, 384),
    ),
    "Blip": (
        {"default_to_square": True, "do_convert_rgb": True, "resample": 3, "size": {"height": 384, "width": 384}},
        (384, 384),
    ),
}


def fast_processor_file(name: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """``{name}ImageProcessorFast``'s file as transformers 4.57 writes it, and the pixel size it gives."""
    settings, size = FAST_FILES[name]
    clip_statistics = name in ("CLIP", "Bit", "Blip")
    mean, std = (_CLIP_MEAN, _CLIP_STD) if clip_statistics else ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    common = {"do_normalize": True, "do_rescale": True, "do_resize": True, "rescale_factor": 1 / 255}
    named = {"image_mean": mean, "image_processor_type": f"{name}ImageProcessorFast", "image_std": std}
    return FAST_CALL_SETTINGS | common | named | settings, size


def resave_as_fast_processor(directory: Path) -> Path:
    """Rewrite a part's image processor file as transformers 4.57 saves the same processor loaded with ``use_fast=True``
    (torchvision installed): named ``...ImageProcessorFast``, with ``default_to_square`` and the call settings above.
    Returns the file."""
    processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    settings = processor.to_dict()  # transformers 5's form: the plain name, no call settings
    fast = {
        "image_processor_type": f"{settings['image_processor_type']}Fast",
        "default_to_square": processor.default_to_square,
    }
    path = directory / "preprocessor_config.json"
    _write_json(path, FAST_CALL_SETTINGS | settings | fast)
    return path


# google/vit-base-patch16-224 (fine-tuned on ImageNet-1k): an image classifier, its labels in config.json.
VIT_CLASSIFIER_T4_CONFIG: dict[str, Any] = VIT_T4_CONFIG | {
    "architectures": ["ViTForImageClassification"],
    "id2label": {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus"},
    "label2id": {"tench, Tinca tinca": 0, "goldfish, Carassius auratus": 1},
}


def save_vit(directory: Path, layout: str = "t4", seed: int = 0, classifier: bool = False) -> Path:
    """A tiny ViT: google/vit-base-patch16-224-in21k's layout (ViTModel weights with the pooler), or with
    ``classifier`` google/vit-base-patch16-224's (ViTForImageClassification: "vit."-prefixed weights, no pooler, an
    ImageNet head)."""
    from transformers import ViTForImageClassification

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hub_config = VIT_CLASSIFIER_T4_CONFIG if classifier else VIT_T4_CONFIG
    config = ViTConfig(**{key: value for key, value in hub_config.items() if key not in _FILE_ONLY})
    # transformers 5 saves tensors under the names the hub's files use (its modules are named otherwise).
    (ViTForImageClassification if classifier else ViTModel)(config).eval().save_pretrained(directory)
    return _image_part_files(directory, layout, hub_config, VIT_T4_PREPROCESSOR)


# openai/clip-vit-base-patch32: config.json (the text and the vision tower; sizes shrunk) and its feature extractor.
_CLIP_TOWER: dict[str, Any] = {
    "attention_dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 48,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
}
CLIP_T4_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 16,
    "text_config": _CLIP_TOWER
    | {"model_type": "clip_text_model", "vocab_size": 99, "max_position_embeddings": 16, "projection_dim": 16}
    | {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
    "vision_config": _CLIP_TOWER
    | {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, "num_channels": 3, "projection_dim": 16},
    "transformers_version": "4.21.3",
}
CLIP_T4_PREPROCESSOR: dict[str, Any] = {
    "crop_size": 32,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 32,
}


def save_clip(directory: Path, layout: str = "t4", seed: int = 0, tokenizer: bool = False) -> Path:
    """A tiny CLIP (openai/clip-vit-base-patch32's layout): both towers' weights, CLIP's feature extractor, and with
    ``tokenizer`` a CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``: lowercase letters, no merges)."""
    from transformers import CLIPConfig, CLIPModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    towers = {key: CLIP_T4_CONFIG[key] for key in ("text_config", "vision_config", "projection_dim")}
    CLIPModel(CLIPConfig(**towers)).eval().save_pretrained(directory)
    _image_part_files(directory, layout, CLIP_T4_CONFIG, CLIP_T4_PREPROCESSOR)
    if tokenizer:
        _write_clip_tokenizer(directory)
    return directory


def _write_clip_tokenizer(directory: Path) -> None:
    """Ids 0 and 1 are the tiny CLIP's bos and eos; every other character maps to eos as CLIP's unknown token."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", ENDOFTEXT, *letters, *(c + "</w>" for c in letters), ".</w>", ",</w>"]
    _write_json(directory / "vocab.json", {token: index for index, token in enumerate(tokens)})
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


# microsoft/resnet-50: config.json (an image classifier; sizes shrunk) and its ConvNeXt feature extractor (the shorter
# edge to 32 / 0.875 = 36 px, then the centre 32 x 32).
RESNET_T4_CONFIG: dict[str, Any] = {
    "architectures": ["ResNetForImageClassification"],
    "depths": [1, 1],
    "downsample_in_first_stage": False,
    "embedding_size": 8,
    "hidden_act": "relu",
    "hidden_sizes": [16, 32],
    "id2label": {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus"},
    "label2id": {"tench, Tinca tinca": 0, "goldfish, Carassius auratus": 1},
    "layer_type": "basic",
    "model_type": "resnet",
    "num_channels": 3,
    "torch_dtype": "float32",
    "transformers_version": "4.18.0.dev0",
}
RESNET_T4_PREPROCESSOR: dict[str, Any] = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 32,
}


def save_resnet(directory: Path, layout: str = "t4", seed: int = 0, layer_type: str = "basic") -> Path:
    """A tiny ResNet (microsoft/resnet-50's layout): ResNetForImageClassification weights, ConvNeXt preprocessing.
    ``layer_type``: "basic" blocks (two 3 x 3 convolutions, as resnet-18/34) or "bottleneck" ones (1 x 1, 3 x 3, 1 x 1
    with a 4x narrower middle, as microsoft/resnet-50 and -101 have)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hub_config = RESNET_T4_CONFIG | {"layer_type": layer_type}
    if layer_type == "bottleneck":  # resnet-50's field set (transformers 4.18 wrote it), the widths shrunk
        hub_config |= {"downsample_in_bottleneck": False, "out_features": None}
    fields = {key: value for key, value in hub_config.items() if key not in (*_FILE_ONLY, "torch_dtype")}
    model = ResNetForImageClassification(ResNetConfig(**fields)).eval()
    with torch.no_grad():  # batch-norm statistics as a trained network has them, not the fresh 0 / 1
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return _image_part_files(directory, layout, hub_config, RESNET_T4_PREPROCESSOR)


def _tokenizer_files(directory: Path) -> int:
    """gpt2's vocab.json + merges.txt (a tiny byte-level BPE) and its tokenizer_config.json; the <|endoftext|> id."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer.model.save(str(directory))
    _write_json(directory / "tokenizer_config.json", GPT2_T4_TOKENIZER_CONFIG)
    return tokenizer.token_to_id(ENDOFTEXT)


def save_gpt2(directory: Path, layout: str = "t4", seed: int = 0) -> Path:
    """A tiny GPT-2 (gpt2's layout): the GPT2Model weights (the LM head is tied), tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    endoftext = _tokenizer_files(directory)
    vocab_size = len(json.loads((directory / "vocab.json").read_text(encoding="utf-8")))
    config = GPT2_T4_CONFIG | {"bos_token_id": endoftext, "eos_token_id": endoftext, "vocab_size": vocab_size}
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in config.items() if k not in _FILE_ONLY})).eval()
    model.save_pretrained(directory)
    if layout == "t4":
        _write_json(directory / "config.json", config)
        generation = {"_from_model_config": True, "bos_token_id": endoftext, "eos_token_id": endoftext}
        _write_json(directory / "generation_config.json", generation | {"transformers_version": "4.26.0.dev0"})
        # gpt2's file holds GPT2Model's tensors: no "transformer." prefix, no LM head (it is the token table).
        weights = {key.removeprefix("transformer."): value for key, value in part_weights(directory).items()}
        _save_weights(directory / "model.safetensors", {k: v for k, v in weights.items() if k != "lm_head.weight"})
    else:
        tokenizer = AutoTokenizer.from_pretrained(directory)  # after config.json, which says that this is GPT-2
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            (directory / name).unlink()
        tokenizer.save_pretrained(directory)
    return directory


def part_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors a part (or run) directory stores, by name."""
    return load_file(str(directory / "model.safetensors"))


# What transformers 4 wrote for every sub-config (nlpconnect/vit-gpt2-image-captioning's config.json has these
# generation and head settings in both its "encoder" and its "decoder").
_T4_COMMON: dict[str, Any] = {
    "bad_words_ids": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "temperature": 1.0,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.23.1",
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def save_vit_gpt2_t4(directory: Path, vit: Path, gpt2: Path) -> Path:
    """A finished ViT-GPT2 captioner as nlpconnect/vit-gpt2-image-captioning stores it (transformers 4.23): the
    token ids in the top-level config and in the decoder's, no generation_config.json, the parts' tokenizer files and
    feature extractor. ``vit`` and ``gpt2`` are "t4" parts (their weights go in unchanged, cross-attention random)."""
    from transformers import VisionEncoderDecoderModel

    encoder, decoder = ViTModel.from_pretrained(vit), GPT2LMHeadModel.from_pretrained(gpt2, add_cross_attention=True)
    VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).save_pretrained(directory)
    (directory / "generation_config.json").unlink()
    endoftext = decoder.config.eos_token_id
    ids = {"bos_token_id": endoftext, "eos_token_id": endoftext, "pad_token_id": endoftext}
    config = {
        "architectures": ["VisionEncoderDecoderModel"],
        "decoder": _T4_COMMON
        | json.loads((gpt2 / "config.json").read_text())
        | ids
        | {"add_cross_attention": True, "is_decoder": True, "decoder_start_token_id": endoftext},
        "decoder_start_token_id": endoftext,
        "encoder": _T4_COMMON | VIT_T4_CONFIG | {"add_cross_attention": False, "is_decoder": False},
        "eos_token_id": endoftext,
        "is_encoder_decoder": True,
        "model_type": "vision-encoder-decoder",
        "pad_token_id": endoftext,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": None,
    }
    _write_json(directory / "config.json", config)
    for name in ("vocab.json", "merges.txt"):
        (directory / name).write_bytes((gpt2 / name).read_bytes())
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    _write_json(directory / "special_tokens_map.json", special)
    # The tokenizer class is named here: config.json's model_type (vision-encoder-decoder) does not imply one.
    tokenizer = {"add_prefix_space": False, "model_max_length": 64, "name_or_path": "gpt2"}
    _write_json(directory / "tokenizer_config.json", tokenizer | special | {"tokenizer_class": "GPT2Tokenizer"})
    _write_json(directory / "preprocessor_config.json", VIT_T4_PREPROCESSOR)
    return directory


def save_vision_transformer(directory: Path, model_type: str, seed: int = 0) -> Path:
    """A tiny DeiT, BEiT, DINOv2 or SigLIP vision model with its hub image processor, saved by transformers 5."""
    import transformers

    classes = {
        "deit": ("DeiTConfig", "DeiTModel", "DeiTImageProcessorPil"),
        "beit": ("BeitConfig", "BeitModel", "BeitImageProcessorPil"),
        "dinov2": ("Dinov2Config", "Dinov2Model", "BitImageProcessorPil"),
        "siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel", "SiglipImageProcessorPil"),
    }
    config, model, processor = (getattr(transformers, name) for name in classes[model_type])
    sizes = {key: VIT_T4_CONFIG[key] for key in ("hidden_size", "intermediate_size", "image_size", "patch_size")}
    torch.manual_seed(seed)
    model(config(**sizes, num_hidden_layers=2, num_attention_heads=2)).eval().save_pretrained(directory)
    side = VIT_T4_CONFIG["image_size"]
    # As the hub repositories store them, scaled down: facebook/dinov2-* resize the shorter edge (256) and crop the
    # centre (224); facebook/deit-*-224 resize to a square (256) and crop; both normalise with ImageNet's mean and
    # std. microsoft/beit-* and google/siglip-* resize straight to the model's size (224), without a crop (mean = std =
    # 0.5).
    crop = {"height": side, "width": side}
    imagenet = {"image_mean": RESNET_T4_PREPROCESSOR["image_mean"], "image_std": RESNET_T4_PREPROCESSOR["image_std"]}
    settings = {
        "deit": {"size": {"height": side + 4, "width": side + 4}, "crop_size": crop} | imagenet,
        "beit": {"size": crop, "do_center_crop": False},
        "dinov2": {"size": {"shortest_edge": side + 4}, "crop_size": crop} | imagenet,
        "siglip_vision_model": {"size": crop},
    }
    processor(**settings[model_type]).save_pretrained(directory)
    return directory
