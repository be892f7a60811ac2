"""The captured fixed-shape decoder steps (CUDA graphs on a GPU) kept across decoding calls, checked on the CPU.

Capturing is replaced by a stand-in that behaves like a CUDA graph where it matters: one warm-up run at capture
time, then every call writes into the same output tensor. The bucket choice, the least-recently-used bound, the
sharing rules and the release are plain Python around it.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from captionkit.decoding import DecodingConfig, generate
from captionkit.decoding.engine import STATIC_CACHE_ENV
from captionkit.errors import ConfigError
from captionkit.models import gpt2_graph
from captionkit.models.gpt2_graph import (
    CUDA_GRAPHS_ENV,
    GraphCache,
    choose_bucket,
    graph_cache,
    graph_mode,
    release_graphs,
    static_step_for,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
CONFIG = DecodingConfig(max_new_tokens=12, num_beams=4)


class FakeCapture:
    """Counts captures; each behaves like a CUDA graph: a warm-up run, then one output tensor for every call."""

    def __init__(self) -> None:
        self.captured = 0

    def capture(self, run: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        self.captured += 1
        output = run().clone()  # the warm-up moves the position on, as a real capture's does

        def replay() -> torch.Tensor:
            return output.copy_(run())

        return replay

    def for_device(self, device: torch.device, mode: str) -> Callable[..., Any]:
        assert device == CPU and mode == "graphs"
        return self.capture


@pytest.fixture
def fake_capture(monkeypatch: pytest.MonkeyPatch) -> FakeCapture:
    fake = FakeCapture()
    monkeypatch.setattr(gpt2_graph, "capture_for", fake.for_device)
    monkeypatch.setenv(STATIC_CACHE_ENV, "1")
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    return fake


@dataclass
class CacheStub:
    cache: torch.Tensor  # (layers, 2, rows, heads, capacity, head_dim)
    cross: torch.Tensor | None  # (layers, 2, images, heads, tokens, head_dim)
    length: int
    group: int


def cache_state(
    rows: int, capacity: int, images: int = 0, group: int = 0, length: int = 1, layers: int = 2, width: int = 8
) -> Any:
    """A decoder state's cache as a step sees it: 2 heads of ``width / 2``, 7 image tokens when ``images``."""
    own = torch.randn(layers, 2, rows, 2, capacity, width // 2)
    cross = torch.randn(layers, 2, images, 2, 7, width // 2) if images else None
    return CacheStub(own, cross, length, group)


def tokens_and_scores(hypotheses: list[list[Any]]) -> tuple[list[list[list[int]]], list[float]]:
    tokens = [[h.token_ids for h in image] for image in hypotheses]
    return tokens, [h.score for image in hypotheses for h in image]


# --- buckets and the cache, without a model -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "limit", "bucket"),
    [
        ((20, 12, 5, 4), 64, (32, 16, 8, 4, 7)),  # 5 images of 4 beams: 8 images, 16 positions
        ((32, 12, 8, 4), 64, (32, 16, 8, 4, 7)),  # 8 images: the same bucket
        ((36, 16, 9, 4), 64, (64, 16, 16, 4, 7)),
        ((9, 17, 9, 1), 64, (16, 32, 16, 1, 7)),  # greedy: one row per image
        ((3, 12, 0, 0), 64, (4, 16, 0, 0, 0)),  # no cross-attention (prefix captioning): rows rounded
        ((1, 18, 0, 0), 20, (1, 20, 0, 0, 0)),  # never past the model's positions
    ],
)
def test_buckets_round_images_up_to_powers_of_two_and_positions_to_sixteen(
    state: tuple[int, int, int, int], limit: int, bucket: tuple[int, ...]
) -> None:
    rows, capacity, images, group = state
    chosen = choose_bucket(cache_state(rows, capacity, images, group), limit)
    assert (chosen.rows, chosen.capacity, chosen.images, chosen.group, chosen.cross_tokens) == bucket
    assert (chosen.dtype, chosen.device) == (torch.float32, CPU)


def test_the_cache_reuses_by_key_and_evicts_the_least_recently_used() -> None:
    built: list[str] = []

    def build(key: str) -> Callable[[], str]:
        return lambda: built.append(key) or f"step {key}"  # type: ignore[func-returns-value]

    cache: GraphCache[str, str] = GraphCache(2)
    assert [cache.get(key, build(key)) for key in ("a", "b", "a")] == ["step a", "step b", "step a"]
    assert built == ["a", "b"] and cache.oldest_first() == ["b", "a"]  # "a" used last
    cache.get("c", build("c"))  # over the bound: "b", the least recently used, goes
    assert cache.oldest_first() == ["a", "c"] and len(cache) == 2
    cache.get("b", build("b"))
    assert built == ["a", "b", "c", "b"] and cache.oldest_first() == ["c", "b"]
    cache.clear()
    assert len(cache) == 0


def test_the_graph_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, mode in (("", None), ("0", None), ("1", "graphs"), ("compile", "compile")):
        monkeypatch.setenv(CUDA_GRAPHS_ENV, value)
        assert graph_mode() == mode
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "yes")
    with pytest.raises(ConfigError, match="must be 0, 1 or compile \\(or unset\\), got 'yes'"):
        graph_mode()


# --- across decoding calls ---------------------------------------------------------------------------------------


def test_decoding_calls_of_one_bucket_reuse_its_captured_step_with_the_eager_captions(
    make_vit_gpt2: Callable, make_pixels: Callable, fake_capture: FakeCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, pixels = make_vit_gpt2(seed=0), make_pixels(9, 3)
    batches = (pixels[:8], pixels[:5], pixels[:8], pixels)  # 8 and 5 images share a bucket; 9 do not
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    eager = [tokens_and_scores(generate(model, batch, config=CONFIG)) for batch in batches]
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    captured = []
    for batch, (tokens, scores) in zip(batches, eager, strict=True):
        found_tokens, found_scores = tokens_and_scores(generate(model, batch, config=CONFIG))
        assert found_tokens == tokens  # padded rows and the earlier calls' leftovers change nothing
        assert found_scores == pytest.approx(scores, rel=1e-5)
        captured.append(fake_capture.captured)
    assert captured == [1, 1, 1, 2]
    decoder = model.ved.decoder
    buckets = graph_cache(decoder).oldest_first()
    assert [(b.rows, b.images, b.capacity) for b in buckets] == [(32, 8, 16), (64, 16, 16)]
    assert release_graphs(model) == 2 and len(graph_cache(decoder)) == 0
    generate(model, pixels[:2], config=CONFIG)
    assert fake_capture.captured == 3


def test_at_most_max_graphs_are_kept_per_decoder(
    make_vit_gpt2: Callable, make_pixels: Callable, fake_capture: FakeCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpt2_graph, "MAX_GRAPHS", 2)
    model, pixels = make_vit_gpt2(seed=0), make_pixels(4, 1)
    config = DecodingConfig(max_new_tokens=4, num_beams=2)
    for images in (1, 2, 4, 2, 1):  # buckets 1, 2, 4; then 2 is kept, 1 was evicted
        generate(model, pixels[:images], config=config)
    assert fake_capture.captured == 4
    assert [b.images for b in graph_cache(model.ved.decoder).oldest_first()] == [2, 1]


def test_a_bucket_in_use_by_a_live_call_is_not_shared(make_vit_gpt2: Callable, fake_capture: FakeCapture) -> None:
    decoder = make_vit_gpt2(seed=0).ved.decoder
    config = decoder.config
    heads, width = config.n_head, config.n_embd

    assert heads == 2

    def state() -> Any:
        return cache_state(8, 12, images=2, group=4, layers=config.n_layer, width=width)

    first, second = state(), state()
    filled = first.cache[..., :1, :].clone()
    step = static_step_for(decoder, first, "graphs")
    other = static_step_for(decoder, second, "graphs")  # another thread's call, while the first is live
    assert other is not step and fake_capture.captured == 2
    assert graph_cache(decoder).get(step.bucket, never_built) is step
    # The state moved into the step's buffers: its filled position copied, the rest zeroed.
    assert first.cache.data_ptr() == step.buffers.cache.data_ptr() and first.cache.shape[:5] == (2, 2, 8, heads, 16)
    assert torch.equal(first.cache[..., :1, :], filled) and not first.cache[..., 1:, :].any()
    del first
    gc.collect()
    assert static_step_for(decoder, state(), "graphs") is step  # free again: reused, nothing captured
    assert fake_capture.captured == 2


def test_moved_weights_or_a_freed_model_release_the_graphs(
    make_vit_gpt2: Callable, make_pixels: Callable, fake_capture: FakeCapture
) -> None:
    model = make_vit_gpt2(seed=0)
    generate(model, make_pixels(2, 0), config=CONFIG)
    decoder = model.ved.decoder
    (bucket,) = graph_cache(decoder).oldest_first()
    first = weakref.ref(graph_cache(decoder).get(bucket, never_built))
    with torch.no_grad():  # a new address: a graph captured before would read the old one
        decoder.lm_head.weight.data = decoder.lm_head.weight.data.clone()
    assert len(graph_cache(decoder)) == 0
    gc.collect()
    assert first() is None
    generate(model, make_pixels(2, 0), config=CONFIG)
    assert fake_capture.captured == 2
    second = weakref.ref(graph_cache(decoder).get(bucket, never_built))
    del model, decoder
    gc.collect()
    assert second() is None  # nothing keeps a model's graphs alive once the model is gone


def never_built() -> Any:
    pytest.fail("a kept step was built again")


@pytest.mark.slow  # about 20 s of compiling on one core
def test_the_compiled_step_gives_the_eager_captions(
    make_vit_gpt2: Callable, make_pixels: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.compile(mode="reduce-overhead") graphs only on a GPU; on the CPU its trace of the step still runs (in
    # float64: fp32 CPU steps go through oneDNN's packed weights, which the trace does not take).
    model, pixels = make_vit_gpt2(seed=0).double(), make_pixels(4, 1).double()
    config = DecodingConfig(max_new_tokens=8, num_beams=2)
    monkeypatch.setenv(STATIC_CACHE_ENV, "1")
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    eager = [tokens_and_scores(generate(model, batch, config=config)) for batch in (pixels, pixels[:3])]
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "compile")
    monkeypatch.setattr(gpt2_graph, "capture_for", lambda device, mode: gpt2_graph.capture_compiled)
    for batch, (tokens, scores) in zip((pixels, pixels[:3]), eager, strict=True):
        found_tokens, found_scores = tokens_and_scores(generate(model, batch, config=config))
        assert found_tokens == tokens and found_scores == pytest.approx(scores, rel=1e-9)
    assert len(graph_cache(model.ved.decoder)) == 1
