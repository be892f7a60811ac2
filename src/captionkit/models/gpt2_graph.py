"""The GPT-2 decoder step with fixed shapes, replayed as one CUDA graph per decoding call.

On a GPU the eager step (:mod:`captionkit.models.gpt2_step`) is bound by launching its ~150 small kernels from
Python, not by the GPU. A CUDA graph launches them all at once, but replays exactly the shapes and buffers it was
captured with. This step therefore works on the static cache's full buffers (every row the state started with,
every reserved position) and never on their shrinking views:

* the position is a device tensor that the step advances itself; the new key/value is written at it with
  ``index_copy_`` and attention covers every reserved position, later ones masked out (the cache starts zeroed,
  so masked positions are finite and weigh exactly 0);
* rows that left the batch (finished captions, closed images) stay in the buffers at the end and are computed
  along with the others; the live rows are always the first ones, as the state's reorders keep them;
* cross-attention keys/values stay grouped per image (``group`` rows each), which reorders also preserve.

``CAPTIONKIT_CUDA_GRAPHS=1`` turns it on (it needs the static cache, which a GPU has by default). On a CPU the same
fixed-shape step runs eagerly, which is how the tests check it against the eager step. A state whose rows are not
grouped per image (sampling after some rows ended) goes back to the eager step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from captionkit.errors import ConfigError
from captionkit.models.packed_linear import linear

__all__ = ["CUDA_GRAPHS_ENV", "StaticStep", "cuda_graphs"]

CUDA_GRAPHS_ENV = "CAPTIONKIT_CUDA_GRAPHS"


def cuda_graphs() -> bool:
    """Whether :data:`CUDA_GRAPHS_ENV` asks for the fixed-shape (graphed on a GPU) step: ``1`` yes, ``0``/unset no."""
    value = os.environ.get(CUDA_GRAPHS_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ConfigError(CUDA_GRAPHS_ENV, f"must be 0 or 1 (or unset), got {value!r}")
    return value == "1"


@dataclass
class _Buffers:
    """Everything the step reads and writes, at fixed addresses: the graph's inputs and outputs."""

    keys: list[torch.Tensor]  # per layer (rows, heads, capacity, head_dim)
    values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]  # per layer (images, heads, tokens, head_dim), or empty
    cross_values: list[torch.Tensor]
    group: int
    tokens: torch.Tensor  # (rows,) input ids
    position: torch.Tensor  # () the position this step writes


class StaticStep:
    """One decoding call's fixed-shape step over the full buffers of a state's cache (see the module doc)."""

    def __init__(
        self,
        decoder: nn.Module,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        cross: tuple[list[torch.Tensor], list[torch.Tensor], int],
        length: int,
    ) -> None:
        device = keys[0].device
        rows = keys[0].shape[0]
        self.decoder = decoder
        self.buffers = _Buffers(
            list(keys),  # copies of the lists: the state's reorders replace their items with front views
            list(values),
            list(cross[0]),
            list(cross[1]),
            cross[2],
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.tensor(length, dtype=torch.long, device=device),
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.length = length  # the position of the next call, kept on the host too

    def owns(self, keys: list[torch.Tensor], group: int, length: int) -> bool:
        """Whether the state's cache ``keys`` are (front views of) these buffers, its rows grouped alike, and no
        step ran elsewhere since this one's last call (``length`` is its next position)."""
        full = self.buffers.keys[0]
        same_buffers = keys[0].data_ptr() == full.data_ptr() and keys[0].shape[0] <= full.shape[0]
        same_rows = not self.buffers.cross_keys or group == self.buffers.group
        return same_buffers and same_rows and length == self.length

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(live rows,) ids -> (live rows, vocab) logits; the buffers advance by one position."""
        live = tokens.shape[0]
        self.buffers.tokens[:live].copy_(tokens)
        self.length += 1
        if self.graph is not None:
            self.graph.replay()
            assert self.logits is not None  # captured with the graph
            return self.logits[:live]
        if self.buffers.tokens.device.type != "cuda":
            return _forward(self.decoder, self.buffers)[:live]
        return self._run_and_capture()[:live]

    def _run_and_capture(self) -> torch.Tensor:
        """The first call on a GPU: run the step for real on a side stream (which also warms up the kernels), then
        capture it for the later calls (capturing runs nothing)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = _forward(self.decoder, self.buffers)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the batch job's pin-memory thread may allocate pinned memory while this thread captures.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = _forward(self.decoder, self.buffers)
        return logits


def _forward(decoder: nn.Module, buffers: _Buffers) -> torch.Tensor:
    """GPT-2 for one token per row at ``buffers.position``, fixed shapes throughout; advances the position."""
    transformer = decoder.transformer
    position = buffers.position.view(1)
    capacity = buffers.keys[0].shape[2]
    visible = (torch.arange(capacity, device=position.device) <= position).view(1, capacity)  # query x keys
    hidden = transformer.wte(buffers.tokens) + transformer.wpe(position)
    for layer, block in enumerate(transformer.h):
        hidden = hidden + _self_attention(block.attn, block.ln_1(hidden), buffers, layer, position, visible)
        if buffers.cross_keys:
            hidden = hidden + _cross_attention(block.crossattention, block.ln_cross_attn(hidden), buffers, layer)
        hidden = hidden + linear(block.mlp.c_proj, block.mlp.act(linear(block.mlp.c_fc, block.ln_2(hidden))))
    buffers.position.add_(1)
    return linear(decoder.lm_head, transformer.ln_f(hidden))


def _self_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    buffers: _Buffers,
    layer: int,
    position: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    heads = attention.num_heads
    rows = hidden.shape[0]
    query, key, value = linear(attention.c_attn, hidden).split(attention.split_size, dim=1)
    keys, values = buffers.keys[layer], buffers.values[layer]
    keys.index_copy_(2, position, key.view(rows, heads, 1, -1))
    values.index_copy_(2, position, value.view(rows, heads, 1, -1))
    out = scaled_dot_product_attention(
        query.view(rows, heads, 1, -1), keys, values, attn_mask=visible, scale=attention.scaling
    )
    return linear(attention.c_proj, out.reshape(hidden.shape))


def _cross_attention(attention: nn.Module, hidden: torch.Tensor, buffers: _Buffers, layer: int) -> torch.Tensor:
    heads = attention.num_heads
    query = linear(attention.q_attn, hidden)
    rows, width = query.shape
    grouped = query.view(-1, buffers.group, heads, width // heads).transpose(1, 2)
    keys, values = buffers.cross_keys[layer], buffers.cross_values[layer]
    out = scaled_dot_product_attention(grouped, keys, values, scale=attention.scaling)
    return linear(attention.c_proj, out.transpose(1, 2).reshape(rows, width))
