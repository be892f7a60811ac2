"""The GPT-2 decoder step with fixed shapes, replayed as a CUDA graph kept per shape bucket across decoding calls.

On a GPU the eager step (:mod:`captionkit.models.gpt2_step`) is bound by launching its ~150 small kernels from
Python, not by the GPU. A CUDA graph launches them all at once, but replays exactly the shapes and buffers it was
captured with. So a :class:`StaticStep` owns full-size buffers for one :class:`Bucket` (rows, reserved positions,
images, cross-attention tokens, dtype, device) and the step works on them, never on shrinking views:

* the position is a device tensor that the step advances itself; the new key/value is written at it with
  ``index_copy_`` and attention covers every reserved position, later ones masked out (positions past the filled
  ones are zeroed when a state moves in, so they are finite and weigh exactly 0);
* rows past the live ones (rows that left the batch, and the padding up to the bucket's size) are computed along
  with the others and ignored; the live rows are always the first ones, as the state's reorders keep them;
* cross-attention keys/values stay grouped per image (``group`` rows each), which reorders also preserve.

Buckets round the image (or row) count up to a power of two and the reserved positions up to a multiple of
:data:`CAPACITY_STEP`, so that a job's last, smaller batch and the server's varying batches reuse a captured graph.
Each decoder keeps at most :data:`MAX_GRAPHS` of them (least recently used evicted first); they go when the model
goes, or at once with :func:`release_graphs`. A state moves into a bucket's buffers at its second step (the first
runs eagerly, before beam search and sampling expand the rows): its filled positions are copied in and it keeps
front views of the buffers from then on. A bucket in use by another live decoding call is not shared: that call
gets a private one.

``CAPTIONKIT_CUDA_GRAPHS=1`` turns it on (it needs the static cache, which a GPU has by default); ``compile``
replays the same fixed-shape step through ``torch.compile(mode="reduce-overhead")`` instead, to compare the two.
On a CPU the same step runs eagerly, which is how the tests check it against the eager step. A state whose rows
are not grouped per image (sampling after some rows ended) goes back to the eager step.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch
from torch import nn
from torch.nn.functional import gelu, scaled_dot_product_attention
from transformers.activations import NewGELUActivation

from captionkit.errors import ConfigError
from captionkit.models.packed_linear import linear

__all__ = [
    "CAPACITY_STEP",
    "CUDA_GRAPHS_ENV",
    "MAX_GRAPHS",
    "Bucket",
    "GraphCache",
    "StaticStep",
    "choose_bucket",
    "eager_steps",
    "gpt2_mlp",
    "graph_mode",
    "release_graphs",
    "static_step_for",
]

CUDA_GRAPHS_ENV = "CAPTIONKIT_CUDA_GRAPHS"
MAX_GRAPHS = 8  # per decoder: a job's full and last batch, a server's few batch sizes, with room to spare
CAPACITY_STEP = 16

Run = Callable[[], torch.Tensor]
Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


_EAGER = ContextVar("captionkit_eager_steps", default=False)


@contextmanager
def eager_steps() -> Iterator[None]:
    """Within this block decoding steps run eagerly whatever :data:`CUDA_GRAPHS_ENV` says: for a pass whose speed
    does not matter (a benchmark's fp32 reference captions), where capturing, or compiling for minutes, would not
    pay."""
    token = _EAGER.set(True)
    try:
        yield
    finally:
        _EAGER.reset(token)


def graph_mode() -> str | None:
    """What :data:`CUDA_GRAPHS_ENV` asks for: ``"graphs"`` (``1``), ``"compile"``, or None (``0``/unset; and inside
    :func:`eager_steps`)."""
    value = os.environ.get(CUDA_GRAPHS_ENV, "").strip()
    modes = {"": None, "0": None, "1": "graphs", "compile": "compile"}
    if value not in modes:
        raise ConfigError(CUDA_GRAPHS_ENV, f"must be 0, 1 or compile (or unset), got {value!r}")
    return None if _EAGER.get() else modes[value]


@dataclass(frozen=True)
class Bucket:
    """The shapes a captured step is fixed to. ``images`` is 0 (and ``group`` too) without cross-attention."""

    rows: int
    capacity: int
    images: int
    group: int
    cross_tokens: int
    dtype: torch.dtype
    device: torch.device


class CacheState(Protocol):
    """What a step reads of the decoder state (:class:`~captionkit.models.gpt2_step.Gpt2StepState`)."""

    cache: torch.Tensor  # (layers, 2, rows, heads, capacity, head_dim)
    cross: torch.Tensor | None  # (layers, 2, images, heads, tokens, head_dim)
    length: int
    group: int


def choose_bucket(state: CacheState, limit: int) -> Bucket:
    """The bucket a state's cache fits in: images (rows without cross-attention) rounded up to a power of two,
    reserved positions up to a multiple of :data:`CAPACITY_STEP` (at most ``limit``, the model's positions)."""
    rows, capacity = state.cache.shape[2], state.cache.shape[-2]
    capacity = max(capacity, min(_round_up(capacity, CAPACITY_STEP), limit))
    images = tokens = 0
    if state.cross is not None:
        images, tokens = state.cross.shape[2], state.cross.shape[-2]
        images = _power_of_two(images)
        rows = images * state.group
    else:
        rows = _power_of_two(rows)
    cache = state.cache
    return Bucket(rows, capacity, images, state.group, tokens, cache.dtype, cache.device)


def _power_of_two(count: int) -> int:
    return 1 << max(count - 1, 0).bit_length()


def _round_up(count: int, step: int) -> int:
    return -(-count // step) * step


class GraphCache(Generic[Key, Value]):
    """At most ``size`` values by key, the least recently used evicted first; safe to share between threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key, build: Callable[[], Value]) -> Value:
        """The value kept for ``key``, else ``build()``'s, kept (built outside the lock: capturing takes time)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def oldest_first(self) -> list[Key]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Buffers:
    """Everything the step reads and writes, at fixed addresses: the graph's inputs and outputs."""

    cache: torch.Tensor  # (layers, 2, rows, heads, capacity, head_dim): self-attention keys and values
    cross: torch.Tensor | None  # (layers, 2, images, heads, tokens, head_dim), or None
    group: int
    tokens: torch.Tensor  # (rows,) input ids
    position: torch.Tensor  # () the position this step writes

    @classmethod
    def zeros(cls, config: object, bucket: Bucket) -> _Buffers:
        heads, width, layers = config.n_head, config.n_embd, config.n_layer  # type: ignore[attr-defined]
        options = {"dtype": bucket.dtype, "device": bucket.device}
        own = (layers, 2, bucket.rows, heads, bucket.capacity, width // heads)
        cross = (layers, 2, bucket.images, heads, bucket.cross_tokens, width // heads)
        return cls(
            torch.zeros(own, **options),  # type: ignore[arg-type]
            torch.zeros(cross, **options) if bucket.images else None,  # type: ignore[arg-type]
            bucket.group,
            torch.zeros(bucket.rows, dtype=torch.long, device=bucket.device),
            torch.zeros((), dtype=torch.long, device=bucket.device),
        )


class StepRun:
    """The fixed-shape step of one decoder over one set of buffers, as a call without arguments."""

    def __init__(self, decoder: nn.Module, buffers: _Buffers) -> None:
        self._decoder = weakref.ref(decoder)  # no cycle through the decoder: the cache goes when the model goes
        self.buffers = buffers

    def decoder(self) -> nn.Module:
        found = self._decoder()
        if found is None:
            raise RuntimeError("the decoder of this fixed-shape step was freed")
        return found

    def __call__(self) -> torch.Tensor:
        return _forward(self.decoder(), self.buffers)


Capture = Callable[[StepRun], Run]  # the step -> what each later call runs instead (a replay)


class StaticStep:
    """A bucket's fixed-shape step over its own buffers, captured once (see the module doc)."""

    def __init__(self, decoder: nn.Module, bucket: Bucket, capture: Capture) -> None:
        self.bucket = bucket
        self.buffers = buffers = _Buffers.zeros(decoder.config, bucket)
        self.length = 0  # the position of the next call, kept on the host too
        self._user: weakref.ref[CacheState] | None = None
        self._replay = capture(StepRun(decoder, buffers))

    def busy(self, state: CacheState) -> bool:
        """Whether another live state (a decoding call in another thread) is using these buffers."""
        user = None if self._user is None else self._user()
        return user is not None and user is not state

    def adopt(self, state: CacheState) -> None:
        """Move ``state``'s cache into these buffers (its filled positions copied, the rest zeroed); the state keeps
        front views of them from now on."""
        filled = self.length = state.length
        own = self.buffers
        state.cache = _move_in(own.cache, state.cache, filled)
        if own.cross is not None and state.cross is not None:
            state.cross = _move_in(own.cross, state.cross, None)
        own.position.fill_(filled)
        self._user = weakref.ref(state)

    def owns(self, cache: torch.Tensor, group: int, length: int) -> bool:
        """Whether the state's ``cache`` is (a front view of) these buffers, its rows grouped alike, and no
        step ran elsewhere since this one's last call (``length`` is its next position)."""
        full = self.buffers.cache
        same_buffers = cache.data_ptr() == full.data_ptr() and cache.shape[2] <= full.shape[2]
        same_rows = self.buffers.cross is None or group == self.buffers.group
        return same_buffers and same_rows and length == self.length

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(live rows,) ids -> (live rows, vocab) logits; the buffers advance by one position."""
        live = tokens.shape[0]
        self.buffers.tokens[:live].copy_(tokens)
        self.length += 1
        return self._replay()[:live]


def _move_in(full: torch.Tensor, part: torch.Tensor, filled: int | None) -> torch.Tensor:
    """Copy ``part`` (layers, 2, rows, heads, positions, head_dim) to the front rows of ``full``, its first ``filled``
    positions (all: None) and zeros after them; returns the front view, which the state holds from then on."""
    rows = part.shape[2]
    if part.data_ptr() != full.data_ptr():  # not already there (a state moving back into its own bucket)
        full[:, :, :rows, :, :filled] = part[..., :filled, :]
    if filled is not None:
        full[..., filled:, :].zero_()
    return full[:, :, :rows]


# One capture at a time in the process: torch.cuda.graph captures on one side stream that all its captures share and
# synchronises the whole device on entry, either of which breaks a capture under way in another thread (two
# decoding calls whose buckets are new, or in use, capture at once).
_CAPTURE_LOCK = threading.Lock()


def capture_cuda_graph(run: StepRun) -> Run:
    """Run the step once on a side stream (warming up its kernels and cuBLAS), capture it, return the replay."""
    with _CAPTURE_LOCK:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the batch job's pin-memory thread may allocate pinned memory while this thread captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            logits = run()

    def replay() -> torch.Tensor:
        graph.replay()
        return logits

    return replay


def capture_compiled(run: StepRun) -> Run:
    """The step through ``torch.compile(mode="reduce-overhead")`` (inductor's CUDA graphs), to compare with
    :func:`capture_cuda_graph`. Its buffers are marked static, so that their in-place writes stay in the graph;
    shapes are not made dynamic, each bucket compiles its own."""
    buffers = run.buffers
    for tensor in (buffers.cache, buffers.cross):
        if tensor is not None:
            torch._dynamo.mark_static_address(tensor)
    torch._dynamo.mark_static_address(buffers.tokens)
    torch._dynamo.mark_static_address(buffers.position)
    compiled = torch.compile(_forward, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def step() -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's logits are no longer read
        return compiled(run.decoder(), buffers)

    return step


def capture_for(device: torch.device, mode: str) -> Capture:
    """How a bucket's step is captured on ``device``: a CUDA graph or ``torch.compile`` on a GPU, none on a CPU."""
    if device.type != "cuda":
        return lambda run: run
    return capture_compiled if mode == "compile" else capture_cuda_graph


# Per decoder: the weights' addresses the graphs were captured with, and the graphs by bucket. Weakly keyed, and
# the steps hold their decoder weakly, so a model's graphs are freed with it.
_CACHES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], GraphCache[Bucket, StaticStep]]] = (
    weakref.WeakKeyDictionary()
)
_CACHES_LOCK = threading.Lock()


def graph_cache(decoder: nn.Module) -> GraphCache[Bucket, StaticStep]:
    """The decoder's graphs; emptied when its weights moved (a graph reads them at the addresses it was captured
    with, e.g. before a ``.to(dtype)``)."""
    addresses = tuple(t.data_ptr() for t in (*decoder.parameters(), *decoder.buffers()))
    with _CACHES_LOCK:
        found = _CACHES.get(decoder)
        if found is None or found[0] != addresses:
            found = _CACHES[decoder] = (addresses, GraphCache(MAX_GRAPHS))
        return found[1]


def release_graphs(model: nn.Module) -> int:
    """Free the captured steps (their graphs and buffers) of every decoder in ``model``; returns how many."""
    released = 0
    with _CACHES_LOCK:
        for module in model.modules():
            found = _CACHES.pop(module, None)
            if found is not None:
                released += len(found[1])
                found[1].clear()
    return released


def static_step_for(decoder: nn.Module, state: CacheState, mode: str) -> StaticStep:
    """The captured step of the state's bucket (captured now if new, or private while another call uses it),
    with the state moved into its buffers."""
    bucket = choose_bucket(state, decoder.config.n_positions)

    def build() -> StaticStep:
        return StaticStep(decoder, bucket, capture_for(bucket.device, mode))

    step = graph_cache(decoder).get(bucket, build)
    if step.busy(state):
        step = build()
    step.adopt(state)
    return step


def _forward(decoder: nn.Module, buffers: _Buffers) -> torch.Tensor:
    """GPT-2 for one token per row at ``buffers.position``, fixed shapes throughout; advances the position."""
    transformer = decoder.transformer
    position = buffers.position.view(1)
    capacity = buffers.cache.shape[-2]
    visible = (torch.arange(capacity, device=position.device) <= position).view(1, capacity)  # query x keys
    hidden = transformer.wte(buffers.tokens) + transformer.wpe(position)
    for layer, block in enumerate(transformer.h):
        hidden = hidden + _self_attention(block.attn, block.ln_1(hidden), buffers, layer, position, visible)
        if buffers.cross is not None:
            hidden = hidden + _cross_attention(block.crossattention, block.ln_cross_attn(hidden), buffers, layer)
        hidden = hidden + gpt2_mlp(block.mlp, block.ln_2(hidden))
    buffers.position.add_(1)
    return linear(decoder.lm_head, transformer.ln_f(hidden))


def gpt2_mlp(mlp: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """GPT-2's feed-forward block (eval: no dropout), its two matrices through :func:`linear`.

    GPT-2's ``gelu_new`` (transformers' ``NewGELUActivation``, the tanh formula in eight elementwise operations) runs
    in half precision as torch's fused tanh GELU, the same formula in one kernel (seven fewer kernels per layer and
    step, rounded once instead of eight times). In float32 it stays transformers' own formula: the fused kernel is an
    ulp or so apart there, and float32 captions are token-identical to ``generate``'s.
    """
    hidden = linear(mlp.c_fc, hidden)
    fused = type(mlp.act) is NewGELUActivation and hidden.dtype != torch.float32
    hidden = gelu(hidden, approximate="tanh") if fused else mlp.act(hidden)
    return linear(mlp.c_proj, hidden)


def _self_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    buffers: _Buffers,
    layer: int,
    position: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    heads, width = attention.num_heads, attention.split_size
    rows = hidden.shape[0]
    projected = linear(attention.c_attn, hidden)  # (rows, 3 * width): query, key, value
    cache = buffers.cache[layer]  # (2, rows, heads, capacity, head_dim)
    key_value = projected[:, width:].view(rows, 2, heads, 1, -1).transpose(0, 1)
    cache.index_copy_(3, position, key_value)  # key and value at once
    out = scaled_dot_product_attention(
        projected[:, :width].view(rows, heads, 1, -1),
        cache[0],
        cache[1],
        attn_mask=visible,
        scale=attention.scaling,
    )
    return linear(attention.c_proj, out.reshape(hidden.shape))


def _cross_attention(attention: nn.Module, hidden: torch.Tensor, buffers: _Buffers, layer: int) -> torch.Tensor:
    heads = attention.num_heads
    query = linear(attention.q_attn, hidden)
    rows, width = query.shape
    grouped = query.view(-1, buffers.group, heads, width // heads).transpose(1, 2)
    assert buffers.cross is not None
    keys, values = buffers.cross[layer]
    out = scaled_dot_product_attention(grouped, keys, values, scale=attention.scaling)
    return linear(attention.c_proj, out.transpose(1, 2).reshape(rows, width))
