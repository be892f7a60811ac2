"""The token loop's host synchronisations, counted on the CPU: one per step (which rows or images go on).

On a GPU every value a Python ``if`` reads from a tensor waits for the device; the loop is built so that the only such
read per step is the list of rows (greedy) or images (beam search) that continue. A ``TorchFunctionMode`` sees every
tensor operation, so the reads that would synchronise are counted here without a GPU: ``tolist``, ``item``,
``bool``/``int``/``float`` of a tensor, ``nonzero`` and indexing with a boolean mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from _helpers import FAMILIES, tiny_model
from captionkit.decoding import DecodingConfig
from captionkit.decoding.beam import beam_search
from captionkit.decoding.greedy import greedy_or_sample
from captionkit.models.base import CaptionModel, reserved_positions
from captionkit.models.gpt2_graph import CUDA_GRAPHS_ENV, graph_cache

pytestmark = pytest.mark.usefixtures("single_thread")

_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__}


class _Events(TorchFunctionMode):
    """The model steps and the host reads of tensor values, in order, while active."""

    def __init__(self, model: CaptionModel) -> None:
        super().__init__()
        self.events: list[str] = []
        original = model.step

        def step(*args: Any, **kwargs: Any) -> Any:
            self.events.append("step")
            return original(*args, **kwargs)

        model.step = step  # type: ignore[method-assign]

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _READS or (func is torch.Tensor.__getitem__ and _has_mask(args[1])):
            self.events.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _reads_between_steps(model: CaptionModel, search: Callable, config: DecodingConfig, images: int) -> list[list[str]]:
    """The host reads between each two consecutive model steps of one ``search`` over random images."""
    with torch.no_grad():
        encoded = model.eval().encode(torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
        events = _Events(model)
        with events:
            search(model, encoded, config)
    steps = [i for i, event in enumerate(events.events) if event == "step"]
    assert len(steps) >= 3
    return [events.events[a + 1 : b] for a, b in itertools.pairwise(steps)]


def _has_mask(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


@pytest.mark.parametrize(
    ("search", "config"),
    [
        (beam_search, DecodingConfig(num_beams=4, max_new_tokens=12)),
        (beam_search, DecodingConfig(num_beams=3, num_return_sequences=3, max_new_tokens=12, early_stopping=True)),
        (greedy_or_sample, DecodingConfig(max_new_tokens=12)),
        (greedy_or_sample, DecodingConfig(do_sample=True, num_return_sequences=2, seed=3, max_new_tokens=12)),
    ],
    ids=["beam", "beam-early", "greedy", "sample"],
)
def test_one_host_read_between_token_steps(make_vit_gpt2: Callable, search: Callable, config: DecodingConfig) -> None:
    model = make_vit_gpt2(seed=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    between = _reads_between_steps(model, search, config, images=6)
    # Inside the token loop: exactly one read (the list of which rows or images go on) between two model steps.
    assert between == [["tolist"]] * len(between)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_family_step_reads_from_the_device(family: str) -> None:
    between = _reads_between_steps(tiny_model(family, seed=2), beam_search, DecodingConfig(num_beams=3), images=3)
    assert between == [["tolist"]] * len(between)


def test_fixed_shape_steps_add_no_host_read(make_vit_gpt2: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA graphs' step (run eagerly on the CPU), its bucket captured by the first call and reused by the second.
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    model = make_vit_gpt2(seed=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = DecodingConfig(num_beams=4, max_new_tokens=12)
    with reserved_positions(config.max_new_tokens):  # the static cache, as generate asks for it on a GPU
        for _ in range(2):
            between = _reads_between_steps(model, beam_search, config, images=6)
            assert between == [["tolist"]] * len(between)
    assert len(graph_cache(model.ved.decoder)) == 1
