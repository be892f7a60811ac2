"""The fast GPT-2 step: shared per-image cross-attention keys/values, preallocated cache, mixed-length batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from _helpers import tiny_model
from captionkit.decoding import DecodingConfig, generate
from captionkit.decoding.engine import STATIC_CACHE_ENV, static_cache
from captionkit.errors import InputError
from captionkit.models.gpt2_graph import CUDA_GRAPHS_ENV
from captionkit.models.gpt2_step import INITIAL_CAPACITY, Gpt2StepState, gpt2_step, start_gpt2_state

pytestmark = pytest.mark.usefixtures("single_thread")


def hf_captions(model: Any, pixels: torch.Tensor, **settings: Any) -> list[list[int]]:
    """transformers' generate, rows without the start token and cut before the first eos."""
    rows = model.ved.generate(pixels, do_sample=False, **settings).tolist()
    eos = model.eos_token_id
    return [row[1 : row.index(eos, 1)] if eos in row[1:] else row[1:] for row in rows]


class StepRecorder:
    """Wraps a model's ``step`` and records what each call saw in the state."""

    def __init__(self, model: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        self.step = model.step
        model.step = self

    def __call__(self, tokens: torch.Tensor, state: Gpt2StepState) -> Any:
        self.calls.append(
            {
                "rows": state.rows,
                "images": state.cross.shape[2],  # (layers, 2, images, heads, tokens, head_dim)
                "group": state.group,
                "cross_ptr": state.cross.data_ptr(),
                "cache_ptr": state.cache.data_ptr(),
                "capacity": state.cache.shape[-2],
                "static": state.static is not None and state.static.owns(state.cache, state.group, state.length),
            }
        )
        return self.step(tokens, state)


def mixed_lengths(model: Any, pool: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    """8 images of ``pool`` chosen so that their captions have at least 3 lengths, one of them the limit.

    Chosen, not hoped for: which random images end early depends on the weights, and those depend on the versions
    of torch and transformers that initialised them.
    """
    lengths = [len(found[0].token_ids) for found in generate(model, pool, config=config)]
    by_length: dict[int, list[int]] = {}
    for image, length in enumerate(lengths):
        by_length.setdefault(length, []).append(image)
    limit = config.max_new_tokens
    assert limit in by_length and len(by_length) >= 3, f"the pool has no mix of lengths: {sorted(lengths)}"
    # One image per length first (the limit's included), then the rest in pool order.
    firsts = [images[0] for _, images in sorted(by_length.items(), reverse=True)]
    chosen = (firsts + [i for i in range(len(lengths)) if i not in firsts])[:8]
    return pool[sorted(chosen)]


@pytest.mark.parametrize("beams", [1, 4])
def test_mixed_length_batches_match_transformers(make_vit_gpt2: Callable, make_pixels: Callable, beams: int) -> None:
    model = make_vit_gpt2(seed=0)
    config = DecodingConfig(max_new_tokens=12, num_beams=beams)
    pixels = mixed_lengths(model, make_pixels(32, 3), config)
    ours = [found[0].token_ids for found in generate(model, pixels, config=config)]
    assert ours == hf_captions(model, pixels, max_new_tokens=12, num_beams=beams)
    # A real mix: captions of several lengths in one batch, some ended by eos and some by the limit.
    assert len(ours) == 8 and len({len(caption) for caption in ours}) >= 3
    assert min(len(caption) for caption in ours) < 12 == max(len(caption) for caption in ours)


@pytest.mark.parametrize("beams", [1, 4])
def test_min_new_tokens_matches_transformers(make_vit_gpt2: Callable, make_pixels: Callable, beams: int) -> None:
    model = make_vit_gpt2(seed=0)
    pixels = make_pixels(4, 3)
    config = DecodingConfig(max_new_tokens=10, min_new_tokens=6, num_beams=beams)
    ours = [found[0] for found in generate(model, pixels, config=config)]
    reference = hf_captions(model, pixels, max_new_tokens=10, min_new_tokens=6, num_beams=beams)
    assert [h.token_ids for h in ours] == reference
    assert all(len(h.token_ids) >= 6 for h in ours)
    with pytest.raises(InputError, match=r"min_new_tokens: must be in \[0, 10\]"):
        DecodingConfig(max_new_tokens=10, min_new_tokens=11)


def test_beams_share_their_images_cross_attention_keys_values(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=0)
    recorder = StepRecorder(model)
    generate(model, make_pixels(8, 3), config=DecodingConfig(max_new_tokens=12, num_beams=4))
    first, later = recorder.calls[0], recorder.calls[1:]
    assert (first["rows"], first["images"]) == (8, 8)  # bos once per image
    # After the first step: 4 beams per still-searching image, one key/value tensor per image, grouped.
    assert all(call["rows"] == 4 * call["images"] and call["group"] == 4 for call in later)
    # While no image finishes, beam reorders never copy the cross keys/values (same storage every step).
    images = [call["images"] for call in later]
    assert images[0] == 8 and images[-1] < 8  # some images closed early and left the batch
    same_batch = [call["cross_ptr"] for call in later if call["images"] == 8]
    assert len(same_batch) > 1 and len(set(same_batch)) == 1


def test_self_attention_cache_is_written_in_place(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=1, eos_boost=0.0)  # eos never wins: every row runs to the limit
    recorder = StepRecorder(model)
    found = generate(model, make_pixels(3, 0), config=DecodingConfig(max_new_tokens=INITIAL_CAPACITY))
    assert [len(h[0].token_ids) for h in found] == [INITIAL_CAPACITY] * 3
    # Rows never change and the capacity suffices: one buffer, allocated once, for every step.
    assert len({call["cache_ptr"] for call in recorder.calls}) == 1


def test_cache_grows_past_its_initial_capacity(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=2)  # 64 positions
    pixels = make_pixels(3, 1)
    for beams in (1, 3):
        config = DecodingConfig(max_new_tokens=60, min_new_tokens=50, num_beams=beams)
        ours = [found[0].token_ids for found in generate(model, pixels, config=config)]
        assert ours == hf_captions(model, pixels, max_new_tokens=60, min_new_tokens=50, num_beams=beams)
        assert all(len(caption) >= 50 for caption in ours)


def test_unequal_rows_per_image_gather_their_keys_values(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    # Sampling drops rows one by one: images then have different row counts (no grouping) and rows gather.
    model = make_vit_gpt2(seed=4, eos_boost=4.0)
    pixels = make_pixels(3, 2)
    recorder = StepRecorder(model)
    # The first sampling seed whose rows end unevenly (which one depends on the weights, so it is searched for).
    for seed in range(5, 45):
        recorder.calls.clear()
        config = DecodingConfig(max_new_tokens=12, do_sample=True, num_return_sequences=3, seed=seed)
        batched = generate(model, pixels, config=config)
        if any(call["group"] == 0 for call in recorder.calls):
            break
    assert any(call["group"] == 0 for call in recorder.calls), "no seed in 5..44 ends the rows unevenly"
    for image in range(3):
        alone = generate(model, pixels[image : image + 1], config=config, image_offset=image)[0]
        assert [h.token_ids for h in alone] == [h.token_ids for h in batched[image]]
        assert [h.log_prob for h in alone] == pytest.approx([h.log_prob for h in batched[image]], rel=1e-5)


def test_step_without_cross_attention_equals_gpt2_forward() -> None:
    # The same step drives a plain GPT-2 (no image memory), e.g. for language-model-only families.
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2)
    decoder = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = decoder(ids).logits
        state = start_gpt2_state(decoder, None, rows=3)
        stepped = torch.stack([gpt2_step(decoder, ids[:, t], state) for t in range(6)], dim=1)
    assert state.length == 6 and state.cross is None
    torch.testing.assert_close(stepped, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs memory or a row count"):
        start_gpt2_state(decoder, None)


@pytest.mark.parametrize("beams", [1, 4])
def test_static_cache_is_allocated_once_and_token_identical(
    make_vit_gpt2: Callable, make_pixels: Callable, monkeypatch: pytest.MonkeyPatch, beams: int
) -> None:
    model = make_vit_gpt2(seed=0)
    config = DecodingConfig(max_new_tokens=12, num_beams=beams)
    pixels = mixed_lengths(model, make_pixels(32, 3), config)
    runs = {}
    for static in ("0", "1"):
        monkeypatch.setenv(STATIC_CACHE_ENV, static)
        recorder = StepRecorder(model)
        runs[static] = (generate(model, pixels, config=config), recorder.calls)
        model.step = recorder.step
    (eager, eager_calls), (static, calls) = runs["0"], runs["1"]
    # Static: exactly the 12 positions fed (bos + 11 generated tokens fed back); eager: the small initial capacity.
    assert {call["capacity"] for call in calls} == {12} and {c["capacity"] for c in eager_calls} == {INITIAL_CAPACITY}
    assert [h[0].token_ids for h in static] == [h[0].token_ids for h in eager]
    assert [h[0].score for h in static] == [h[0].score for h in eager]
    assert len({len(h[0].token_ids) for h in static}) >= 3  # rows and images left the batch on the way
    assert min(call["rows"] for call in calls) < 8 * beams == calls[1]["rows"]
    # From the first step with every row (after the expand to beams) to the last, the cache lives in two buffers,
    # each allocated once: reorders gather into the spare one, then the two swap roles.
    assert len({call["cache_ptr"] for call in calls[1:]}) == 2


def test_static_cache_of_prefix_captioning_is_token_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("prefix-gpt2", seed=3).eval()
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    config = DecodingConfig(max_new_tokens=9, num_beams=3)
    found = {}
    for static in ("0", "1"):
        monkeypatch.setenv(STATIC_CACHE_ENV, static)
        found[static] = [h[0].token_ids for h in generate(model, pixels, config=config)]
    assert found["1"] == found["0"] and len(found["0"]) == 5


def test_static_cache_setting_is_checked(make_vit_gpt2: Callable, make_pixels: Callable, monkeypatch) -> None:
    monkeypatch.setenv(STATIC_CACHE_ENV, "yes")
    with pytest.raises(InputError, match="CAPTIONKIT_STATIC_CACHE: must be 0 or 1 \\(or unset\\), got 'yes'"):
        generate(make_vit_gpt2(seed=0), make_pixels(1, 0), config=DecodingConfig())
    monkeypatch.delenv(STATIC_CACHE_ENV)
    assert not static_cache(torch.device("cpu")) and static_cache(torch.device("cuda"))


SAMPLING = {"do_sample": True, "seed": 5}


@pytest.mark.parametrize(
    ("settings", "fixed_steps"),
    [
        ({"num_beams": 1}, 10),
        ({"num_beams": 4}, 10),
        ({**SAMPLING, "num_return_sequences": 1}, 10),
        # An image's samples end at different steps: rows are then not grouped per image, and steps run eagerly.
        ({**SAMPLING, "num_return_sequences": 3}, 0),
    ],
)
def test_fixed_shape_step_is_token_identical_to_the_eager_step(
    make_vit_gpt2: Callable,
    make_pixels: Callable,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
    fixed_steps: int,
) -> None:
    # The step that CUDA graphs replay, run eagerly on the CPU: full buffers, masked positions, padded rows.
    model = make_vit_gpt2(seed=0)
    pixels = mixed_lengths(model, make_pixels(32, 3), DecodingConfig(max_new_tokens=12, num_beams=4))
    config = DecodingConfig(max_new_tokens=12, **settings)
    monkeypatch.setenv(STATIC_CACHE_ENV, "1")
    found, static_calls = {}, {}
    for graphs in ("0", "1"):
        monkeypatch.setenv(CUDA_GRAPHS_ENV, graphs)
        recorder = StepRecorder(model)
        found[graphs] = generate(model, pixels, config=config)
        static_calls[graphs] = sum(call["static"] for call in recorder.calls)
        model.step = recorder.step
    assert [[h.token_ids for h in image] for image in found["1"]] == [[h.token_ids for h in i] for i in found["0"]]
    # Scores agree to float rounding: attention sums over every reserved position (weight 0 past the current one).
    scores = [[h.score for image in found[graphs] for h in image] for graphs in ("1", "0")]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5) and min(scores[0]) < -0.1
    # Steps 3 to 12 see the fixed-shape step built at step 2 (step 1 runs eagerly, before rows expand).
    assert static_calls == {"0": 0, "1": fixed_steps}
    assert len({len(image[0].token_ids) for image in found["1"]}) >= 2  # rows left the batch while it ran


def test_fixed_shape_step_of_prefix_captioning_is_token_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("prefix-gpt2", seed=3).eval()
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    monkeypatch.setenv(STATIC_CACHE_ENV, "1")
    found = {}
    for graphs in ("0", "1"):
        monkeypatch.setenv(CUDA_GRAPHS_ENV, graphs)
        found[graphs] = [h[0].token_ids for h in generate(model, pixels, config=DecodingConfig(max_new_tokens=9))]
    assert found["1"] == found["0"] and len(found["0"]) == 5


def test_reorders_gather_every_layer_into_the_spare_buffer_and_back() -> None:
    # Eager reorders gather the whole (layers, 2, rows, ...) cache into a spare buffer and swap: after permutations,
    # a shrink and another permutation, every layer's filled keys/values are the reference rows, and only two
    # buffers were ever used.
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=3, n_head=2)
    decoder = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        state = start_gpt2_state(decoder, None, rows=6)
        for token in range(4):
            gpt2_step(decoder, torch.full((6,), token), state)
        reference = state.cache[..., :4, :].clone()  # (layers, 2, rows, heads, positions, head_dim)
        buffers = set()
        for index in ([5, 4, 3, 2, 1, 0], [0, 0, 2, 3, 3, 1], [4, 1, 5], [2, 2, 0]):
            index_tensor = torch.tensor(index)
            state.reorder(index_tensor, tuple(range(len(index))))
            reference = reference[:, :, index_tensor]
            buffers.add(state.cache.data_ptr())
        assert state.cache.shape[:3] == (3, 2, 3) and state.rows == 3 and len(buffers) == 2
        assert torch.equal(state.cache[..., :4, :], reference)


def test_gpt2_mlp_keeps_transformers_gelu_in_fp32_and_fuses_it_in_half_precision():
    """float32 captions are token-identical to generate's: there the MLP runs transformers' own gelu_new, bit for bit
    (torch's fused tanh GELU is an ulp or so apart); in bf16 the fused kernel replaces its eight operations."""
    from captionkit.models.gpt2_graph import gpt2_mlp

    torch.manual_seed(0)
    block = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).eval().transformer.h[0]
    hidden = torch.randn(4, 3, 32) * 3
    with torch.no_grad():
        assert torch.equal(gpt2_mlp(block.mlp, hidden), block.mlp(hidden))
        half = block.mlp.to(torch.bfloat16)
        inner = half.c_fc(hidden.bfloat16())
        fused = half.c_proj(torch.nn.functional.gelu(inner, approximate="tanh"))
        assert torch.equal(gpt2_mlp(half, hidden.bfloat16()), fused)
