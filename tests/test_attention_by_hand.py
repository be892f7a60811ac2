"""Attention maps recomputed by hand from the models' own weights, and the overlays drawn where the model looked.

Each map is the decoder's cross-attention softmax(q k^T / sqrt(d)) per layer and head, with q and k computed here from
the layers' inputs and weights, averaged over heads and layers, the CLS share dropped and the rest renormalised, laid
out row-major over the patch grid: the layout of ViT's patch tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from _data import real_photos
from _helpers import save_tiny_model, tiny_model
from _hub_parts import save_gpt2, save_vision_transformer
from captionkit.api import Captioner
from captionkit.attention import MAX_ALPHA, MIN_ALPHA, overlay, seen_box, write_overlays
from captionkit.images import Preprocessing
from captionkit.models.vit_gpt2 import VitGpt2Model

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ("a dog runs on the grass", "a cat sits on a red couch", "two birds fly over the sea")
SIDE = 4  # tiny presets: 32 px images in 8 px patches


@contextmanager
def recorded_inputs(layers: list[torch.nn.Module]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, each call of a cross-attention layer records its (query-side input, encoder tokens); the
    hooks are removed on leaving it."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(_module, args, kwargs, _output) -> None:
        seen.append((args[0], kwargs["encoder_hidden_states"]))

    hooks = [layer.register_forward_hook(record, with_kwargs=True) for layer in layers]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def softmax_by_hand(queries: torch.Tensor, keys: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) queries and (B, N, D) keys -> (B, heads, T, N) attention weights."""
    size = queries.shape[-1] // heads
    q = queries.unflatten(-1, (heads, size)).transpose(1, 2)
    k = keys.unflatten(-1, (heads, size)).transpose(1, 2)
    return (q @ k.transpose(-1, -2) / size**0.5).softmax(dim=-1)


def patch_maps(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers and heads, CLS (token 0) dropped, renormalised, row-major (B, T, SIDE, SIDE)."""
    mean = torch.stack(per_layer).mean(dim=(0, 2))[..., 1:]
    return (mean / mean.sum(dim=-1, keepdim=True)).reshape(*mean.shape[:2], SIDE, SIDE)


def peaked_cross_attention(model: torch.nn.Module) -> None:
    """Redraw the cross-attention weights large, so that maps are far from uniform and a mix-up shows; BLIP's vision
    weights too (its vision config starts them at std 1e-10: every image token would be about the same)."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "crossattention" in name and parameter.ndim == 2:
                parameter.normal_(0.0, 0.5)
            elif "vision_model" in name and parameter.ndim >= 2:
                parameter.normal_(0.0, 0.1)


def test_vit_patch_tokens_are_the_patches_in_row_major_order():
    model = tiny_model("vit-gpt2", seed=1)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    embedding = model.ved.encoder.embeddings.patch_embeddings
    with torch.no_grad():
        tokens = embedding(images)  # (B, 16, D), before CLS and positions are added
        for row in range(SIDE):
            for column in range(SIDE):
                patch = images[:, :, 8 * row : 8 * row + 8, 8 * column : 8 * column + 8]
                by_hand = torch.einsum("bchw,dchw->bd", patch, embedding.projection.weight)
                by_hand += embedding.projection.bias
                torch.testing.assert_close(tokens[:, SIDE * row + column], by_hand, rtol=0, atol=1e-5)


def test_vit_gpt2_maps_are_gpt2_cross_attention_by_hand():
    model = tiny_model("vit-gpt2", seed=2).eval()
    peaked_cross_attention(model)
    blocks = model.ved.decoder.transformer.h
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[model.bos_token_id, 5, 6, 7], [model.bos_token_id, 8, 9, 10]])
    with recorded_inputs([block.crossattention for block in blocks]) as seen, torch.no_grad():
        maps = model.attention_maps(images, ids)
    assert len(seen) == 2  # one call per layer
    per_layer = []
    for block, (hidden, memory) in zip(blocks, seen, strict=True):
        attention = block.crossattention
        keys, _values = attention.c_attn(memory).split(attention.embed_dim, dim=2)
        per_layer.append(softmax_by_hand(attention.q_attn(hidden), keys, attention.num_heads))
    assert per_layer[0].shape == (2, 2, 4, 1 + SIDE * SIDE)  # (B, heads, T, CLS + patches)
    expected = patch_maps(per_layer)
    assert maps.shape == (2, 4, SIDE, SIDE)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    assert float(maps.amax()) > 3 / (SIDE * SIDE)  # far from uniform: a wrong layout could not match


@pytest.mark.parametrize(("encoder", "leading"), [("deit", 2), ("dinov2", 1), ("siglip_vision_model", 0)])
def test_tokens_before_the_patches_are_dropped_whatever_the_encoder_puts_there(encoder, leading, tmp_path):
    """DeiT puts CLS and a distillation token before its patches, DINOv2 CLS, SigLIP none: only patches are mapped."""
    model = VitGpt2Model.from_parts(save_vision_transformer(tmp_path / encoder, encoder), save_gpt2(tmp_path / "gpt2"))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([[model.bos_token_id, 5, 6]] * 2)
    with torch.no_grad():
        maps = model.attention_maps(images, ids)
        memory = model.encode(images).tokens
        model.ved.decoder.set_attn_implementation("eager")  # the reference's weights, after the maps' own call
        layers = model.ved.decoder(input_ids=ids, encoder_hidden_states=memory, output_attentions=True).cross_attentions
    assert memory.shape[1] == leading + SIDE * SIDE
    patches = torch.stack(layers).mean(dim=(0, 2))[..., leading:]
    expected = (patches / patches.sum(dim=-1, keepdim=True)).reshape(2, 3, SIDE, SIDE)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)


def test_blip_maps_are_its_text_decoders_cross_attention_by_hand_after_its_prompt():
    model = tiny_model("blip", seed=3).eval()
    peaked_cross_attention(model)
    model.set_prompt((5, 6))
    layers = model.hf.text_decoder.bert.encoder.layer
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[model.bos_token_id, 7, 8], [model.bos_token_id, 9, 10]])
    with recorded_inputs([layer.crossattention.self for layer in layers]) as seen, torch.no_grad():
        maps = model.attention_maps(images, ids)
    per_layer = []
    for layer, (hidden, memory) in zip(layers, seen, strict=True):
        attention = layer.crossattention.self
        assert hidden.shape[1] == 5  # start, the two prompt tokens, the caption's two
        per_layer.append(softmax_by_hand(attention.query(hidden), attention.key(memory), attention.num_attention_heads))
    # Map t predicts ids[t + 1]: the positions from the prompt's last token on, as forward's logits.
    expected = patch_maps(per_layer)[:, 2:]
    assert maps.shape == (2, 3, SIDE, SIDE)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    assert float(maps.amax()) > 3 / (SIDE * SIDE)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    directory = save_tiny_model(tmp_path_factory.mktemp("m") / "vit", captions=CAPTIONS, initializer_range=0.3)
    return Captioner.from_pretrained(directory, device="cpu")


def test_n_best_maps_batched_equal_one_at_a_time_and_belong_to_their_own_caption(captioner):
    images = [Image.open(path).convert("RGB") for path in real_photos(3)]
    options = {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 6}
    together = captioner.caption(images, attention=True, batch_size=3, **options)
    plain = captioner.caption(images, batch_size=3, **options)
    pixels = torch.from_numpy(captioner.preprocessing(images))
    for row, (image, result) in enumerate(zip(images, together, strict=True)):
        [alone] = captioner.caption(image, attention=True, **options)
        assert [c.token_ids for c in result.captions] == [c.token_ids for c in alone.captions]
        assert [c.token_ids for c in result.captions] == [c.token_ids for c in plain[row].captions]
        for caption, single in zip(result.captions, alone.captions, strict=True):
            np.testing.assert_allclose(caption.attention, single.attention, rtol=0, atol=1e-6)
            assert caption.tokens == single.tokens
            ids = caption.token_ids
            with torch.no_grad():
                own = captioner.model.attention_maps(
                    pixels[row : row + 1], torch.tensor([[captioner.model.bos_token_id, *ids]])
                )
            # Map t is token t's: fed the start and the caption, position t predicts token t.
            np.testing.assert_allclose(caption.attention, own[0, : len(ids)].numpy(), rtol=0, atol=1e-5)
    # The n-best captions of an image differ, and so do their maps where their tokens first differ.
    first, second = together[0].captions[:2]
    split = next(i for i, (a, b) in enumerate(zip(first.token_ids, second.token_ids, strict=False)) if a != b)
    assert not np.allclose(first.attention[split + 1 :][:1], second.attention[split + 1 :][:1], atol=1e-6)


CROP = Preprocessing(size=(32, 32), crop_from=32)  # shorter edge to 32 px, then the centre 32 x 32


@pytest.mark.parametrize(
    ("preprocessing", "size", "expected"),
    [
        (Preprocessing.for_size(32, 32), (96, 32), (0.0, 0.0, 1.0, 1.0)),  # a plain resize sees it all
        (CROP, (96, 32), (1 / 3, 0.0, 2 / 3, 1.0)),
        (CROP, (32, 64), (0.0, 0.25, 1.0, 0.75)),
        (Preprocessing(size=(32, 32), crop_from=(40, 36)), (100, 50), (2 / 36, 4 / 40, 34 / 36, 36 / 40)),
        # Odd margins (71 - 32 = 39): transformers' floor puts the crop at 19, torchvision's half-even at 20.
        (CROP, (71, 32), (19 / 71, 0.0, 51 / 71, 1.0)),
        (Preprocessing(size=(32, 32), crop_from=32, crop_rounding="half-even"), (71, 32), (20 / 71, 0.0, 52 / 71, 1.0)),
    ],
)
def test_seen_box_is_the_part_of_the_image_the_preprocessing_keeps(preprocessing, size, expected):
    assert seen_box(preprocessing, size) == pytest.approx(expected, abs=1e-9)
    # The crop of the photo at that box, resized, is what the preprocessing hands the model.
    width, height = size
    ramp = np.zeros((height, width, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(width)[None, :] * 255 // (width - 1)
    ramp[..., 1] = np.arange(height)[:, None] * 255 // (height - 1)
    photo = Image.fromarray(ramp)
    left, top, right, bottom = (f * s for f, s in zip(seen_box(preprocessing, size), (*size, *size), strict=True))
    by_box = photo.resize(preprocessing.size[::-1], Image.Resampling.BILINEAR, box=(left, top, right, bottom))
    inner = (slice(2, -2), slice(2, -2))  # away from the edges, where the resize filters see past the box
    difference = np.abs(np.asarray(by_box, dtype=float) - preprocessing.resized(photo).astype(float))[inner]
    assert difference.max() <= 2


def test_overlays_put_the_maps_on_the_crop_the_model_saw(tmp_path):
    # A wide photo through a centre crop: the model saw its middle third; the grid's top-left cell is the hot one.
    photo = Image.new("RGB", (96, 32), (128, 128, 128))
    grid = np.zeros((SIDE, SIDE), dtype=np.float32)
    grid[0, 0] = 1.0
    [path] = write_overlays(photo, ["dog"], grid[None], tmp_path / "maps", preprocessing=CROP)
    drawn = np.asarray(Image.open(path)).astype(float)
    assert drawn.shape == (32, 96, 3)
    hot = MAX_ALPHA * np.array([252, 255, 164]) + (1 - MAX_ALPHA) * 128
    cold = MIN_ALPHA * np.array([0, 0, 4]) + (1 - MIN_ALPHA) * 128
    np.testing.assert_allclose(drawn[0, 32], hot, atol=2)  # the crop's top-left corner
    np.testing.assert_allclose(drawn[0, 0], cold, atol=2)  # the photo's own corner: never seen
    np.testing.assert_allclose(drawn[31, 95], cold, atol=2)
    # Without a crop the grid spans the photo, as before.
    whole = np.asarray(overlay(photo, grid)).astype(float)
    np.testing.assert_allclose(whole[0, 0], hot, atol=2)
