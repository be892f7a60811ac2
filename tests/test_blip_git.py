"""BLIP and GIT checkpoints in the hub layout: loading, decoding exactly as transformers' generate, prompts,
teacher forcing, saving back to the hub layout, parameter groups and attention maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor

from _data import real_photos
from _families import (
    check_batched_equals_one_at_a_time,
    check_beam_finds_brute_force_best,
    check_steps_equal_teacher_forcing,
)
from _hub_models import hf_class, hub_layout
from captionkit import Captioner
from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import ConfigError, InputError, ModelLoadError
from captionkit.models.base import CaptionModel
from captionkit.models.blip import BlipModel
from captionkit.models.git import GitModel
from captionkit.models.registry import create_model
from captionkit.text.styles import add_style_tokens

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ("blip", "git")
PHOTOS = real_photos(4)


@pytest.fixture(scope="module", params=[(family, legacy) for family in FAMILIES for legacy in (False, True)])
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    family, legacy = request.param
    directory = tmp_path_factory.mktemp(f"{family}-{'v4' if legacy else 'v5'}")
    hub_layout(family, directory, legacy)
    return family, directory


def _pixels(captioner: Captioner) -> torch.Tensor:
    return torch.from_numpy(captioner.preprocessing(captioner.load_images(PHOTOS)))


def _generated(sequences: torch.Tensor, skip: int, eos: int) -> list[list[int]]:
    """transformers' output rows without the first ``skip`` tokens (start + prompt) and from the first eos on (the
    padding after it); a row without eos ran to max_new_tokens."""
    rows = sequences[:, skip:].tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def test_captioner_loads_the_hub_layout(checkpoint: tuple[str, Path]) -> None:
    family, directory = checkpoint
    captioner = Captioner.from_pretrained(directory, device="cpu")
    assert type(captioner.model) is {"blip": BlipModel, "git": GitModel}[family]
    tokenizer = captioner.tokenizer.hf
    start = tokenizer.convert_tokens_to_ids("[DEC]" if family == "blip" else "[CLS]")
    assert (captioner.model.bos_token_id, captioner.model.eos_token_id) == (start, tokenizer.sep_token_id)
    # The pixels are the checkpoint's own image processor's, on real photos.
    expected = AutoImageProcessor.from_pretrained(str(directory), use_fast=False)(
        captioner.load_images(PHOTOS), return_tensors="np"
    )
    np.testing.assert_allclose(_pixels(captioner).numpy(), expected["pixel_values"], rtol=0, atol=1e-6)


def test_greedy_and_beam_search_are_token_identical_to_generate(checkpoint: tuple[str, Path]) -> None:
    _, directory = checkpoint
    captioner = Captioner.from_pretrained(directory, device="cpu")
    model, pixels = captioner.model, _pixels(captioner)
    eos = model.eos_token_id
    with torch.no_grad():
        greedy = model.hf.generate(pixel_values=pixels, max_new_tokens=10)
        beam = model.hf.generate(
            pixel_values=pixels,
            max_new_tokens=10,
            num_beams=4,
            num_return_sequences=3,
            output_scores=True,
            return_dict_in_generate=True,
        )
    ours = generate(model, pixels, config=DecodingConfig(max_new_tokens=10))
    assert [found[0].token_ids for found in ours] == _generated(greedy, 1, eos)
    assert len({tuple(found[0].token_ids) for found in ours}) > 1  # the photos get different captions
    config = DecodingConfig(max_new_tokens=10, num_beams=4, num_return_sequences=3)
    ours = generate(model, pixels, config=config)
    assert [h.token_ids for found in ours for h in found] == _generated(beam.sequences, 1, eos)
    scores = torch.tensor([h.score for found in ours for h in found])
    torch.testing.assert_close(scores, beam.sequences_scores, rtol=0, atol=1e-5)


def test_blip_continues_a_prompt_as_generate_does(tmp_path: Path) -> None:
    hub_layout("blip", tmp_path)
    captioner = Captioner.from_pretrained(tmp_path, device="cpu")
    model, pixels = captioner.model, _pixels(captioner)
    # BlipProcessor's input: [CLS] prompt [SEP]; generate swaps [CLS] for [DEC] and drops the [SEP].
    prompt = captioner.tokenizer.hf("a photography of", return_tensors="pt").input_ids.repeat(len(PHOTOS), 1)
    with torch.no_grad():
        expected = model.hf.generate(pixel_values=pixels, input_ids=prompt, max_new_tokens=8, num_beams=3)
    results = captioner.caption(PHOTOS, prompt="a photography of", num_beams=3, max_new_tokens=8)
    skip = prompt.shape[1] - 1  # [DEC] and the three prompt words
    assert [r.captions[0].token_ids for r in results] == _generated(expected, skip, model.eos_token_id)
    unprompted = captioner.caption(PHOTOS, num_beams=3, max_new_tokens=8)
    assert [r.caption for r in results] != [r.caption for r in unprompted]


def test_teacher_forcing_is_transformers_forward(checkpoint: tuple[str, Path]) -> None:
    _, directory = checkpoint
    model = Captioner.from_pretrained(directory, device="cpu").model
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    input_ids = torch.randint(5, model.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    input_ids[:, 0] = model.bos_token_id
    attention_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        ours = model(pixels, input_ids, attention_mask)
        theirs = model.hf(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask).logits
    assert ours.shape == (2, 6, model.vocab_size)
    # GIT's logits cover the image prefix too; the text positions are the last six. Padded positions are free.
    theirs = theirs[:, -6:]
    torch.testing.assert_close(ours[attention_mask.bool()], theirs[attention_mask.bool()], rtol=0, atol=1e-5)


def _peaked(family: str, vocab_size: int) -> CaptionModel:
    torch.manual_seed(0)
    model = create_model(family, "tiny", vocab_size=vocab_size)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_and_beam_search_follow_the_engine_contract(family: str) -> None:
    model = _peaked(family, 5)
    check_steps_equal_teacher_forcing(model)
    check_beam_finds_brute_force_best(model)


@pytest.mark.parametrize("setting", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_decoding_and_seeded_sampling_equal_one_image_at_a_time(family: str, setting: str) -> None:
    # Sampling is the engine's (temperature, top-k, top-p warping, one generator per image) as for every family.
    check_batched_equals_one_at_a_time(_peaked(family, 16), setting)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_model_keeps_the_hub_layout(family: str, tmp_path: Path) -> None:
    model = hub_layout(family, tmp_path / "hub")
    model.save_pretrained(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["captionkit"]["family"] == family
    plain = hf_class(family).from_pretrained(tmp_path / "run").eval()  # plain transformers
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(
            plain.generate(pixel_values=pixels, max_new_tokens=6),
            model.hf.generate(pixel_values=pixels, max_new_tokens=6),
        )
    reloaded = type(model).from_pretrained(tmp_path / "run")
    assert reloaded.config == model.config


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_groups_split_every_weight_once(family: str) -> None:
    model = create_model(family, "tiny")
    groups = model.parameter_groups()
    expected = {
        "blip": ["encoder", "embeddings", "cross_attention", "decoder"],
        "git": ["encoder", "embeddings", "decoder"],
    }
    assert list(groups) == expected[family]
    names = [name for group in groups.values() for name in group]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters()) and len(names) == len(set(names))
    # With the encoder group frozen, encode() builds no graph: it is all that encode runs.
    parameters = dict(model.named_parameters())
    for name in groups["encoder"]:
        parameters[name].requires_grad_(False)
    assert not model.encode(torch.randn(1, 3, 32, 32)).tokens.requires_grad


def test_blip_attention_maps_and_git_refuses_them(tmp_path: Path) -> None:
    hub_layout("blip", tmp_path / "blip")
    hub_layout("git", tmp_path / "git")
    blip = Captioner.from_pretrained(tmp_path / "blip", device="cpu")
    found = blip.caption(PHOTOS[:2], attention=True, num_beams=2, max_new_tokens=6)
    for result in found:
        maps = result.captions[0].attention
        assert maps.shape == (len(result.captions[0].token_ids), 4, 4)
        np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=0, atol=1e-5)
    # With a prompt, token k's map is read after [DEC], the prompt and the caption's first k tokens.
    (prompted,) = blip.caption(PHOTOS[:1], prompt="a photography of", attention=True, num_beams=2, max_new_tokens=5)
    caption, prompt = prompted.captions[0], blip.tokenizer.encode("a photography of")
    input_ids = torch.tensor([[blip.model.bos_token_id, *prompt, *caption.token_ids]])
    with torch.no_grad():
        expected = blip.model.attention_maps(_pixels(blip)[:1], input_ids)[0]
    span = slice(len(prompt), len(prompt) + len(caption.token_ids))
    np.testing.assert_allclose(caption.attention, expected[span].numpy(), rtol=0, atol=1e-6)
    git = Captioner.from_pretrained(tmp_path / "git", device="cpu")
    with pytest.raises(InputError) as raised:
        git.caption(PHOTOS[:1], attention=True)
    assert str(raised.value) == (
        "attention: the git family has no spatial attention to show (maps come from blip, cnn-lstm-attention and "
        "vit-gpt2)"
    )


def test_a_directory_of_another_model_type_is_one_clear_error(tmp_path: Path) -> None:
    hub_layout("git", tmp_path)
    with pytest.raises(ModelLoadError) as raised:
        BlipModel.from_pretrained(tmp_path)
    assert str(raised.value) == f"{tmp_path}: model_type is 'git'; expected 'blip'"
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"architectures": ["GitForVideoClassification"]}))
    with pytest.raises(ModelLoadError) as raised:
        GitModel.from_pretrained(tmp_path)
    assert str(raised.value) == f"{tmp_path}: is a GitForVideoClassification; captioning needs GitForCausalLM"
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(tmp_path / "model.safetensors")
    save_file(
        {name: tensor for name, tensor in weights.items() if name != "output.bias"}, tmp_path / "model.safetensors"
    )
    with pytest.raises(ModelLoadError) as raised:
        GitModel.from_pretrained(tmp_path)
    assert str(raised.value) == f"{tmp_path}: weights do not match the config (1 tensors: output.bias)"
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as raised:
        GitModel.from_pretrained(tmp_path)
    assert str(raised.value) == f"{tmp_path}: no model.safetensors: only safetensors weights are loaded, never pickles"


@pytest.mark.parametrize("family", FAMILIES)
def test_style_tokens_grow_a_hub_checkpoint(family: str, tmp_path: Path) -> None:
    hub_layout(family, tmp_path / "hub")
    captioner = Captioner.from_pretrained(tmp_path / "hub", device="cpu")
    model, old = captioner.model, captioner.model.vocab_size
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    input_ids = torch.tensor([[model.bos_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        before = model(pixels, input_ids)
    styles = add_style_tokens(captioner.tokenizer)
    assert sorted(styles.values()) == [old, old + 1]
    model.resize_vocabulary(captioner.tokenizer.vocab_size)
    with torch.no_grad():
        after = model(pixels, input_ids)
    assert after.shape == (2, 4, old + 2) and torch.equal(after[..., :old], before)  # old tokens' logits unchanged
    captioner.save_pretrained(tmp_path / "run")
    assert hf_class(family).from_pretrained(tmp_path / "run").config.get_text_config().vocab_size == old + 2
    styled = Captioner.from_pretrained(tmp_path / "run", device="cpu")
    assert styled.styles == ["neutral", "positive", "negative"]
    (result,) = styled.caption(PHOTOS[:1], style="positive", num_beams=2, max_new_tokens=5)
    assert result.captions[0].token_ids and all(t < old + 2 for t in result.captions[0].token_ids)


def test_a_processor_config_without_image_settings_is_one_clear_error(tmp_path: Path) -> None:
    hub_layout("blip", tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "BlipProcessor"}))
    with pytest.raises(ConfigError) as raised:
        Captioner.from_pretrained(tmp_path, device="cpu")
    assert str(raised.value) == f"{tmp_path / 'processor_config.json'}: has no image_processor settings"
