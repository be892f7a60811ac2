"""The token loop's host synchronisations, counted on the CPU: one per step (which rows or images go on).

On a GPU every value a Python ``if`` reads from a tensor waits for the device; the loop is built so that the only such
read per step is the list of rows (greedy) or images (beam search) that continue. A ``TorchFunctionMode`` sees every
tensor operation, so the reads that would synchronise are counted here without a GPU: ``tolist``, ``item``,
``bool``/``int``/``float`` of a tensor, copies to the host (``cpu``, ``numpy``, ``to("cpu")``), the operations whose
result's size or value depends on the data (``unique``, ``equal``, ``allclose``, ``nonzero``, ``masked_select``),
``multinomial`` (which checks its input with reads of its own) and indexing with a boolean mask. So are the copies
the other way that wait: a tensor made from Python data (``torch.tensor``, ``torch.as_tensor``, ``new_tensor``, ...)
is copied from pageable host memory, which on a GPU waits for the device's queue. The models' own steps and reorders
run inside the counted span.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from _families import peaked
from _helpers import FAMILIES, tiny_model
from captionkit.decoding import DecodingConfig
from captionkit.decoding.beam import beam_search
from captionkit.decoding.greedy import greedy_or_sample
from captionkit.decoding.steps import kept_rows
from captionkit.models.base import CaptionModel, reserved_positions
from captionkit.models.gpt2_graph import CUDA_GRAPHS_ENV, graph_cache

pytestmark = pytest.mark.usefixtures("single_thread")

_READS = {
    torch.Tensor.tolist,
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.unique,
    torch.Tensor.unique,
    torch.unique_consecutive,
    torch.Tensor.unique_consecutive,
    torch.equal,
    torch.Tensor.equal,
    torch.allclose,
    torch.Tensor.allclose,
    torch.nonzero,
    torch.Tensor.nonzero,
    torch.masked_select,
    torch.Tensor.masked_select,
    # multinomial checks its probabilities with two reads of the device per call (one call per image and step).
    torch.multinomial,
    torch.Tensor.multinomial,
}
# Tensors made from host data: on a GPU a copy from pageable memory, which waits until the device has caught up. An
# empty one copies nothing (transformers' caches start from ``torch.tensor([])``) and is not counted.
_HOST_COPIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor, torch.Tensor.new_tensor}


class _Events(TorchFunctionMode):
    """The model steps and the host reads of tensor values, in order, while active; and every reorder's arguments."""

    def __init__(self, model: CaptionModel) -> None:
        super().__init__()
        self.events: list[str] = []
        self.reorders: list[tuple[torch.Tensor, tuple[int, ...]]] = []
        step, reorder_state = model.step, model.reorder_state

        def counted_step(*args: Any, **kwargs: Any) -> Any:
            self.events.append("step")
            return step(*args, **kwargs)

        def recorded_reorder(state: Any, index: torch.Tensor, row_image: tuple[int, ...]) -> Any:
            self.reorders.append((index.clone(), row_image))
            return reorder_state(state, index, row_image)

        model.step = counted_step  # type: ignore[method-assign]
        model.reorder_state = recorded_reorder  # type: ignore[method-assign]

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _READS or _is_masked_index(func, args) or _is_copy_to_host(func, args, kwargs or {}):
            self.events.append(getattr(func, "__name__", str(func)))
        result = func(*args, **(kwargs or {}))
        if func in _HOST_COPIES and result.numel() > 0:
            self.events.append(f"copy from the host ({func.__name__})")
        return result


def _search(model: CaptionModel, search: Callable, config: DecodingConfig, images: int) -> _Events:
    """What one ``search`` over random images did, recorded."""
    with torch.no_grad():
        encoded = model.eval().encode(torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
        events = _Events(model)
        with events:
            search(model, encoded, config)
    return events


def _reads_between_steps(model: CaptionModel, search: Callable, config: DecodingConfig, images: int) -> list[list[str]]:
    """The host reads between each two consecutive model steps of one ``search`` over random images."""
    events = _search(model, search, config, images)
    steps = _steps(events)
    assert len(steps) >= 3
    return [events.events[a + 1 : b] for a, b in itertools.pairwise(steps)]


def _steps(events: _Events) -> list[int]:
    return [i for i, event in enumerate(events.events) if event == "step"]


def _is_masked_index(func: Any, args: Any) -> bool:
    if func is not torch.Tensor.__getitem__:
        return False
    parts = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


def _is_copy_to_host(func: Any, args: Any, kwargs: dict[str, Any]) -> bool:
    """``tensor.to("cpu")``: on a GPU a copy the host waits for. Only the spelled-out host is told apart here: on the
    CPU, ``.to(other.device)`` (a no-op on a GPU too) looks the same as a copy to the host."""
    return func is torch.Tensor.to and "cpu" in (*args[1:], kwargs.get("device"))


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
    events = _search(model, search, config, images=6)
    between = [events.events[a + 1 : b] for a, b in itertools.pairwise(_steps(events))]
    # Inside the token loop: exactly one read (the list of which rows or images go on) between two model steps, and
    # no copy from the host, also on the steps where rows or images end and the batch shrinks.
    assert len(between) >= 3 and between == [["tolist"]] * len(between)
    assert len(events.reorders[-1][1]) < len(events.reorders[0][1])


@pytest.mark.parametrize(
    ("search", "config"),
    [
        (beam_search, DecodingConfig(num_beams=3, num_return_sequences=2, max_new_tokens=12)),
        (greedy_or_sample, DecodingConfig(max_new_tokens=12)),
        (greedy_or_sample, DecodingConfig(do_sample=True, num_return_sequences=2, seed=3, max_new_tokens=12)),
    ],
    ids=["beam", "greedy", "sample"],
)
def test_results_are_read_a_tensor_at_a_time(make_vit_gpt2: Callable, search: Callable, config: DecodingConfig) -> None:
    # After the last step the hypotheses are read back whole tensors at once, never a value per row or image.
    model = make_vit_gpt2(seed=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    events = _search(model, search, config, images=6)
    after = events.events[_steps(events)[-1] + 1 :]
    assert set(after) == {"tolist"} and len(after) <= 6


def test_kept_rows_are_the_true_positions_in_order() -> None:
    generator = torch.Generator().manual_seed(0)
    for size in (1, 5, 64, 300):
        going_on = torch.rand(size, generator=generator) < 0.6
        expected = going_on.nonzero().squeeze(1)
        assert torch.equal(kept_rows(going_on, expected.numel()), expected)


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


@pytest.mark.parametrize("family", ["vit-gpt2", "prefix-gpt2"])
def test_gpt2_reorders_read_nothing_while_images_close(make_vit_gpt2: Callable, family: str) -> None:
    # Images close at different steps (peaked weights, eos made likely), so reorders both keep every row on its
    # image and drop images (vit-gpt2 then drops their cross-attention keys/values): the reorder's bookkeeping comes
    # from the host's row map, so beam search's one read per step stays the only one.
    model = make_vit_gpt2(seed=1) if family == "vit-gpt2" else peaked(family, seed=1)
    config = DecodingConfig(num_beams=3, max_new_tokens=12, early_stopping=True)
    events = _search(model, beam_search, config, images=6)
    steps = _steps(events)
    between = [events.events[a + 1 : b] for a, b in itertools.pairwise(steps)]
    assert between == [["tolist"]] * len(between)
    images_left = [len(set(row_image)) for _, row_image in events.reorders]
    assert images_left[0] == 6 and 1 <= images_left[-1] < 6


@pytest.mark.parametrize(
    "config",
    [
        DecodingConfig(num_beams=3, max_new_tokens=12, early_stopping=True),
        DecodingConfig(max_new_tokens=12),
        DecodingConfig(do_sample=True, num_return_sequences=2, seed=3, max_new_tokens=12),
    ],
    ids=["beam", "greedy", "sample"],
)
def test_engine_tells_each_reorder_the_image_of_every_row(make_vit_gpt2: Callable, config: DecodingConfig) -> None:
    model = make_vit_gpt2(seed=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    reorders = _search(model, beam_search if config.num_beams > 1 else greedy_or_sample, config, images=6).reorders
    truth = torch.arange(6)  # the image of each row of init_state's batch, followed through every reorder
    for index, row_image in reorders:
        truth = truth.index_select(0, index)
        assert row_image == tuple(truth.tolist())
    assert len(reorders) >= 2 and len(reorders[-1][1]) < len(reorders[0][1])  # rows did leave
