"""prefix-gpt2's transformer mapper is ClipCap's (Mokady et al. 2021, the reference code's TransformerMapper): its
forward computed by hand from the paper code's definition, its layers' shapes, the recipe that builds it; models saved
before it (torch's layers, config.json without ``mapper_style``) load, caption and export as they did."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.nn import functional as F

from _data import real_photos
from _families import peaked, pixels
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.config import load_train_config
from captionkit.export.int8 import quantize_int8
from captionkit.models.clipcap_mapper import ClipCapMapper
from captionkit.models.prefix_gpt2 import PrefixGpt2Model, PrefixMapper
from captionkit.models.registry import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILY = "prefix-gpt2"
PHOTOS = real_photos(3)
# An encoder narrower than GPT-2 (32 vs 64): the mapper's first layer shows which width it reads.
CLIPCAP = {"mapper": "transformer", "encoder_hidden_size": 32, "encoder_intermediate_size": 64}
OLD_STYLE = {"mapper": "transformer", "mapper_style": "torch", "prefix_layers": 1}


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def clipcap_prefix_by_hand(
    mapper: nn.Module, embedding: Tensor, heads: int, activation: Callable[[Tensor], Tensor] = torch.relu
) -> Tensor:
    """ClipCap's mapper from its definition: linear map of the image embedding to K tokens, K constants after them,
    pre-norm layers (attention: q and k/v without bias, k before v in one map, softmax(q k^T * head_dim^-0.5) v,
    output map with bias; MLP fc1 -> ``activation`` -> fc2), no final norm; the constants' K outputs."""
    k, width = mapper.prefix_const.shape
    head = width // heads
    tokens = (embedding @ mapper.linear.weight.T + mapper.linear.bias).reshape(-1, k, width)
    x = torch.cat([tokens, mapper.prefix_const.unsqueeze(0).repeat(len(embedding), 1, 1)], dim=1)
    for layer in mapper.transformer.layers:
        a = layer_norm(x, layer.norm1)
        q = (a @ layer.attn.to_queries.weight.T).reshape(len(x), 2 * k, heads, head).permute(0, 2, 1, 3)
        kv = a @ layer.attn.to_keys_values.weight.T
        keys = kv[..., :width].reshape(len(x), 2 * k, heads, head).permute(0, 2, 1, 3)
        values = kv[..., width:].reshape(len(x), 2 * k, heads, head).permute(0, 2, 1, 3)
        weights = torch.softmax(q @ keys.transpose(-1, -2) * head**-0.5, dim=-1)
        attended = (weights @ values).permute(0, 2, 1, 3).reshape(len(x), 2 * k, width)
        x = x + attended @ layer.attn.project.weight.T + layer.attn.project.bias
        hidden = activation(layer_norm(x, layer.norm2) @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias)
        x = x + hidden @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias
    return x[:, k:]


def clipcap_model(seed: int = 0) -> PrefixGpt2Model:
    """A tiny ClipCap-mapper model with every mapper weight away from its start (norms too), for a by-hand check."""
    model = peaked(FAMILY, seed=seed, std=0.1, **CLIPCAP)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.mapper.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    assert isinstance(model, PrefixGpt2Model)
    return model


def test_the_mapper_computes_clipcaps_math_on_the_image_embedding_itself() -> None:
    model = clipcap_model(seed=1)
    with torch.no_grad():
        encoded = model.encode(pixels(3, 2))
        embedding = encoded.tokens[:, 0]  # the encoder's own embedding: 32 wide, no projection to GPT-2's 64
        prefix = model.prefix(encoded)
        by_hand = clipcap_prefix_by_hand(model.mapper, embedding, heads=2)
        with_gelu = clipcap_prefix_by_hand(model.mapper, embedding, heads=2, activation=F.gelu)
    assert (embedding.shape, prefix.shape) == ((3, 32), (3, 4, 64))
    torch.testing.assert_close(prefix, by_hand, rtol=0, atol=1e-5)
    # The comparison tells the activations apart: torch's GELU gives another prefix.
    assert (prefix - with_gelu).abs().max() > 1e-3


def test_the_layers_are_clipcaps_and_named_as_the_reference_names_them() -> None:
    model = PrefixGpt2Model.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0, **CLIPCAP)
    mapper = model.mapper
    assert isinstance(mapper, ClipCapMapper) and isinstance(model.project, nn.Identity)
    assert model.config.mapper_style == "clipcap"
    layer = [f"transformer.layers.{i}." for i in range(2)]
    per_layer = ["norm1.weight", "norm1.bias", "attn.to_queries.weight", "attn.to_keys_values.weight"]
    per_layer += ["attn.project.weight", "attn.project.bias", "norm2.weight", "norm2.bias"]
    per_layer += ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = ["linear.weight", "linear.bias", "prefix_const"] + [p + name for p in layer for name in per_layer]
    assert sorted(mapper.state_dict()) == sorted(expected)  # q and k/v: no bias
    # Training stages see the mapper whole: its parameters are the "mapper" group, as the projection's were.
    assert model.parameter_groups()["mapper"] == [f"mapper.{name}" for name, _ in mapper.named_parameters()]
    attention, mlp = mapper.transformer.layers[0].attn, mapper.transformer.layers[0].mlp
    assert (attention.to_queries.weight.shape, attention.to_keys_values.weight.shape) == ((64, 64), (128, 64))
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (64, 2 * 64, 64)  # mlp_ratio 2
    assert mapper.linear.weight.shape == (4 * 64, 32)  # K tokens from the 32-wide image embedding
    # No torch transformer layer, GELU or final norm anywhere in the mapper: two LayerNorms per layer only.
    norms = [name for name, module in mapper.named_modules() if isinstance(module, nn.LayerNorm)]
    assert norms == [p + norm for p in layer for norm in ("norm1", "norm2")]
    assert not any(isinstance(m, nn.TransformerEncoderLayer | nn.GELU) for m in model.modules())
    # The constants start from torch.randn (std 1), not the initializer range's 0.02.
    assert 0.9 < float(mapper.prefix_const.detach().std()) < 1.1


def test_training_mode_draws_no_dropout_as_clipcaps_mapper_has_none() -> None:
    model = clipcap_model(seed=2)
    with torch.no_grad():
        encoded = model.encode(pixels(2, 3))
        evaluated = model.prefix(encoded)
        assert torch.equal(model.train().prefix(encoded), evaluated)


def test_the_recipe_builds_clipcaps_mapper(tmp_path: Path) -> None:
    from _hub_parts import save_clip, save_gpt2

    clip, gpt2 = save_clip(tmp_path / "clip"), save_gpt2(tmp_path / "gpt2")
    config = load_train_config("flickr30k-clipcap-transformer", [f"model.encoder={clip}", f"model.decoder={gpt2}"])
    section = config.model
    model = create_model(section.family, encoder=section.encoder, decoder=section.decoder, **section.overrides)
    assert isinstance(model, PrefixGpt2Model) and isinstance(model.mapper, ClipCapMapper)
    built = model.config
    assert (built.mapper_style, built.prefix_length, built.mapper_layers, built.mapper_heads) == ("clipcap", 40, 8, 8)
    assert (built.freeze_encoder, built.freeze_decoder) == (True, True)
    mapper = model.mapper
    # The CLIP tower's 48-wide embedding, 40 tokens of GPT-2's width 32; feed-forward 2 * 32.
    assert mapper.linear.weight.shape == (40 * 32, 48) and mapper.prefix_const.shape == (40, 32)
    assert len(mapper.transformer.layers) == 8
    assert {layer.mlp.fc1.out_features for layer in mapper.transformer.layers} == {64}


def old_checkpoint(directory: Path, mapper: str = "transformer") -> Path:
    """A checkpoint as captionkit saved a prefix-gpt2 model before ClipCap's mappers: a projection before the MLP or
    torch's transformer layers, and a config.json without ``mapper_style``."""
    source = save_tiny_model(directory, FAMILY, seed=3, **(OLD_STYLE | {"mapper": mapper}))
    config_file = source / "config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    assert saved["config"].pop("mapper_style") == "torch"
    config_file.write_text(json.dumps(saved), encoding="utf-8")
    return source


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_an_old_checkpoint_loads_and_captions_as_before(mapper: str, tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "saved", FAMILY, seed=3, **(OLD_STYLE | {"mapper": mapper}))
    before = Captioner.from_pretrained(source, device="cpu")
    old = old_checkpoint(tmp_path / "old", mapper)
    after = Captioner.from_pretrained(old, device="cpu")
    assert after.model.config.mapper_style == "torch" and isinstance(after.model.mapper, PrefixMapper)
    assert isinstance(after.model.project, nn.Linear)
    assert after.model.state_dict().keys() == before.model.state_dict().keys()
    ids = torch.randint(0, 300, (3, 6), generator=torch.Generator().manual_seed(0))
    images = torch.from_numpy(before.preprocessing(before.load_images(PHOTOS)))
    with torch.no_grad():
        assert torch.equal(after.model(images, ids), before.model(images, ids))
    found = [r.captions[0].token_ids for r in after.caption(PHOTOS, num_beams=2, max_new_tokens=8)]
    assert found == [r.captions[0].token_ids for r in before.caption(PHOTOS, num_beams=2, max_new_tokens=8)]


def test_a_new_model_saves_and_loads_as_clipcaps(tmp_path: Path) -> None:
    model = clipcap_model(seed=4)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["mapper_style"] == "clipcap"
    loaded = PrefixGpt2Model.from_pretrained(tmp_path)
    assert loaded.config == model.config and isinstance(loaded.mapper, ClipCapMapper)
    with torch.no_grad():
        encoded = model.encode(pixels(2, 5))
        assert torch.equal(loaded.prefix(encoded), model.prefix(encoded))


@pytest.mark.parametrize("style", ["clipcap", "old"])
def test_int8_export_of_a_transformer_mapper_model(
    style: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if style == "old":
        source = old_checkpoint(tmp_path / "fp32")
    else:
        source = save_tiny_model(tmp_path / "fp32", FAMILY, seed=5, mapper="transformer")
    code, _, err = run_cli(["export", "int8", "--model", source, "--output", tmp_path / "int8"], capsys)
    assert code == 0, err
    loaded = Captioner.from_pretrained(tmp_path / "int8")
    reference = Captioner.from_pretrained(source, device="cpu")
    quantize_int8(reference.model)
    layers = {n: m for n, m in loaded.model.named_modules() if isinstance(m, DynamicInt8Linear)}
    if style == "clipcap":  # ClipCap's bias-free q and k/v maps are int8 layers without a bias
        assert layers["mapper.transformer.layers.0.attn.to_queries"].bias() is None
        assert layers["mapper.transformer.layers.0.attn.to_keys_values"].bias() is None
    else:  # torch's layers keep their feed-forward linears in fp32: their fast path reads linear1.weight as a tensor
        kept = json.loads((tmp_path / "int8" / "quantization.json").read_text(encoding="utf-8"))["kept_fp32"]
        assert {"mapper.transformer.layers.0.linear1", "prefix_transformer.layers.0.linear2"} <= set(kept)
        assert not any(".linear1" in name or ".linear2" in name for name in layers)
    assert layers.keys() == {n for n, m in reference.model.named_modules() if isinstance(m, DynamicInt8Linear)}
    found = [r.captions[0].token_ids for r in loaded.caption(PHOTOS, num_beams=2, max_new_tokens=8)]
    assert found == [r.captions[0].token_ids for r in reference.caption(PHOTOS, num_beams=2, max_new_tokens=8)]
