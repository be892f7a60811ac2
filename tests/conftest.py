"""Shared fixtures: tiny models built from configs with seeded random weights, random images; no downloads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import torch

from _data import SHARED_DATA

if TYPE_CHECKING:  # importing transformers only for the tests that build a model
    from captionkit.models.vit_gpt2 import VitGpt2Model


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, in one line, when the real test data is not where the tests look for it."""
    if not (SHARED_DATA / "coco" / "val2017").is_dir():
        raise pytest.UsageError(
            f"no real test data at {SHARED_DATA} (no coco/val2017 there): set CAPTIONKIT_DATA to the shared data folder"
        )


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine tiny models run ~50x faster without thread handoffs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vit_gpt2(
    seed: int = 0,
    vocab_size: int = 16,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
    eos_boost: float = 3.0,
    **overrides: Any,
) -> VitGpt2Model:
    """A tiny random ViT+GPT-2 in eval mode whose hypotheses both end with eos and run to the length limit.

    Weights are drawn with std 0.3 (not 0.02) so that next-token distributions are peaked and near-ties rare.
    The eos row of the (tied) output embedding is scaled by ``eos_boost``: the eos logit then spreads wider
    than the others, making eos very likely in some contexts and unlikely in others.
    """
    from _helpers import tiny_model

    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    overrides = {"vocab_size": vocab_size, "initializer_range": 0.3, **ids, **overrides}
    model = tiny_model("vit-gpt2", seed, **overrides)
    with torch.no_grad():
        model.ved.decoder.lm_head.weight[eos_token_id] *= eos_boost
    return model.eval()


def random_pixels(count: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """(count, 3, size, size) normalised-looking pixels."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_vit_gpt2() -> Callable[..., VitGpt2Model]:
    return tiny_vit_gpt2


@pytest.fixture
def make_pixels() -> Callable[..., torch.Tensor]:
    return random_pixels
