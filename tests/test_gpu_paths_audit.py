"""The CUDA-only code paths, run on the CPU with stand-ins for what needs a GPU.

A captured CUDA graph replays the kernels it recorded, on the tensors it recorded them with: Python that runs while
capturing (an int read from the device, a shape, a branch) is baked into the graph, and a read of the device there is
an error. :class:`RecordedGraph` behaves so on the CPU: while "capturing" it records every aten operation with its
arguments, and a replay runs those operations again on the same tensors, writing into the same outputs. So
``capture_cuda_graph`` itself (not a stand-in for it, as in ``tests/test_graph_cache.py``) decodes here.

A tensor made without ``device=`` is a CPU tensor, which a GPU run mixes with CUDA ones (an error there only): with
torch's default device set to ``meta`` such tensors become meta ones, and :class:`SameDevice` refuses any operation
that mixes them with the model's CPU tensors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any, ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from _helpers import FAMILIES, tiny_model
from captionkit.decoding import DecodingConfig, generate
from captionkit.decoding.engine import STATIC_CACHE_ENV
from captionkit.models import gpt2_graph
from captionkit.models.gpt2_graph import CUDA_GRAPHS_ENV, capture_cuda_graph, graph_cache

pytestmark = pytest.mark.usefixtures("single_thread")

aten = torch.ops.aten
# Operations that wait for the device to read a value back: not allowed while a CUDA stream is capturing.
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.equal.default, aten.is_nonzero.default}


class RecordedGraph:
    """Stands in for ``torch.cuda.CUDAGraph``: the operations recorded while capturing, replayed in order."""

    made: ClassVar[list[RecordedGraph]] = []

    def __init__(self) -> None:
        RecordedGraph.made.append(self)
        # (operation, args, kwargs, [(index among its tensor outputs, the tensor it wrote at capture)])
        self.operations: list[tuple[Any, tuple, dict, list[tuple[int, torch.Tensor]]]] = []
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for operation, args, kwargs, outputs in self.operations:
            fresh = [t for t in tree_leaves(operation(*args, **kwargs)) if isinstance(t, torch.Tensor)]
            for index, captured in outputs:
                captured.copy_(fresh[index])


class Recorder(TorchDispatchMode):
    """Runs and records each operation. Outputs that are new memory are the ones a replay writes back; in-place
    operations and views act on the recorded tensors themselves when run again."""

    def __init__(self, graph: RecordedGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in HOST_READS:
            raise RuntimeError(f"{func} reads the device while a CUDA graph is being captured")
        result = func(*args, **kwargs)
        inputs = {_memory(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        tensors = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
        new = [(index, t) for index, t in enumerate(tensors) if t.numel() and _memory(t) not in inputs]
        self.graph.operations.append((func, args, kwargs, new))
        return result


def _memory(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class Capturing:
    """Stands in for ``torch.cuda.graph``: records into the graph; counts the captures under way at once."""

    active = 0
    most = 0
    modes: ClassVar[list[str]] = []
    hold_s = 0.0  # how long a capture stays under way (to let another thread's overlap it)

    def __init__(self, graph: RecordedGraph, capture_error_mode: str = "global") -> None:
        self.recorder = Recorder(graph)
        Capturing.modes.append(capture_error_mode)

    def __enter__(self) -> None:
        Capturing.active += 1
        Capturing.most = max(Capturing.most, Capturing.active)
        time.sleep(Capturing.hold_s)
        self.recorder.__enter__()

    def __exit__(self, *error: object) -> None:
        self.recorder.__exit__(*error)
        Capturing.active -= 1


class SideStream:
    def wait_stream(self, other: SideStream) -> None:
        pass


@pytest.fixture
def emulated_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.cuda's streams and graphs replaced by the stand-ins above; decoding captures with
    ``capture_cuda_graph`` on the CPU."""
    monkeypatch.setattr(torch.cuda, "Stream", SideStream)
    monkeypatch.setattr(torch.cuda, "current_stream", SideStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", Capturing)
    monkeypatch.setattr(gpt2_graph, "capture_for", lambda device, mode: capture_cuda_graph)
    monkeypatch.setattr(RecordedGraph, "made", [])
    monkeypatch.setattr(Capturing, "modes", [])
    monkeypatch.setattr(Capturing, "most", 0)
    # Prepacked oneDNN weights are opaque tensors, which a replay cannot write back; a GPU never packs.
    monkeypatch.setenv("CAPTIONKIT_PACKED_LINEAR", "0")
    monkeypatch.setenv(STATIC_CACHE_ENV, "1")
    yield


def tokens_and_scores(hypotheses: list[list[Any]]) -> tuple[list[list[list[int]]], list[float]]:
    return [[h.token_ids for h in image] for image in hypotheses], [h.score for image in hypotheses for h in image]


def assert_graphs_decode_as_eager(
    model: Any, batches: tuple[torch.Tensor, ...], config: DecodingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch decodes to the same tokens (scores to 1e-5) with CUDA graphs on as eagerly."""
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    eager = [tokens_and_scores(generate(model, batch, config=config)) for batch in batches]
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    for batch, (tokens, scores) in zip(batches, eager, strict=True):
        found_tokens, found_scores = tokens_and_scores(generate(model, batch, config=config))
        assert found_tokens == tokens
        assert found_scores == pytest.approx(scores, rel=1e-5)


@pytest.mark.parametrize(
    "config",
    [DecodingConfig(max_new_tokens=10, num_beams=4), DecodingConfig(max_new_tokens=10, num_beams=1)],
    ids=["beam", "greedy"],
)
def test_replayed_graphs_decode_the_eager_captions(
    make_vit_gpt2: Callable, make_pixels: Callable, emulated_cuda: None, monkeypatch: pytest.MonkeyPatch, config: Any
) -> None:
    """Every step after a bucket's capture is a replay of what was recorded, on the same buffers: no Python value of
    the capturing call (the position, the live rows) may be baked into it."""
    model, pixels = make_vit_gpt2(seed=0), make_pixels(9, 3)
    batches = (pixels[:8], pixels[:5], pixels[:8], pixels)
    assert_graphs_decode_as_eager(model, batches, config, monkeypatch)
    assert len(graph_cache(model.ved.decoder).oldest_first()) == 2  # 8 and 5 images share a bucket, 9 do not
    assert Capturing.modes == ["thread_local", "thread_local"]
    # The first token of a call runs eagerly, each of its 9 others is a replay (capturing ran on empty buffers).
    assert [graph.replays for graph in RecordedGraph.made] == [27, 9]


def test_two_threads_capture_one_after_the_other(emulated_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.graph captures on one side stream shared by the whole process and synchronises the device on
    entry: a capture while another thread's is under way (two calls whose buckets are new, or in use) breaks both."""
    monkeypatch.setattr(Capturing, "hold_s", 0.2)
    start = threading.Barrier(2)
    replays: list[torch.Tensor] = []

    def capture() -> None:
        start.wait()
        replays.append(capture_cuda_graph(lambda: torch.ones(2) * 2)())  # type: ignore[arg-type]

    threads = [threading.Thread(target=capture) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (Capturing.most, Capturing.modes) == (1, ["thread_local", "thread_local"])
    assert [replay.tolist() for replay in replays] == [[2.0, 2.0], [2.0, 2.0]]


def test_prefix_captioning_replays_its_graphs_with_the_eager_captions(
    make_pixels: Callable, emulated_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prefix-gpt2 has no cross-attention: its buckets round rows (not images) up, and its prefix positions come
    before the first token."""
    model, pixels = tiny_model("prefix-gpt2", seed=0).eval(), make_pixels(6, 4)
    config = DecodingConfig(max_new_tokens=8, num_beams=3)
    batches = (pixels[:3], pixels, pixels[:4])
    assert_graphs_decode_as_eager(model, batches, config, monkeypatch)
    assert [graph.replays for graph in RecordedGraph.made] == [14, 7]


class SameDevice(TorchDispatchMode):
    """Refuses an operation that mixes tensors of two devices (0-dim ones aside, which CUDA takes from the CPU)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim()]
        devices = {t.device.type for t in tensors}
        if len(devices) > 1:
            raise RuntimeError(f"{func} mixes tensors on {sorted(devices)}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("static", ["0", "1"])
def test_decoding_makes_no_tensor_off_the_model_device(
    family: str, static: str, make_pixels: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor made without ``device=`` lands on the CPU, which a GPU run then mixes with CUDA tensors: an error
    there, none on a CPU. Here torch's default device is ``meta`` while the model decodes on the CPU, so such a
    tensor is a meta one, and :class:`SameDevice` refuses the first operation that mixes it with the model's."""
    model, pixels = tiny_model(family, seed=0).eval(), make_pixels(3, 2)
    monkeypatch.setenv(STATIC_CACHE_ENV, static)
    configs = (
        DecodingConfig(max_new_tokens=6, num_beams=3),
        DecodingConfig(max_new_tokens=6, do_sample=True, seed=1, num_return_sequences=2),
    )
    for config in configs:
        expected = tokens_and_scores(generate(model, pixels, config=config))
        with torch.device("meta"), SameDevice():
            assert tokens_and_scores(generate(model, pixels, config=config)) == expected


def test_a_benchmarks_fp32_reference_captions_run_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CAPTIONKIT_CUDA_GRAPHS=compile the benchmark's fp32 reference pass compiled the step too (minutes on a
    GPU, a second compilation before the timed dtype's): it now runs eagerly; the timed passes keep the mode."""
    from captionkit import benchmark
    from captionkit.benchmark import BenchmarkSettings

    monkeypatch.setenv(CUDA_GRAPHS_ENV, "compile")
    modes: list[str | None] = []
    real = benchmark._captions

    def recording(*args: Any, **kwargs: Any) -> list[list[int]]:
        modes.append(gpt2_graph.graph_mode())
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "_captions", recording)
    monkeypatch.setattr(benchmark, "_peaks_in_child", lambda settings, engine: (None, None))  # a process each: slow
    # Decoding itself reads no mode on the CPU without a static cache: the recorded mode is what a GPU's would be.
    benchmark.run_benchmark(BenchmarkSettings(preset="tiny", batch_size=1, beams=1, max_length=2, repeats=1))
    assert modes[0] is None and len(modes) > 1 and set(modes[1:]) == {"compile"}


def test_eager_steps_overrides_the_environment_and_nests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    assert gpt2_graph.graph_mode() == "graphs"
    with gpt2_graph.eager_steps():
        assert gpt2_graph.graph_mode() is None
        with gpt2_graph.eager_steps():
            assert gpt2_graph.graph_mode() is None
        assert gpt2_graph.graph_mode() is None
    assert gpt2_graph.graph_mode() == "graphs"
