"""GIT: a CLIP ViT encoder whose projected tokens are a prefix of a BERT-style causal text decoder
(``GitForCausalLM``). There is no cross-attention: the text attends to the image tokens through self-attention.

Loads ``microsoft/git-base-coco`` / ``git-large-coco`` and their fine-tunes, and builds new models from presets.
Captions start from ``[CLS]`` (the config's ``bos_token_id``) and end at ``[SEP]`` (``eos_token_id``), as
``GitForCausalLM.generate`` does. Text positions count from 0 after the image prefix, as in transformers. The
decoder layers are run here (``_decode``) with the one mask GIT needs: image tokens see every image token and no
text; text tokens see every image token and the text before them.

>>> model = GitModel.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
>>> model.config.image_size, model.vocab_size
(32, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import DynamicCache, GitConfig, GitForCausalLM

from captionkit.errors import ConfigError
from captionkit.models.base import Encoded
from captionkit.models.hf_checkpoint import CachedState, HubCaptionModel, VisionTextConfig

__all__ = ["PRESETS", "GitCaptionConfig", "GitModel"]

FAMILY = "git"


@dataclass(frozen=True)
class GitCaptionConfig(VisionTextConfig):
    """Architecture of a GIT captioner; the defaults are ``git-base-coco`` (CLIP ViT-B/16 at 224 px, 6 text layers)."""

    family: ClassVar[str] = FAMILY

    text_layers: int = 6
    text_positions: int = 1024

    @classmethod
    def from_hf(cls, config: GitConfig) -> GitCaptionConfig:
        return cls.from_hf_parts(config.vision_config, config)  # the text decoder's sizes are the top level

    def to_hf(self, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> GitConfig:
        ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        return GitConfig(vision_config=self.vision_hf(), **self.text_hf(), **ids)


PRESETS: dict[str, GitCaptionConfig] = {
    # For tests: 16 patches of 8 px, width 32, 2 + 2 layers.
    "tiny": GitCaptionConfig(
        image_size=32,
        patch_size=8,
        vision_hidden_size=32,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate_size=64,
        text_hidden_size=32,
        text_layers=2,
        text_heads=2,
        text_intermediate_size=64,
        text_positions=64,
        vocab_size=64,
    ),
    "base": GitCaptionConfig(),
}
GitCaptionConfig.presets = PRESETS


class GitModel(HubCaptionModel):
    """A ``GitForCausalLM``, kept as ``.hf``, behind the captionkit interface."""

    family: ClassVar[str] = FAMILY
    hf_class = GitForCausalLM
    config_class = GitCaptionConfig

    def __init__(self, hf: GitForCausalLM) -> None:
        if hf.config.num_image_with_embedding is not None:
            raise ConfigError("num_image_with_embedding", "video GIT models (several frames) are not supported")
        super().__init__(hf)
        config = hf.config
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            config.bos_token_id,
            config.eos_token_id,
            config.pad_token_id,
        )
        self.vocab_size = config.vocab_size
        self.max_positions = config.max_position_embeddings
        self.config = GitCaptionConfig.from_hf(config)
        self.train(hf.training)

    def resize_vocabulary(self, size: int) -> None:
        """The token table and the output layer grow to ``size`` rows (transformers' resize, new rows random)."""
        if size < self.vocab_size:
            raise ConfigError("vocab_size", f"cannot shrink the vocabulary from {self.vocab_size} to {size}")
        self.hf.resize_token_embeddings(size)
        self.hf.config.vocab_size = size
        self.vocab_size = size
        self.config = GitCaptionConfig.from_hf(self.hf.config)

    def parameter_groups(self) -> dict[str, list[str]]:
        """encoder (the CLIP ViT and the projection to the text width: all that ``encode`` runs), embeddings (token
        and position tables), decoder (the text layers and the output layer)."""
        groups: dict[str, list[str]] = {"encoder": [], "embeddings": [], "decoder": []}
        for name, _ in self.named_parameters():
            if name.startswith(("hf.git.image_encoder.", "hf.git.visual_projection.")):
                groups["encoder"].append(name)
            elif name.startswith("hf.git.embeddings."):
                groups["embeddings"].append(name)
            else:
                groups["decoder"].append(name)
        return groups

    # --- teacher forcing

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        """(B, C, H, W) -> (B, 1 + patches, text width): the image prefix, projected as GitModel does."""
        git = self.hf.git
        features = git.image_encoder(pixel_values.to(dtype=self.hf.dtype)).last_hidden_state
        return Encoded(git.visual_projection(features))

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        prefix = self.encoded_or_encode(pixel_values, encoded).tokens
        hidden = self._decode(prefix, input_ids, attention_mask, cache=None)
        return self.hf.output(hidden)

    # --- step protocol: the image prefix and the first token go in together, then one token per step

    def init_state(self, encoded: Encoded) -> CachedState:
        return CachedState(cache=None, memory=encoded.tokens)

    def step(self, tokens: torch.Tensor, state: CachedState) -> tuple[torch.Tensor, CachedState]:
        if state.cache is None:
            state.cache = DynamicCache(config=self.hf.config)
            hidden = self._decode(state.memory, tokens[:, None], None, state.cache)
            state.memory = None  # from now on the image tokens live in the cache
        else:
            hidden = self._decode(None, tokens[:, None], None, state.cache, start=state.length)
        state.length += 1
        return torch.log_softmax(self.hf.output(hidden[:, -1]).float(), dim=-1), state

    def reorder_state(self, state: CachedState, index: torch.Tensor, row_image: tuple[int, ...]) -> CachedState:
        state.reorder(index)  # transformers' cache keeps a copy per row: nothing is shared per image
        return state

    def _decode(
        self,
        prefix: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: DynamicCache | None,
        start: int = 0,
    ) -> torch.Tensor:
        """Hidden states of the text positions of ``input_ids`` (text positions ``start``...), after the image
        ``prefix`` when given (else the prefix is already in ``cache``)."""
        git = self.hf.git
        embeddings = git.embeddings.word_embeddings(input_ids)
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        embeddings = git.embeddings.dropout(
            git.embeddings.LayerNorm(embeddings + git.embeddings.position_embeddings(positions))
        )
        hidden = embeddings if prefix is None else torch.cat([prefix, embeddings], dim=1)
        mask = None if prefix is None else _prefix_mask(prefix.shape[1], input_ids, attention_mask, hidden.dtype)
        output = git.encoder(hidden, attention_mask=mask, cache=cache, use_cache=cache is not None)
        return output.last_hidden_state[:, hidden.shape[1] - input_ids.shape[1] :]


def _prefix_mask(
    image_tokens: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Additive (B, 1, N + T, N + T) mask: image tokens see the image; text sees the image and earlier real text."""
    (batch, length), device = input_ids.shape, input_ids.device
    total = image_tokens + length
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    allowed[:, :image_tokens] = True
    allowed[image_tokens:, image_tokens:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = allowed.expand(batch, 1, total, total).clone()
    if attention_mask is not None:
        allowed[:, :, :, image_tokens:] &= attention_mask.bool()[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
