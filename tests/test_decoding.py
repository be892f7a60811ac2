"""The decoding engine against transformers' generate, brute force, and its own invariants (tiny models)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from _families import brute_force_ranking, check_start_per_image_equals_one_at_a_time, full_ids, teacher_forced_log_prob
from captionkit.decoding import DecodingConfig, generate
from captionkit.decoding.beam import beam_search
from captionkit.decoding.sampling import warp_scores
from captionkit.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")

# Our own tokenizers use distinct ids; GPT-2 checkpoints (nlpconnect) use one id for bos, eos and pad.
LAYOUTS = {
    "distinct": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    "gpt2": {"bos_token_id": 15, "eos_token_id": 15, "pad_token_id": 15},
}
MAX_NEW = 10


def hf_tokens(row: list[int], eos: int) -> list[int]:
    """A generate() output row without its decoder start token, cut before the first eos (padding follows)."""
    row = row[1:]
    return row[: row.index(eos)] if eos in row else row


# --- equality with transformers' generate


def test_greedy_matches_transformers_generate(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    finished = []
    for seed, layout in itertools.product(range(3), LAYOUTS):
        model = make_vit_gpt2(seed=seed, **LAYOUTS[layout])
        pixels = make_pixels(5, seed)
        ours = generate(model, pixels, config=DecodingConfig(max_new_tokens=MAX_NEW))
        reference = model.ved.generate(pixels, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)
        assert [found[0].token_ids for found in ours] == [hf_tokens(r, model.eos_token_id) for r in reference.tolist()]
        finished += [found[0].finished for found in ours]
    # Both stopping paths ran: eos inside the limit, and the limit itself.
    assert 0 < sum(finished) < len(finished)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -0.5])
def test_beam_search_matches_transformers_generate(
    make_vit_gpt2: Callable, make_pixels: Callable, early_stopping: Any, length_penalty: float
) -> None:
    config = DecodingConfig(
        max_new_tokens=MAX_NEW,
        num_beams=4,
        num_return_sequences=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    finished = []
    for layout in LAYOUTS:
        model = make_vit_gpt2(seed=0, **LAYOUTS[layout])
        pixels = make_pixels(5, 1)
        ours = generate(model, pixels, config=config)
        reference = model.ved.generate(
            pixels,
            max_new_tokens=MAX_NEW,
            num_beams=4,
            num_return_sequences=4,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        flat = [hypothesis for per_image in ours for hypothesis in per_image]
        assert [len(per_image) for per_image in ours] == [4] * 5
        assert [h.token_ids for h in flat] == [hf_tokens(r, model.eos_token_id) for r in reference.sequences.tolist()]
        scores = torch.tensor([h.score for h in flat])
        torch.testing.assert_close(scores, reference.sequences_scores, rtol=1e-6, atol=1e-5)
        finished += [h.finished for h in flat]
    assert 0 < sum(finished) < len(finished)


# --- exactness on a vocabulary small enough to enumerate


@pytest.mark.parametrize(
    ("vocab_size", "max_new", "beams"),
    # beams >= every step's real candidates (vocab × non-eos prefixes), so no prefix or ending is ever pruned.
    [(5, 3, 20), (4, 4, 36)],
)
@pytest.mark.parametrize(("early_stopping", "length_penalty"), [("never", 1.0), ("never", 2.0), (False, 0.0)])
def test_wide_beam_finds_the_brute_force_best(
    make_vit_gpt2: Callable,
    make_pixels: Callable,
    vocab_size: int,
    max_new: int,
    beams: int,
    early_stopping: Any,
    length_penalty: float,
) -> None:
    # early_stopping="never" with length_penalty >= 0, or length_penalty 0, is the exact stopping rule.
    model = make_vit_gpt2(seed=3, vocab_size=vocab_size, eos_boost=1.0)
    for image in range(2):
        pixels = make_pixels(2, 5)[image : image + 1]
        ranking = brute_force_ranking(model, pixels, max_new, length_penalty)
        config = DecodingConfig(
            max_new_tokens=max_new,
            num_beams=beams,
            num_return_sequences=5,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        found = generate(model, pixels, config=config)[0]
        assert [full_ids(h, model.eos_token_id) for h in found] == [ids for _, ids in ranking[:5]]
        torch.testing.assert_close(torch.tensor([h.score for h in found]), torch.tensor([s for s, _ in ranking[:5]]))


@pytest.mark.parametrize("beams", [1, 2, 3, 4])
def test_narrow_beams_never_beat_brute_force(make_vit_gpt2: Callable, make_pixels: Callable, beams: int) -> None:
    model = make_vit_gpt2(seed=3, vocab_size=5, eos_boost=1.0)
    pixels = make_pixels(1, 5)
    ranking = brute_force_ranking(model, pixels, 3, 1.0)
    exact = {tuple(ids): score for score, ids in ranking}
    config = DecodingConfig(max_new_tokens=3, num_beams=beams, num_return_sequences=beams)
    for hypothesis in generate(model, pixels, config=config)[0]:
        assert hypothesis.score <= ranking[0][0] + 1e-6
        assert hypothesis.score == pytest.approx(exact[tuple(full_ids(hypothesis, model.eos_token_id))], abs=1e-5)


# --- invariants


SETTINGS = {
    "greedy": DecodingConfig(max_new_tokens=MAX_NEW),
    "beam": DecodingConfig(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=2),
    "sample": DecodingConfig(max_new_tokens=MAX_NEW, do_sample=True, num_return_sequences=3, top_k=8, seed=7),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_batched_equals_one_at_a_time(make_vit_gpt2: Callable, make_pixels: Callable, setting: str) -> None:
    model = make_vit_gpt2(seed=1)
    pixels = make_pixels(4, 2)
    config = SETTINGS[setting]
    batched = generate(model, pixels, config=config)
    for image in range(4):
        # With a seed, image j of a call samples from seed + image_offset + j.
        alone = generate(model, pixels[image : image + 1], config=config, image_offset=image)[0]
        assert [h.token_ids for h in alone] == [h.token_ids for h in batched[image]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[image]], abs=1e-5)


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_start_token_per_image_equals_one_call_per_image(
    make_vit_gpt2: Callable, make_pixels: Callable, setting: str
) -> None:
    check_start_per_image_equals_one_at_a_time(make_vit_gpt2(seed=1), SETTINGS[setting], make_pixels(4, 2))


def test_a_start_token_per_image_is_checked(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model, pixels, config = make_vit_gpt2(seed=1), make_pixels(2, 2), DecodingConfig(max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match=r"starts: one start token per image \(2\), got 1"):
        generate(model, pixels, config=config, starts=[3])
    with pytest.raises(
        InputError, match=f"start_token_id: must be a token id of this model \\(below {model.vocab_size}\\)"
    ):
        generate(model, pixels, config=config, starts=[3, model.vocab_size])


def test_beam_search_with_one_beam_and_early_stopping_is_greedy(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=2)
    pixels = make_pixels(6, 3)
    config = DecodingConfig(max_new_tokens=MAX_NEW, early_stopping=True, length_penalty=1.5)
    with torch.inference_mode():
        beam = beam_search(model, model.encode(pixels), config)
    assert beam == generate(model, pixels, config=config)


@pytest.mark.parametrize("setting", ["greedy", "beam", "warped sample"])
def test_log_prob_and_score_are_the_models(make_vit_gpt2: Callable, make_pixels: Callable, setting: str) -> None:
    configs = {
        "greedy": DecodingConfig(max_new_tokens=MAX_NEW, length_penalty=0.5),
        "beam": DecodingConfig(max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3, length_penalty=0.5),
        "warped sample": DecodingConfig(
            max_new_tokens=MAX_NEW, do_sample=True, temperature=2.0, top_k=4, seed=0, num_return_sequences=3
        ),
    }
    config = configs[setting]
    model = make_vit_gpt2(seed=4)
    pixels = make_pixels(2, 4)
    for image, found in enumerate(generate(model, pixels, config=config)):
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        for hypothesis in found:
            generated = full_ids(hypothesis, model.eos_token_id)
            # The model's own log-probability, even when sampling warped its distribution.
            expected = teacher_forced_log_prob(model, pixels[image : image + 1], generated)
            assert hypothesis.log_prob == pytest.approx(expected, abs=1e-4)
            assert hypothesis.score == pytest.approx(hypothesis.log_prob / len(generated) ** config.length_penalty)


@pytest.mark.parametrize("length_penalty", [-1.0, 5.0])
def test_the_length_penalty_bounds_give_every_image_its_captions(
    make_vit_gpt2: Callable, make_pixels: Callable, length_penalty: float
) -> None:
    config = DecodingConfig(max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3, length_penalty=length_penalty)
    found = generate(make_vit_gpt2(seed=4), make_pixels(3, 4), config=config)
    assert [len(hypotheses) for hypotheses in found] == [3, 3, 3]
    assert all(math.isfinite(h.score) for hypotheses in found for h in hypotheses)


def test_seeded_sampling_repeats_and_leaves_the_global_generator(
    make_vit_gpt2: Callable, make_pixels: Callable
) -> None:
    model = make_vit_gpt2(seed=0)
    pixels = make_pixels(3, 0)
    config = DecodingConfig(max_new_tokens=MAX_NEW, do_sample=True, num_return_sequences=4, seed=11)
    global_state = torch.get_rng_state()
    first = generate(model, pixels, config=config)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert generate(model, pixels, config=config) == first
    other = generate(model, pixels, config=dataclasses.replace(config, seed=12))
    assert [h.token_ids for f in other for h in f] != [h.token_ids for f in first for h in f]
    assert [len(found) for found in first] == [4, 4, 4]


def test_unseeded_sampling_follows_torch_manual_seed(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=0)
    pixels = make_pixels(2, 0)
    config = DecodingConfig(max_new_tokens=MAX_NEW, do_sample=True, num_return_sequences=3)
    with torch.random.fork_rng():  # the global seed set here is not left to later tests
        torch.manual_seed(5)
        first = generate(model, pixels, config=config)
        torch.manual_seed(5)
        assert generate(model, pixels, config=config) == first
        torch.manual_seed(6)  # another global seed, other samples: the global generator is what drew them
        other = generate(model, pixels, config=config)
    assert [h.token_ids for f in other for h in f] != [h.token_ids for f in first for h in f]


@pytest.mark.parametrize(
    "truncation", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "temperature": 5.0}, {"temperature": 1e-4}]
)
def test_sampling_from_the_top_token_only_is_greedy(
    make_vit_gpt2: Callable, make_pixels: Callable, truncation: dict[str, Any]
) -> None:
    model = make_vit_gpt2(seed=5)
    pixels = make_pixels(4, 6)
    greedy = generate(model, pixels, config=DecodingConfig(max_new_tokens=MAX_NEW))
    sampled_config = DecodingConfig(
        max_new_tokens=MAX_NEW, do_sample=True, seed=1, num_return_sequences=2, **truncation
    )
    for found, (best,) in zip(generate(model, pixels, config=sampled_config), greedy, strict=True):
        assert [h.token_ids for h in found] == [best.token_ids] * 2


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 3, 1.0), (0.7, 0, 0.8), (1.3, 5, 0.5), (1.0, 0, 0.999), (1.0, 200, 1.0)],
)
def test_warpers_match_transformers(temperature: float, top_k: int, top_p: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator) * 3
    logits[0, :4] = logits[0].max() + 1.0  # a four-way tie at the top: top-k keeps every tied token
    expected = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = warp_scores(logits.log_softmax(dim=-1), temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    torch.testing.assert_close(ours.softmax(dim=-1), expected.softmax(dim=-1))


# --- arguments and configuration


@pytest.mark.parametrize(
    ("settings", "param", "reason"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens", "in [1, 1024]"),
        ({"max_new_tokens": 2.5}, "max_new_tokens", "must be an integer"),
        ({"num_beams": 0}, "num_beams", "in [1, 64]"),
        ({"num_beams": 65}, "num_beams", "in [1, 64]"),
        ({"num_beams": True}, "num_beams", "must be an integer"),
        ({"num_beams": 4, "num_return_sequences": 5}, "num_return_sequences", "at most 4"),
        ({"num_return_sequences": 2}, "num_return_sequences", "greedy decoding returns 1"),
        ({"do_sample": True, "num_return_sequences": 65}, "num_return_sequences", "in [1, 64]"),
        ({"length_penalty": float("inf")}, "length_penalty", "finite"),
        ({"early_stopping": "sometimes"}, "early_stopping", "true, false or 'never'"),
        ({"early_stopping": 1}, "early_stopping", "true, false or 'never'"),
        ({"do_sample": "yes"}, "do_sample", "true or false"),
        ({"do_sample": True, "num_beams": 2}, "num_beams", "beam sampling"),
        ({"do_sample": True, "temperature": 0.0}, "temperature", ">= 0.0001, got 0 (a smaller temperature is greedy"),
        ({"do_sample": True, "temperature": 5e-5}, "temperature", ">= 0.0001, got 5e-05"),
        ({"length_penalty": 5.5}, "length_penalty", "in [-1, 5], got 5.5"),
        ({"length_penalty": -1.5}, "length_penalty", "in [-1, 5], got -1.5"),
        ({"do_sample": True, "temperature": float("nan")}, "temperature", "finite"),
        ({"do_sample": True, "top_k": -1}, "top_k", ">= 0"),
        ({"do_sample": True, "top_p": 0.0}, "top_p", "(0, 1]"),
        ({"do_sample": True, "top_p": 1.5}, "top_p", "(0, 1]"),
        ({"temperature": 0.7}, "temperature", "only used when sampling"),
        ({"top_k": 5, "num_beams": 4}, "top_k", "only used when sampling"),
        ({"do_sample": True, "seed": -1}, "seed", "in [0, "),
    ],
)
def test_decoding_config_rejects_bad_values(settings: dict[str, Any], param: str, reason: str) -> None:
    with pytest.raises(InputError) as raised:
        DecodingConfig(**settings)
    assert raised.value.source == param
    assert reason in raised.value.reason


def test_decoding_config_strategies() -> None:
    assert DecodingConfig().strategy == "greedy"
    assert DecodingConfig(num_beams=4, num_return_sequences=4, early_stopping="never").strategy == "beam"
    assert DecodingConfig(do_sample=True, num_return_sequences=64, top_k=50, top_p=0.9, seed=0).strategy == "sample"


def test_generate_checks_the_models_length_limit(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2()  # 64 decoder positions
    with pytest.raises(InputError, match="max_new_tokens: must be at most 64"):
        generate(model, make_pixels(1), config=DecodingConfig(max_new_tokens=65))
    assert len(generate(model, make_pixels(1), config=DecodingConfig(max_new_tokens=64))[0]) == 1


def test_generate_from_encoded_and_mode_restored(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=6).train()
    pixels = make_pixels(3, 7)
    config = DecodingConfig(max_new_tokens=MAX_NEW, num_beams=3)
    from_pixels = generate(model, pixels, config=config)
    assert model.training
    with torch.no_grad():
        encoded = model.encode(pixels)
    assert generate(model, encoded=encoded, config=config) == from_pixels
    assert generate(model, pixels[:0], config=config) == []
    with pytest.raises(ValueError, match="exactly one"):
        generate(model, pixels, encoded=encoded, config=config)


def test_decoding_options_table_names_defaults_and_errors() -> None:
    from captionkit.decoding import DEFAULT_BEAMS, decoding_options

    assert decoding_options() == DecodingConfig(num_beams=DEFAULT_BEAMS) and DEFAULT_BEAMS == 4
    assert decoding_options(sample=True, n_best=3) == DecodingConfig(do_sample=True, num_return_sequences=3)
    assert decoding_options(7, max_length=9, beams=2) == DecodingConfig(max_new_tokens=9, num_beams=2, start_token_id=7)
    with pytest.raises(InputError, match=r"^max_length: must be in \[1, 1024\], got 0$"):
        decoding_options(max_length=0)
    with pytest.raises(InputError, match=r"^n_best: beam search returns at most 4 captions per image, got 5"):
        decoding_options(n_best=5)
    with pytest.raises(InputError, match=r"^beams: given twice, as num_beams and as beams$"):
        decoding_options(num_beams=2, beams=3)
    with pytest.raises(InputError, match=r"^temprature: unknown decoding option \(known: beams, do_sample, "):
        decoding_options(temprature=0.5)
