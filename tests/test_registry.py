"""The model registry: families and presets, creation, the tokenizer each family reads, loading by config.json."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from _families import peaked, pixels
from _helpers import FAMILIES as SWEEP
from captionkit.api import Captioner
from captionkit.errors import ConfigError, ModelLoadError
from captionkit.images import Preprocessing
from captionkit.models.family import Family
from captionkit.models.registry import (
    FAMILIES,
    create_model,
    families_with_attention_maps,
    family_of,
    hub_layout_families,
    hub_model_types,
    list_models,
    load_model,
    preprocessing_for,
    register_model,
    train_tokenizer,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["a large red circle left of a small blue square", "a small green triangle", "a red square above a circle"]


def test_list_models_names_every_family_and_its_presets() -> None:
    models = list_models()
    # Declared module by module in captionkit.models.families, in module name order.
    assert list(models) == ["blip", "cnn-lstm", "cnn-lstm-attention", "git", "prefix-gpt2", "vit-gpt2"]
    for family, presets in models.items():
        # The registry's list is the module's own (the registry does not import the module to answer).
        module = FAMILIES[family].load_class().__module__
        assert presets == tuple(importlib.import_module(module).PRESETS)
        assert {"tiny", "base"} <= set(presets)


def test_list_models_imports_no_model_module() -> None:
    # The declarations alone answer: a model module (and transformers' model code) loads only when a model is built.
    code = (
        "import sys; from captionkit.models.registry import FAMILIES, list_models; list_models(); "
        "print(sorted({f.module for f in FAMILIES.values()} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", SWEEP)
def test_each_declaration_says_what_its_models_do(name: str) -> None:
    # The registry answers from the declarations (attention.py's message, benchmark's FLOP shape); the model
    # classes must agree with them.
    family = FAMILIES[name]
    assert family.attention_maps is family.load_class().has_attention
    reads_a_prefix = {"git", "prefix-gpt2"}
    assert family.image_prefix is (name in reads_a_prefix)


def test_the_registry_lists_the_families_with_maps_and_those_in_the_hub_layout() -> None:
    assert families_with_attention_maps() == ["blip", "cnn-lstm-attention", "vit-gpt2"]
    assert hub_layout_families() == ["blip", "git", "vit-gpt2"]


def test_each_declaration_names_its_class_and_the_hub_model_type_it_loads() -> None:
    assert hub_model_types() == {"blip": "blip", "git": "git", "vision-encoder-decoder": "vit-gpt2"}
    for name, family in FAMILIES.items():
        assert family.load_class().family == name
        assert (family.from_parts is not None) == hasattr(family.load_class(), "from_parts")


def test_a_second_family_of_the_same_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^model family 'git' is already registered$"):
        register_model(FAMILIES["git"])
    with pytest.raises(ValueError, match=r"^tokenizer kind must be one of \('bpe', 'word'\), got 'chars'$"):
        Family("toy", "captionkit.models.git", "GitModel", ("tiny",), "chars", "a toy")


@pytest.mark.parametrize("family", SWEEP)
def test_create_model_from_a_name_and_overrides(family: str) -> None:
    model = create_model(f"{family}/tiny", vocab_size=40, bos_token_id=5, eos_token_id=6, pad_token_id=7)
    assert (model.family, model.vocab_size, model.bos_token_id, model.eos_token_id, model.pad_token_id) == (
        family,
        40,
        5,
        6,
        7,
    )
    same = create_model(family, "tiny", vocab_size=40, bos_token_id=5, eos_token_id=6, pad_token_id=7)
    assert same.config == model.config
    family_class = FAMILIES[family].load_class()
    assert type(model) is family_class and family_class.family == family


@pytest.mark.parametrize("family", SWEEP)
def test_the_trainers_call_takes_the_vocabulary_from_the_tokenizer(family: str) -> None:
    tokenizer = train_tokenizer(family, CAPTIONS * 3, 300)
    model = create_model(family, "tiny", tokenizer, "random", **{})
    assert model.vocab_size == tokenizer.vocab_size
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    groups = model.parameter_groups()
    names = [name for group in groups.values() for name in group]
    if groups:  # groups do not overlap and cover every parameter; "encoder" is all that encode() runs
        assert sorted(names) == sorted(name for name, _ in model.named_parameters())
        assert len(names) == len(set(names))


def test_families_read_their_own_tokenizer_kind() -> None:
    words = train_tokenizer("cnn-lstm", CAPTIONS, 10)
    # 6 most frequent words + the 4 specials; every word a single token.
    assert words.vocab_size == 10
    assert words.hf.convert_ids_to_tokens(words.encode("a red circle")) == ["a", "red", "circle"]
    bpe = train_tokenizer("prefix-gpt2", CAPTIONS * 3, 300)
    assert bpe.hf.convert_ids_to_tokens(bpe.encode("a red"))[0].startswith("Ġ")  # byte-level BPE


@pytest.mark.parametrize(
    ("call", "source", "reason"),
    [
        (lambda: create_model("rnn"), "model.family", "unknown model family 'rnn'"),
        (lambda: create_model("cnn-lstm", "huge"), "model.preset", "unknown cnn-lstm preset 'huge'"),
        (lambda: create_model("cnn-lstm/huge"), "model.preset", "unknown cnn-lstm preset 'huge'"),
        (lambda: create_model("cnn-lstm", position_init="sincos"), "model.position_init", "needs a ViT encoder"),
        (lambda: create_model("prefix-gpt2", position_init="zeros"), "model.position_init", "unknown 'zeros'"),
        (
            lambda: create_model("prefix-gpt2", mapper_layer=2),
            "model.overrides.mapper_layer",
            "unknown prefix-gpt2 config",
        ),
        (lambda: train_tokenizer("rnn", CAPTIONS, 10), "model.family", "unknown model family"),
    ],
)
def test_bad_requests_are_config_errors(call, source: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        call()
    assert raised.value.source == source
    assert reason in raised.value.reason


def test_sincos_positions_start_the_prefix_encoder() -> None:
    model = create_model("prefix-gpt2", "tiny", position_init="sincos")
    table = model.encoder.embeddings.position_embeddings[0]
    assert torch.equal(table[0], torch.zeros(64))
    # Patch (0, 0): sin 0 = 0 and cos 0 = 1 in both the row and the column halves.
    assert torch.equal(table[1], torch.tensor(([0.0] * 16 + [1.0] * 16) * 2))


# --- saved checkpoints: the family comes from config.json


@pytest.mark.parametrize("family", SWEEP)
def test_captioner_round_trip_picks_the_family(family: str, tmp_path: Path) -> None:
    tokenizer = train_tokenizer(family, CAPTIONS * 3, 40)
    torch.manual_seed(0)
    model = create_model(family, "tiny", tokenizer)
    captioner = Captioner(model, tokenizer, preprocessing_for(model), device="cpu")
    captioner.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["captionkit"]["family"] == family
    assert {"model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in tmp_path.iterdir()}
    assert family_of(tmp_path) == family
    assert type(load_model(tmp_path)) is type(model)

    loaded = Captioner.from_pretrained(tmp_path, device="cpu")
    assert type(loaded.model) is type(model)
    assert loaded.preprocessing == Preprocessing.for_size(32, 32)
    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "navy", "white")]
    ours = [(r.caption, r.score) for r in captioner.caption(images, num_beams=2, max_new_tokens=6)]
    assert [(r.caption, r.score) for r in loaded.caption(images, num_beams=2, max_new_tokens=6)] == ours


def test_family_of_reads_the_metadata_and_refuses_what_it_cannot_name(tmp_path: Path) -> None:
    peaked("cnn-lstm-attention").save_pretrained(tmp_path / "lstm")
    assert family_of(tmp_path / "lstm") == "cnn-lstm-attention"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "vision-encoder-decoder"}))
    assert family_of(tmp_path / "hf") == "vit-gpt2"  # a plain transformers checkpoint
    cases = {
        "none": None,
        "unknown": json.dumps({"captionkit": {"family": "rnn"}}),
        "list": "[1, 2]",
        "broken": "{",
    }
    reasons = {
        "none": "no config.json",
        "unknown": "unknown model family 'rnn'",
        "list": "is not a JSON object",
        "broken": "invalid JSON",
    }
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        if text is not None:
            (tmp_path / name / "config.json").write_text(text)
        with pytest.raises(ModelLoadError, match=reasons[name]):
            load_model(tmp_path / name)


def test_a_native_checkpoint_with_a_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    peaked("prefix-gpt2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["prefix_length"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"bad config\.json field prefix_length: must be at least 1"):
        load_model(tmp_path)
    del config["bos_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="integer bos/eos/pad token ids"):
        load_model(tmp_path)


def test_a_loaded_model_decodes_what_the_saved_one_did(tmp_path: Path) -> None:
    from captionkit.decoding import DecodingConfig, generate

    model = peaked("cnn-lstm", seed=1)
    model.save_pretrained(tmp_path)
    config = DecodingConfig(max_new_tokens=6, do_sample=True, num_return_sequences=2, seed=3)
    assert generate(load_model(tmp_path), pixels(2), config=config) == generate(model, pixels(2), config=config)
