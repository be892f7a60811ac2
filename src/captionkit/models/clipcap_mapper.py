"""ClipCap's transformer mapper, built as the paper's reference code builds it (Mokady et al. 2021,
``TransformerMapper`` in rmokady/CLIP_prefix_caption):

    image embedding (B, E) -> Linear(E, K * D) viewed as K tokens -> [those K tokens; K learned constants]
        -> L pre-norm transformer layers (full self-attention over the 2K) -> the constants' K outputs: the prefix

Each layer is ``x + attention(LayerNorm(x))`` then ``x + mlp(LayerNorm(x))``, with no LayerNorm after the last one.
Attention projects queries and keys/values without bias and its output with one, scores scaled by
``head_dim ** -0.5``; the MLP is Linear(D, hidden) -> ReLU -> Linear(hidden, D) (ClipCap: hidden = 2 * D). The
constants start from N(0, 1), as ``torch.randn`` draws them there. Module and parameter names are the reference's
(``linear``, ``prefix_const``, ``transformer.layers.N.{norm1, attn, norm2, mlp}``), so its weights map one to one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ClipCapMapper"]


class ClipCapAttention(nn.Module):
    """Multi-head self-attention: queries and keys/values (keys first, then values) without bias, output with one."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_queries = nn.Linear(width, width, bias=False)
        self.to_keys_values = nn.Linear(width, 2 * width, bias=False)
        self.project = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_width = width // self.heads
        queries = self.to_queries(x).view(batch, length, self.heads, head_width).transpose(1, 2)
        keys, values = self.to_keys_values(x).view(batch, length, 2, self.heads, head_width).unbind(2)
        attended = F.scaled_dot_product_attention(
            queries, keys.transpose(1, 2), values.transpose(1, 2), scale=head_width**-0.5
        )
        return self.project(attended.transpose(1, 2).reshape(batch, length, width))


class ClipCapMlp(nn.Module):
    """Linear -> ReLU -> Linear, with dropout after each as the reference places it (0 in ClipCap)."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))


class ClipCapLayer(nn.Module):
    """A pre-norm layer: LayerNorm before attention and before the MLP, the residual added after each."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = ClipCapAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = ClipCapMlp(width, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClipCapTransformer(nn.Module):
    """``layers`` ClipCap layers in a row; no final LayerNorm."""

    def __init__(self, width: int, heads: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipCapLayer(width, heads, hidden, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipCapMapper(nn.Module):
    """Image embedding (B, embedding width) -> (B, K, width) prefix tokens through ClipCap's transformer mapper.

    The embedding is the image encoder's own (ClipCap's CLIP embedding): no projection runs before ``linear``.
    """

    def __init__(
        self, embedding_width: int, width: int, length: int, *, heads: int, hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.length = length
        self.linear = nn.Linear(embedding_width, length * width)
        self.prefix_const = nn.Parameter(torch.randn(length, width))
        self.transformer = ClipCapTransformer(width, heads, hidden, layers, dropout)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        batch = embedding.shape[0]
        tokens = self.linear(embedding).view(batch, self.length, -1)
        constants = self.prefix_const.expand(batch, -1, -1)
        return self.transformer(torch.cat([tokens, constants], dim=1))[:, self.length :]
