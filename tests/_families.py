"""Checks every model family must pass, shared by tests/test_prefix_gpt2.py and tests/test_cnn_lstm.py.

Each takes a ``make(seed, vocab_size)`` that builds a tiny eval-mode model with peaked random weights. The brute
force enumeration and hypothesis helpers come from tests/test_decoding.py, where the engine is checked on vit-gpt2.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from _helpers import tiny_model
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.decoding import DecodingConfig, Hypothesis, generate
from captionkit.decoding.beam import beam_search
from captionkit.models.base import CaptionModel

MAX_NEW = 8
Make = Callable[..., CaptionModel]


def peaked(
    family: str, seed: int = 0, vocab_size: int = 16, std: float = 0.3, eos_boost: float = 3.0, **overrides
) -> CaptionModel:
    """A tiny eval-mode model of ``family`` (ids pad 0, bos 1, eos 2), decoder-side weights redrawn from N(0, std).

    Larger-than-usual weights make next-token distributions peaked (near-ties rare, captions that differ between
    images); the eos output row scaled by ``eos_boost`` makes eos likely in some contexts and unlikely in others.
    """
    model = tiny_model(family, seed, vocab_size=vocab_size, **overrides)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Decoder-side weights and embeddings; the encoder, norms and biases keep their usual start (a redrawn
            # ResNet's features grow by orders of magnitude through its eval-mode batch norms).
            if parameter.ndim >= 2 and not name.startswith("encoder."):
                parameter.normal_(0.0, std)
        output_rows(model)[model.eos_token_id] *= eos_boost
    return model.eval()


def output_rows(model: CaptionModel) -> torch.Tensor:
    """The output projection's weight (V, D) of a tiny model."""
    if hasattr(model, "gpt2"):
        return model.gpt2.lm_head.weight
    return model.output.weight


def full_ids(hypothesis: Hypothesis, eos: int) -> list[int]:
    return hypothesis.token_ids + [eos] * hypothesis.finished


def teacher_forced_log_prob(model: Any, pixels: torch.Tensor, generated: list[int]) -> float:
    """Sum of log p(token | prefix) over ``generated`` (eos included) by one teacher-forced pass."""
    input_ids = torch.tensor([[model.bos_token_id, *generated]])
    with torch.no_grad():
        log_probs = model(pixels, input_ids).log_softmax(dim=-1)[0, :-1]
    return float(log_probs.gather(1, torch.tensor(generated)[:, None]).sum())


def brute_force_ranking(model: Any, pixels: torch.Tensor, max_new: int, length_penalty: float) -> list[tuple]:
    """Every caption the model can produce within ``max_new`` tokens, scored like beam search, best first."""
    eos, vocab = model.eos_token_id, model.vocab_size
    words = [token for token in range(vocab) if token != eos]
    candidates = [[*prefix, eos] for n in range(max_new) for prefix in itertools.product(words, repeat=n)]
    candidates += [[*prefix] for prefix in itertools.product(words, repeat=max_new)]  # cut at the limit
    ranked = []
    for length in range(1, max_new + 1):
        group = [c for c in candidates if len(c) == length]
        input_ids = torch.tensor([[model.bos_token_id, *c] for c in group])
        with torch.no_grad():
            log_probs = model(pixels.expand(len(group), -1, -1, -1), input_ids).log_softmax(dim=-1)[:, :-1]
        sums = log_probs.gather(2, input_ids[:, 1:, None]).squeeze(2).sum(dim=1)
        ranked += [(float(s) / length**length_penalty, c) for s, c in zip(sums, group, strict=True)]
    return sorted(ranked, key=lambda item: -item[0])


def pixels(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def check_beam_one_is_greedy(model: CaptionModel) -> None:
    images = pixels(5, 3)
    config = DecodingConfig(max_new_tokens=MAX_NEW, early_stopping=True)
    greedy = generate(model, images, config=config)
    with torch.inference_mode():
        beam = beam_search(model, model.encode(images), config)
    assert [[h.token_ids for h in found] for found in beam] == [[h.token_ids for h in found] for found in greedy]
    assert [h.finished for found in beam for h in found] == [h.finished for found in greedy for h in found]
    # Scores agree to float32 rounding (the searches run the LSTM cell on different numbers of rows).
    scores = [h.score for found in beam for h in found]
    assert scores == pytest.approx([h.score for found in greedy for h in found], abs=1e-5)
    # Not a degenerate model: images get different captions.
    assert len({tuple(found[0].token_ids) for found in greedy}) > 1


SETTINGS = {
    "greedy": DecodingConfig(max_new_tokens=MAX_NEW),
    "beam": DecodingConfig(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=2),
    "sample": DecodingConfig(max_new_tokens=MAX_NEW, do_sample=True, num_return_sequences=3, top_k=8, seed=7),
}


def check_batched_equals_one_at_a_time(model: CaptionModel, setting: str) -> None:
    images = pixels(4, 2)
    config = SETTINGS[setting]
    batched = generate(model, images, config=config)
    for image in range(4):
        alone = generate(model, images[image : image + 1], config=config, image_offset=image)[0]
        assert [h.token_ids for h in alone] == [h.token_ids for h in batched[image]]
        # Batch size changes float32 rounding in the matmuls; peaked weights make it ~1e-5 of the logits.
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[image]], abs=1e-4)
    check_start_per_image_equals_one_at_a_time(model, config, images)
    first = batched[0][0]  # the engine's log-probability is the model's teacher-forced one
    expected = teacher_forced_log_prob(model, images[:1], full_ids(first, model.eos_token_id))
    assert first.log_prob == pytest.approx(expected, abs=1e-4)


def check_start_per_image_equals_one_at_a_time(
    model: CaptionModel, config: DecodingConfig, images: torch.Tensor
) -> None:
    """``generate(..., starts=...)`` (each image its own start token, as a style run's SCST batch) decodes each of
    the 4 ``images`` as a call of its own with that ``start_token_id`` would; None is the config's start (bos)."""
    starts = [None, 3, 5, 3]
    mixed = generate(model, images, config=config, starts=starts)
    for image, start in enumerate(starts):
        own = replace(config, start_token_id=start)
        alone = generate(model, images[image : image + 1], config=own, image_offset=image)[0]
        assert [h.token_ids for h in alone] == [h.token_ids for h in mixed[image]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in mixed[image]], abs=1e-4)
    plain = generate(model, images, config=config)
    # The starts were used: captions or their log-probabilities differ from the plain start's.
    changed = [
        (m[0].token_ids, round(m[0].log_prob, 4)) != (p[0].token_ids, round(p[0].log_prob, 4))
        for m, p in zip(mixed, plain, strict=True)
    ]
    assert changed == [False, True, True, True]


def check_beam_finds_brute_force_best(model: CaptionModel) -> None:
    # vocabulary 5, 3 new tokens: 20 beams never prune a prefix; "never" + penalty 1 is the exact stopping rule.
    endings = 0
    for image in range(2):
        images = pixels(2, 5)[image : image + 1]
        ranking = brute_force_ranking(model, images, 3, 1.0)
        config = DecodingConfig(max_new_tokens=3, num_beams=20, num_return_sequences=5, early_stopping="never")
        found = generate(model, images, config=config)[0]
        assert [full_ids(h, model.eos_token_id) for h in found] == [ids for _, ids in ranking[:5]]
        torch.testing.assert_close(torch.tensor([h.score for h in found]), torch.tensor([s for s, _ in ranking[:5]]))
        endings += sum(h.finished for h in found)
    assert 0 < endings < 10  # both eos endings and endings at the length limit are among the best


def check_steps_equal_teacher_forcing(model: CaptionModel, atol: float = 1e-5) -> None:
    """Step-by-step log-probs, with rows expanded, permuted and dropped between steps, equal teacher forcing."""
    images = pixels(2, 1)
    row_image = torch.tensor([0, 0, 1, 1, 1])
    sequences = torch.randint(0, model.vocab_size, (5, 6), generator=torch.Generator().manual_seed(1))
    sequences[:, 0] = model.bos_token_id
    reorders = {3: torch.tensor([1, 0, 4, 2, 3]), 4: torch.tensor([0, 2, 3, 4]), 5: torch.tensor([3, 2, 1, 0])}
    with torch.no_grad():
        teacher = model(images[row_image], sequences).log_softmax(dim=-1)
        state = model.init_state(model.encode(images))
        first, state = model.step(sequences[[0, 2], 0], state)
        torch.testing.assert_close(first, teacher[[0, 2], 0], rtol=0, atol=atol)
        state, rows = model.reorder_state(state, row_image, tuple(row_image.tolist())), torch.arange(5)
        for position in range(1, 6):
            if position in reorders:
                rows = rows[reorders[position]]
                state = model.reorder_state(state, reorders[position], tuple(row_image[rows].tolist()))
            stepped, state = model.step(sequences[rows, position], state)
            torch.testing.assert_close(stepped, teacher[rows, position], rtol=0, atol=atol)


def check_round_trip(model: CaptionModel, directory: Path) -> CaptionModel:
    """Save, load with the family's class; same config, ids, logits and captions. Returns the loaded model."""
    model.save_pretrained(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = type(model).from_pretrained(directory)
    assert not loaded.training
    assert loaded.config == model.config
    ids = (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id)
    assert ids == (model.bos_token_id, model.eos_token_id, model.pad_token_id)
    images = pixels(3, 3)
    input_ids = torch.randint(0, model.vocab_size, (3, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(images, input_ids), model(images, input_ids))
    config = DecodingConfig(max_new_tokens=MAX_NEW, num_beams=3)
    assert generate(loaded, images, config=config) == generate(model, images, config=config)
    return loaded


def check_frozen_parts_get_no_gradient(model: CaptionModel, frozen: torch.nn.Module) -> None:
    model.train()
    assert not frozen.training  # no dropout, batch norms keep their statistics
    buffers = {name: b.clone() for name, b in frozen.named_buffers()}
    input_ids = torch.randint(0, model.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    model(pixels(2), input_ids).logsumexp(dim=-1).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert all(torch.equal(b, buffers[name]) for name, b in frozen.named_buffers())


def train_tiny(family: str, tmp_path: Path, *overrides: str) -> list[dict]:
    """Train a tiny ``family`` model a few steps on synthetic scenes with ``captionkit train``'s code; the log."""
    from captionkit.config import load_train_config
    from captionkit.training.loop import train

    scenes = write_synthetic_dataset(tmp_path / "scenes", 48, 8, 4, seed=0, image_size=32)
    config = load_train_config(
        None,
        [
            f"model.family={family}",
            "model.preset=tiny",
            f"data.train={scenes}",
            f"data.val={scenes}",
            "data.first_caption_only=true",
            "data.cache_images=true",
            "tokenizer.vocab_size=200",
            "train.steps=10",
            "train.batch_size=16",
            "train.warmup_steps=1",
            "train.eval_every=5",
            "train.log_every=5",
            "train.lr=3e-3",
            *overrides,
        ],
    )
    entries: list[dict] = []
    train(config, tmp_path / "model", log=entries.append)
    return entries
