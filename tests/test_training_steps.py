"""The cross-entropy step the trainer runs: accumulation over micro-batches is one big batch's token mean, and a
timed step reports where its time went."""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import pytest
import torch

from captionkit.config import TrainSection
from captionkit.data.dataset import Batch
from captionkit.training import timing
from captionkit.training.loss import caption_loss_sum
from captionkit.training.steps import CrossEntropyStep
from captionkit.training.timing import PHASES, PhaseTimer

CPU = torch.device("cpu")


def micro_batch(pixels: torch.Tensor, lengths: list[int], seed: int) -> Batch:
    """Captions of the given lengths (bos ... eos), right-padded with 0."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, 16, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = 1, 2
        mask[row, :length] = 1
    return Batch(pixels, ids, mask, [f"image{i}" for i in range(len(lengths))], 0)


def step_for(model: torch.nn.Module, **settings: object) -> CrossEntropyStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: gradients are compared
    return CrossEntropyStep(model, optimizer, TrainSection(grad_clip=0.0, **settings), CPU)  # type: ignore[arg-type]


def test_micro_batches_give_the_token_mean_loss_and_gradient_of_one_batch(make_vit_gpt2, make_pixels, single_thread):
    model = make_vit_gpt2()
    reference = copy.deepcopy(model)
    micro = [micro_batch(make_pixels(2, seed=1), [5, 3], seed=1), micro_batch(make_pixels(3, seed=2), [7, 2, 4], 2)]
    output = step_for(model)(micro, step=0)

    sums, counts = [], []
    for batch in micro:
        logits = reference(batch.pixel_values, batch.input_ids, batch.attention_mask)
        loss_sum, count = caption_loss_sum(logits, batch.input_ids, batch.attention_mask)
        sums.append(loss_sum)
        counts.append(count)
    assert counts == [4 + 2, 6 + 1 + 3]  # predicted tokens: every real one after bos
    expected = sum(sums) / sum(counts)
    expected.backward()
    assert output is not None and output.loss.dtype == torch.float64 and output.loss.device == CPU
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    compared = 0
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        if want.grad is not None:
            assert torch.allclose(got.grad, want.grad, atol=1e-6), name
            compared += 1
    assert compared > 10


def test_a_step_without_tokens_does_nothing(make_vit_gpt2, make_pixels):
    model = make_vit_gpt2()
    empty = Batch(torch.empty(0), torch.empty(0, 0, dtype=torch.long), torch.empty(0, 0, dtype=torch.long), [], 1)
    assert step_for(model)([empty], step=0) is None
    assert all(p.grad is None for p in model.parameters())


def test_a_timed_step_splits_its_time_into_the_four_phases(make_vit_gpt2, make_pixels, single_thread, monkeypatch):
    # A clock that moves 1 s each time it is read: each lap books exactly the reads between it and the previous one.
    ticks = itertools.count()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    model = make_vit_gpt2()
    timer = PhaseTimer(CPU, enabled=True)
    batches = [micro_batch(make_pixels(2), [4, 6], seed=0), micro_batch(make_pixels(2), [3, 5], seed=1)]
    step_for(model, precision="bf16")(batches, step=0, timer=timer)
    # Two micro-batches, each a forward and a backward lap, then one optimizer lap; nothing drawn in between.
    assert timer.split() == {"data": 0.0, "forward": 2.0, "backward": 2.0, "optimizer": 1.0}
    assert list(timer.split()) == list(PHASES)
    assert PhaseTimer(CPU, enabled=False).split() == {}
