"""prefix-gpt2 (ClipCap style): sizes from the definitions, decoding through the engine, save/load, frozen parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _families import (
    check_batched_equals_one_at_a_time,
    check_beam_finds_brute_force_best,
    check_beam_one_is_greedy,
    check_frozen_parts_get_no_gradient,
    check_round_trip,
    check_steps_equal_teacher_forcing,
    peaked,
    pixels,
    train_tiny,
)
from captionkit.errors import ConfigError, ModelLoadError
from captionkit.models.base import Encoded
from captionkit.models.native import set_trainable
from captionkit.models.prefix_gpt2 import PrefixGpt2Config, PrefixGpt2Model

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
FAMILY = "prefix-gpt2"
# The optional parts: the transformer mapper (ClipCap's, and the torch-layer one models saved before it have) and
# the 2-layer transformer over the prefix.
VARIANTS = {
    "mlp": {},
    "torch mlp": {"mapper_style": "torch"},
    "transformer+prefix layers": {"mapper": "transformer", "prefix_layers": 2},
    "torch transformer+prefix layers": {"mapper": "transformer", "mapper_style": "torch", "prefix_layers": 2},
}


# --- parameter counts, computed from the layer sizes


def vit_parameters(c: PrefixGpt2Config) -> int:
    d, i = c.encoder_hidden_size, c.encoder_intermediate_size
    patches = (c.image_size // c.patch_size) ** 2
    embeddings = d + (patches + 1) * d + c.num_channels * c.patch_size**2 * d + d  # cls, positions, patch conv
    layer = 4 * d + 4 * (d * d + d) + (d * i + i) + (i * d + d)  # 2 norms, q/k/v/out, MLP
    return embeddings + c.encoder_layers * layer + 2 * d  # final norm; no pooler


def gpt2_parameters(c: PrefixGpt2Config) -> int:
    d = c.decoder_hidden_size
    layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return c.vocab_size * d + c.decoder_positions * d + c.decoder_layers * layer + 2 * d  # head tied to wte


def transformer_layer_parameters(d: int, hidden: int) -> int:
    return (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d


def clipcap_layer_parameters(d: int, hidden: int) -> int:
    return d * d + 2 * d * d + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d  # q, kv: no bias


def prefix_parameters(c: PrefixGpt2Config) -> int:
    d, e, k, h = c.decoder_hidden_size, c.encoder_hidden_size, c.prefix_length, c.mapper_hidden_size
    prefix_layers = c.prefix_layers * transformer_layer_parameters(d, h)
    if c.mapper_style == "clipcap":  # ClipCap's mappers read the embedding itself: no projection
        if c.mapper == "mlp":
            return (e * h + h) + (h * k * d + k * d) + prefix_layers
        return (e * k * d + k * d) + k * d + c.mapper_layers * clipcap_layer_parameters(d, h) + prefix_layers
    total = e * d + d  # linear projection
    if c.mapper == "mlp":
        total += (d * h + h) + (h * k * d + k * d)
    else:
        total += (d * k * d + k * d) + k * d + c.mapper_layers * transformer_layer_parameters(d, h)
    return total + prefix_layers


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_base_preset_is_vit_b16_clipcap_mlp_and_gpt2() -> None:
    with torch.device("meta"):
        model = PrefixGpt2Model.from_config("base", bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    config = model.config
    # Published sizes: ViT-B/16 without its pooler 85.80M, GPT-2 124.44M; ClipCap's MLP 768 -> 3840 -> 10 x 768
    # on the embedding itself (no projection before it).
    assert vit_parameters(config) == count(model.encoder) == 85_798_656
    assert gpt2_parameters(config) == count(model.gpt2) == 124_439_808
    assert count(model.project) == 0
    assert prefix_parameters(config) == count(model.mapper) == (768 * 3840 + 3840) + (3840 * 7680 + 7680) == 32_451_840
    assert count(model) == 242_690_304
    assert (config.prefix_length, model.max_positions, config.freeze_encoder, config.freeze_decoder) == (
        10,
        1014,
        True,
        False,
    )
    assert model.gpt2.lm_head.weight is model.gpt2.transformer.wte.weight


@pytest.mark.parametrize(
    ("overrides", "width"),
    [
        ({}, 3840),  # ClipCap's MLP: 10 prefix tokens x 768 / 2
        ({"mapper": "transformer"}, 1536),  # its transformer mapper: 2 x 768 (it was the MLP's 3,840)
        ({"prefix_length": 4}, 1536),  # the MLP at 4 prefix tokens: 4 x 768 / 2
        ({"mapper": "transformer", "mapper_hidden_size": 512}, 512),  # a width asked for is kept
    ],
)
def test_the_base_presets_mapper_width_is_clipcaps_for_the_mapper_asked_for(overrides: dict, width: int) -> None:
    with torch.device("meta"):
        model = PrefixGpt2Model.from_config("base", **IDS, **overrides)
    assert model.config.mapper_hidden_size == width


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_the_definition(preset: str, variant: str) -> None:
    with torch.device("meta"):
        model = PrefixGpt2Model.from_config(preset, **IDS, **VARIANTS[variant])
    config = model.config
    assert count(model) == vit_parameters(config) + gpt2_parameters(config) + prefix_parameters(config)


@pytest.mark.parametrize(
    ("overrides", "source", "reason"),
    [
        ({"mapper": "lstm"}, "mapper", "must be one of mlp, transformer"),
        ({"mapper_style": "timm"}, "mapper_style", "must be one of clipcap, torch, got 'timm'"),
        ({"prefix_length": 0}, "prefix_length", "at least 1"),
        ({"prefix_length": 64}, "prefix_length", "less than decoder_positions 64"),
        ({"prefix_layers": -1}, "prefix_layers", "at least 0"),
        ({"mapper_heads": 3}, "mapper_heads", "do not divide"),
        ({"freeze_encoder": 1}, "freeze_encoder", "expected bool"),
        ({"patch_size": 5}, "patch_size", "does not divide"),
        ({"prefix_lenght": 4}, "prefix_lenght", "unknown prefix-gpt2 config key"),
    ],
)
def test_bad_configs_are_config_errors(overrides: dict, source: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        PrefixGpt2Model.from_config("tiny", **IDS, **overrides)
    assert (raised.value.source, reason in raised.value.reason) == (source, True)


# --- teacher forcing: caption positions only


def test_forward_returns_caption_positions_only() -> None:
    model = peaked(FAMILY, seed=0)
    images = pixels(2)
    input_ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images, input_ids)
        # By hand: GPT-2 over [prefix; token embeddings], the last 5 positions.
        encoded = model.encode(images)
        prefix = model.prefix(encoded)
        embeds = torch.cat([prefix, model.gpt2.transformer.wte(input_ids)], dim=1)
        full = model.gpt2(inputs_embeds=embeds).logits
    assert (encoded.tokens.shape, prefix.shape) == ((2, 1, 64), (2, 4, 64))  # CLS embedding, 4 prefix tokens
    assert logits.shape == (2, 5, 16)
    torch.testing.assert_close(logits, full[:, 4:])


def test_padding_does_not_change_the_real_positions() -> None:
    model = peaked(FAMILY, seed=1)
    images = pixels(1)
    ids = torch.tensor([[1, 5, 6, 7]])
    padded = torch.tensor([[1, 5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(images, padded, mask)[:, :4], model(images, ids), rtol=0, atol=1e-5)


def test_a_padded_image_embedding_is_refused() -> None:
    model = peaked(FAMILY)
    with torch.no_grad():
        encoded = model.encode(pixels(2))
    assert model.prefix(Encoded(encoded.tokens, torch.ones(2, 1, dtype=torch.bool))).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="not supported"):
        model.init_state(Encoded(encoded.tokens, torch.tensor([[True], [False]])))


# --- decoding through the one engine


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_one_is_greedy(variant: str) -> None:
    # Seed 5: no variant's captions are the same for every image (the check refuses such a degenerate model).
    check_beam_one_is_greedy(peaked(FAMILY, seed=5, **VARIANTS[variant]))


@pytest.mark.parametrize("setting", ["greedy", "beam", "sample"])
def test_batched_equals_one_at_a_time(setting: str) -> None:
    check_batched_equals_one_at_a_time(peaked(FAMILY, seed=3), setting)


@pytest.mark.parametrize("variant", VARIANTS)
def test_wide_beam_finds_the_brute_force_best(variant: str) -> None:
    check_beam_finds_brute_force_best(peaked(FAMILY, seed=6, vocab_size=5, eos_boost=1.0, **VARIANTS[variant]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_steps_equal_teacher_forcing(variant: str) -> None:
    # float32 error of the cached and the full GPT-2 computation grows with the logits' scale: std 0.1 weights.
    check_steps_equal_teacher_forcing(peaked(FAMILY, seed=5, std=0.1, **VARIANTS[variant]))


def test_the_prefix_is_run_once_per_image() -> None:
    model = peaked(FAMILY, seed=6)
    calls: list[int] = []
    model.mapper.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    from captionkit.decoding import DecodingConfig, generate

    found = generate(model, pixels(3), config=DecodingConfig(max_new_tokens=6, num_beams=4, num_return_sequences=4))
    assert [len(per_image) for per_image in found] == [4, 4, 4]
    assert calls == [3]


# --- save and load, frozen parts, training


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip(variant: str, tmp_path: Path) -> None:
    check_round_trip(peaked(FAMILY, seed=7, **VARIANTS[variant]), tmp_path)


def test_weights_of_another_variant_are_refused(tmp_path: Path) -> None:
    peaked(FAMILY, seed=0).save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"mapper": "mlp"', '"mapper": "transformer"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match="weights do not match the config"):
        PrefixGpt2Model.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no model\.safetensors"):
        PrefixGpt2Model.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("flags", "frozen"), [({"freeze_encoder": True}, "encoder"), ({"freeze_decoder": True}, "gpt2")]
)
def test_frozen_parts_get_no_gradient(flags: dict, frozen: str) -> None:
    model = peaked(FAMILY, seed=8, std=0.02, **flags)
    check_frozen_parts_get_no_gradient(model, getattr(model, frozen))


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    entries = train_tiny(FAMILY, tmp_path)
    assert entries[-1]["loss"] < entries[0]["loss"]
    assert entries[-1]["val_loss"] < entries[0]["val_loss"]


def test_a_part_frozen_by_a_flag_or_a_stage_runs_in_eval_mode() -> None:
    model = peaked(FAMILY, seed=8, std=0.02, freeze_encoder=True)
    model.train()
    assert not model.encoder.training and model.gpt2.training and model.mapper.training
    set_trainable(model.encoder, True)  # what a stage that unfreezes the encoder does, then the trainer calls train()
    set_trainable(model.gpt2, False)
    model.train()
    assert model.encoder.training and not model.gpt2.training
    model.eval()
    assert not any(module.training for module in model.modules())
