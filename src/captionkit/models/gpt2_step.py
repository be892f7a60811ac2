"""A fast one-token GPT-2 decoder step for the step protocol, on the weights of a Hugging Face GPT-2 module.

transformers' own cached step is general (any mask, any cache) and pays for it on every token: it builds masks,
keeps one copy of the cross-attention keys/values per beam (copying them on every beam reorder) and grows its
self-attention cache by concatenation. Decoding needs much less, and this step does only that:

* cross-attention keys/values are computed once per image and kept per image; the rows (beams, samples) of an
  image index into them. When every image has the same number of consecutive rows (beam search; greedy) the
  queries of an image's rows attend to its keys/values in one batched call, with no per-row copy at all;
* the self-attention cache is preallocated and each step writes one position: inside
  :func:`~captionkit.models.base.reserved_positions` (a static cache, which the decoding engine asks for on a GPU)
  it is allocated once for every position the call will feed, otherwise with a small capacity doubled when full.
  Every layer's keys and values live in one tensor, so a reorder is one gather for the whole cache (not two
  operations per layer and tensor) and a step writes a layer's key and value in one copy. A reorder gathers into a
  second buffer of the same size, allocated once, and the two swap roles (in place would take two passes: into a
  temporary, then back; a fixed-shape step's buffers, which must stay put, are reordered in place); when rows (or
  images) leave, the survivors are the front of the buffers and the state keeps a view of them, so nothing is
  reallocated;
* every row is at the same position (decoding runs in lockstep), so no mask is needed;
* in half precision GPT-2's ``gelu_new`` runs as torch's fused tanh GELU (see
  :func:`~captionkit.models.gpt2_graph.gpt2_mlp`);
* on a CPU in fp32 the weight matrices run through oneDNN with prepacked weights
  (:mod:`captionkit.models.packed_linear`), which reads them about twice as fast at these few rows.

The arithmetic is GPT-2's (``GPT2Block``, with cross-attention for vit-gpt2, without for prefix-gpt2, whose
prefix tokens go in as embeddings through :func:`gpt2_embeddings_step`), calling the module's own layers (LayerNorm,
Conv1D or their replacements, e.g. int8 linears), so results match transformers to float rounding. Eval only:
dropout is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from captionkit.models.base import positions_to_reserve
from captionkit.models.gpt2_graph import StaticStep, gpt2_mlp, graph_mode, static_step_for
from captionkit.models.packed_linear import linear

__all__ = ["Gpt2StepState", "gpt2_embeddings_step", "gpt2_step", "start_gpt2_state"]

# Self-attention positions allocated up front; doubled whenever a step needs more (up to n_positions).
INITIAL_CAPACITY = 32
ROWS = 2  # the rows' dimension of the caches (layers, 2, rows, heads, positions, head_dim)


@dataclass
class Gpt2StepState:
    """Decoder state: one row per sequence, lockstep positions, per-image cross-attention keys/values.

    ``cache``: every layer's self-attention keys and values in one tensor, (layers, 2, rows, heads, capacity,
    head_dim) (``[layer, 0]`` keys, ``[layer, 1]`` values); positions ``< length`` are filled. One tensor, so that
    a reorder is one gather for all layers, not two per layer, and a step writes a layer's key and value at once;
    rows after layers, so that attention reads each layer's keys as one block, as from a tensor of its own.
    ``cross``: the cross-attention keys/values alike, (layers, 2, images, heads, tokens, head_dim), or None without
    cross-attention. ``row_image[r]``: the image (index into ``cross``) row r decodes. ``host_row_image``:
    the same map on the host, each image numbered as a row of the batch the state started from (not renumbered when
    images leave), which the decoding engine passes along with every reorder: the state's bookkeeping (which images
    are left, ``group``) is done on it, with no read of the device. ``group``: when rows are image-major with
    ``group`` rows per image (``row_image == arange(images).repeat_interleave(group)``), else 0 (rows are then
    matched to their image's keys/values by a gather).
    """

    cache: torch.Tensor
    length: int
    cross: torch.Tensor | None
    row_image: torch.Tensor
    host_row_image: tuple[int, ...]
    group: int
    # Fixed-shape steps (CUDA graphs on a GPU, see captionkit.models.gpt2_graph): the mode wanted (None: eager),
    # and the step whose buffers the state is in.
    graphs: str | None = None
    static: StaticStep | None = None
    steps: int = 0  # tokens fed through gpt2_step
    # Eager reorders gather in one pass into a second buffer, ``spare``, and the two swap roles (gathering in place
    # takes two: into a temporary, then back). ``allocation``: the whole buffer whose front ``cache`` views then.
    spare: torch.Tensor | None = None
    allocation: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.row_image.shape[0]

    def reorder(self, index: torch.Tensor, row_image: tuple[int, ...]) -> None:
        """Row i becomes row ``index[i]``, which decodes image ``row_image[i]`` (the new ``host_row_image``): the
        filled cache positions are gathered; cross keys/values only shrink, when images have no row left."""
        filled = self.length
        if index.shape[0] > self.cache.shape[ROWS]:
            # More rows: a new buffer, zeroed (fixed-shape steps attend to positions not yet written, weight 0).
            layers, _, _, heads, capacity, head_dim = self.cache.shape
            fresh = self.cache.new_zeros((layers, 2, index.shape[0], heads, capacity, head_dim))
            fresh[..., :filled, :] = self.cache[..., :filled, :].index_select(ROWS, index)
            self.cache = fresh
        elif self.static is not None:
            self.cache = _select_in_place(self.cache, index, filled)  # a fixed-shape step reads this very buffer
        else:  # same or fewer rows: gathered into the spare buffer
            full = self.allocation
            if full is None or full.data_ptr() != self.cache.data_ptr():  # cache was replaced: it is whole
                full = self.cache
            self.cache, self.allocation, self.spare = _select_into_spare(self.cache, full, self.spare, index, filled)
        if row_image == self.host_row_image:  # every row kept its image (beam reordering): nothing else moves
            return
        self.host_row_image = row_image
        self.row_image = self.row_image.index_select(0, index)
        if self.cross is None:
            return
        live = sorted(set(row_image))
        if len(live) < self.cross.shape[ROWS]:  # some images are done: drop their keys/values, renumber the rest
            used = _used_images(self.row_image, self.cross.shape[ROWS], len(live))
            self.cross = _select_in_place(self.cross, used, self.cross.shape[-2])
            self.row_image = torch.searchsorted(used, self.row_image)
        self.group = _group_size(row_image, live)

    def ensure_capacity(self, needed: int, limit: int) -> None:
        capacity = self.cache.shape[-2]
        if needed <= capacity:
            return
        capacity = min(max(needed, 2 * capacity), limit)
        grown = self.cache.new_zeros((*self.cache.shape[:-2], capacity, self.cache.shape[-1]))
        grown[..., : self.length, :] = self.cache[..., : self.length, :]
        self.cache = grown


def _select_in_place(tensor: torch.Tensor, index: torch.Tensor, filled: int) -> torch.Tensor:
    """Rows ``index`` of (layers, 2, rows, heads, positions, head_dim) ``tensor``, its first ``filled`` positions,
    copied to its front; returns that front view."""
    rows = index.shape[0]
    tensor[:, :, :rows, :, :filled] = tensor[..., :filled, :].index_select(ROWS, index)
    return tensor[:, :, :rows]


def _select_into_spare(
    cache: torch.Tensor, full: torch.Tensor, spare: torch.Tensor | None, index: torch.Tensor, filled: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``index`` of ``cache`` (its first ``filled`` positions; a front view of ``full``) gathered into the
    front of ``spare`` (made when missing or of another shape); returns that front view, the buffer behind it
    and ``full``, the next spare."""
    if spare is None or spare.shape != full.shape:
        spare = torch.empty_like(full)
    front = spare[:, :, : index.shape[0]]
    torch.index_select(cache[..., :filled, :], ROWS, index, out=front[..., :filled, :])
    return front, spare, full


def _used_images(row_image: torch.Tensor, images: int, count: int) -> torch.Tensor:
    """The ``count`` images (of ``images``) that ``row_image`` names, in order, found on the device: the count comes
    from the host, so no read waits for the device (``torch.unique`` would)."""
    unused = torch.ones(images, dtype=torch.uint8, device=row_image.device).index_fill_(0, row_image, 0)
    return torch.argsort(unused, stable=True)[:count]  # the used ones first, in order


def _group_size(row_image: tuple[int, ...], live: list[int]) -> int:
    """``group`` when the rows are image-major, ``group`` consecutive rows for each of the ``live`` images in
    order, else 0."""
    if len(row_image) % len(live):
        return 0
    group = len(row_image) // len(live)
    return group if row_image == tuple(image for image in live for _ in range(group)) else 0


def start_gpt2_state(
    decoder: nn.Module, memory: torch.Tensor | None, rows: int | None = None, prefix: int = 0
) -> Gpt2StepState:
    """An empty state; with ``memory`` (images, tokens, width), one row per image and its cross keys/values.

    ``decoder`` is a transformers ``GPT2LMHeadModel`` (with ``add_cross_attention`` when ``memory`` is given).
    ``rows`` is needed only without memory. ``prefix``: positions the caller feeds before decoding starts (prefix
    captioning's image tokens), counted on top of :func:`~captionkit.models.base.positions_to_reserve`.
    """
    config = decoder.config
    heads, head_dim = config.n_head, config.n_embd // config.n_head
    weight = decoder.transformer.wte.weight
    cross = None
    if memory is not None:
        rows = memory.shape[0]
        images, tokens = memory.shape[:2]
        # (images, tokens, 2 * width) per layer -> (layers, 2, images, heads, tokens, head_dim)
        per_layer = [block.crossattention.c_attn(memory) for block in decoder.transformer.h]
        stacked = torch.stack(per_layer).view(len(per_layer), images, tokens, 2, heads, head_dim)
        cross = stacked.permute(0, 3, 1, 4, 2, 5).contiguous()
    if rows is None:
        raise ValueError("start_gpt2_state needs memory or a row count")
    reserve = positions_to_reserve()
    capacity = min(INITIAL_CAPACITY if reserve is None else prefix + reserve, config.n_positions)
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    shape = (config.n_layer, 2, rows, heads, capacity, head_dim)
    cache = torch.zeros(shape, dtype=dtype, device=weight.device)
    row_image = torch.arange(rows, device=weight.device)
    graphs = graph_mode() if reserve is not None else None
    group = 1 if cross is not None else 0
    return Gpt2StepState(cache, 0, cross, row_image, tuple(range(rows)), group, graphs)


def gpt2_step(decoder: nn.Module, tokens: torch.Tensor, state: Gpt2StepState) -> torch.Tensor:
    """Feed one token per row: (rows,) ids -> (rows, vocab) logits; ``state`` advances in place by one position."""
    state.steps += 1
    static = _static_step(decoder, state)
    if static is None:
        return linear(decoder.lm_head, gpt2_embeddings_step(decoder, decoder.transformer.wte(tokens), state))
    logits = static(tokens)
    state.length += 1
    return logits


def _static_step(decoder: nn.Module, state: Gpt2StepState) -> StaticStep | None:
    """The fixed-shape step whose buffers hold this state (moved into its bucket's when they do not), or None:
    eager."""
    # The first token runs eagerly: beam search and sampling then expand the rows into new buffers.
    if state.graphs is None or state.steps == 1 or (state.cross is not None and not state.group):
        return None
    state.ensure_capacity(state.length + 1, decoder.config.n_positions)
    if state.static is None or not state.static.owns(state.cache, state.group, state.length):
        state.static = static_step_for(decoder, state, state.graphs)
    return state.static


def gpt2_embeddings_step(decoder: nn.Module, embeddings: torch.Tensor, state: Gpt2StepState) -> torch.Tensor:
    """Feed one input embedding per row (rows, width), e.g. a prefix token; returns the final hidden states
    (after ``ln_f``, before the output layer). ``state`` advances in place by one position."""
    config = decoder.config
    transformer = decoder.transformer
    position = state.length
    state.ensure_capacity(position + 1, config.n_positions)
    hidden = embeddings + transformer.wpe.weight[position]  # (rows, width)
    for layer, block in enumerate(transformer.h):
        hidden = hidden + _self_attention(block.attn, block.ln_1(hidden), state, layer, position)
        if state.cross is not None:
            hidden = hidden + _cross_attention(block.crossattention, block.ln_cross_attn(hidden), state, layer)
        hidden = hidden + gpt2_mlp(block.mlp, block.ln_2(hidden))
    state.length = position + 1
    return transformer.ln_f(hidden)


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """(rows, width) -> (rows, heads, 1, head_dim)."""
    return tensor.view(tensor.shape[0], heads, 1, -1)


def _self_attention(
    attention: nn.Module, hidden: torch.Tensor, state: Gpt2StepState, layer: int, position: int
) -> torch.Tensor:
    heads = attention.num_heads
    width = attention.split_size
    projected = linear(attention.c_attn, hidden)  # (rows, 3 * width): query, key, value
    cache = state.cache[layer]  # (2, rows, heads, capacity, head_dim)
    key_value = projected[:, width:].view(hidden.shape[0], 2, heads, -1).transpose(0, 1)
    cache[:, :, :, position] = key_value  # key and value at once
    out = scaled_dot_product_attention(
        _heads(projected[:, :width], heads),
        cache[0, :, :, : position + 1],
        cache[1, :, :, : position + 1],
        scale=attention.scaling,
    )
    return linear(attention.c_proj, out.reshape(hidden.shape))


def _cross_attention(attention: nn.Module, hidden: torch.Tensor, state: Gpt2StepState, layer: int) -> torch.Tensor:
    heads = attention.num_heads
    query = linear(attention.q_attn, hidden)
    assert state.cross is not None
    keys, values = state.cross[layer]
    rows, width = query.shape
    if state.group:
        # (images, group) rows -> queries (images, heads, group, head_dim) against the image's keys/values.
        grouped = query.view(-1, state.group, heads, width // heads).transpose(1, 2)
        out = scaled_dot_product_attention(grouped, keys, values, scale=attention.scaling)
        out = out.transpose(1, 2).reshape(rows, width)
    else:
        keys, values = keys.index_select(0, state.row_image), values.index_select(0, state.row_image)
        out = scaled_dot_product_attention(_heads(query, heads), keys, values, scale=attention.scaling)
        out = out.reshape(rows, width)
    return linear(attention.c_proj, out)
