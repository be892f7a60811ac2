"""BLIP: a ViT encoder and a BERT-style text decoder with cross-attention (``BlipForConditionalGeneration``).

Loads ``Salesforce/blip-image-captioning-base`` / ``-large`` and their fine-tunes, and builds new models from
presets. The decoder starts from the ``[DEC]`` token (the text config's ``bos_token_id``) and stops at ``[SEP]``
(its ``sep_token_id``), as ``BlipForConditionalGeneration.generate`` does; a conditional prompt ("a photography of")
goes in as ``DecodingConfig.prompt_ids``. Checkpoints keep the hub layout, so plain ``transformers`` loads them.

Fine-tuned with a prompt (:meth:`BlipModel.set_prompt`, a recipe's ``model.prompt``: BLIP's own fine-tune uses
"a picture of"), the model feeds it after the start token of every caption: ``forward`` returns the logits of the
caption positions only, so the prompt's never reach the loss (the same as labelling them -100, as transformers' BLIP
fine-tuning does), and decoding feeds it with the start token; captions are what follows it. The prompt's ids are
saved in config.json (``captionkit_prompt_ids``).

>>> model = BlipModel.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
>>> model.config.image_size, model.vocab_size
(32, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import BlipConfig, BlipForConditionalGeneration

from captionkit.errors import ConfigError
from captionkit.models.base import Encoded
from captionkit.models.hf_checkpoint import CachedState, HubCaptionModel, VisionTextConfig

__all__ = ["PRESETS", "BlipCaptionConfig", "BlipModel"]

FAMILY = "blip"
PROMPT_KEY = "captionkit_prompt_ids"


@dataclass(frozen=True)
class BlipCaptionConfig(VisionTextConfig):
    """Architecture of a BLIP captioner; the defaults are ``blip-image-captioning-base`` (ViT-B/16 at 384 px)."""

    family: ClassVar[str] = FAMILY

    image_size: int = 384
    # bert-base-uncased's 30522 WordPiece tokens + [DEC] + [ENC].
    vocab_size: int = 30524

    @classmethod
    def from_hf(cls, config: BlipConfig) -> BlipCaptionConfig:
        return cls.from_hf_parts(config.vision_config, config.text_config)

    def to_hf(self, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> BlipConfig:
        text = self.text_hf() | {
            "encoder_hidden_size": self.vision_hidden_size,
            "bos_token_id": bos_token_id,
            "sep_token_id": eos_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
        }
        return BlipConfig(text_config=text, vision_config=self.vision_hf())


PRESETS: dict[str, BlipCaptionConfig] = {
    # For tests: 16 patches of 8 px, width 32, 2 + 2 layers.
    "tiny": BlipCaptionConfig(
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
    "base": BlipCaptionConfig(),
}
BlipCaptionConfig.presets = PRESETS


class BlipModel(HubCaptionModel):
    """A ``BlipForConditionalGeneration``, kept as ``.hf``, behind the captionkit interface."""

    family: ClassVar[str] = FAMILY
    hf_class = BlipForConditionalGeneration
    config_class = BlipCaptionConfig
    has_attention: ClassVar[bool] = True
    takes_prompt: ClassVar[bool] = True

    def __init__(self, hf: BlipForConditionalGeneration) -> None:
        super().__init__(hf)
        text = hf.config.text_config
        # generate starts from bos ([DEC]) and stops at sep ([SEP]).
        self.bos_token_id, self.eos_token_id = text.bos_token_id, text.sep_token_id
        self.pad_token_id = text.pad_token_id
        self.vocab_size = text.vocab_size
        self.config = BlipCaptionConfig.from_hf(hf.config)
        self.prompt_ids: tuple[int, ...] = ()
        # The prompt's ids on the model's device (moved with it; not saved): no copy from the host per call.
        self.register_buffer("prompt_tensor", torch.zeros(0, dtype=torch.long), persistent=False)
        self.max_positions = text.max_position_embeddings
        saved_prompt = getattr(hf.config, PROMPT_KEY, None)
        if saved_prompt:
            self.set_prompt(tuple(saved_prompt))
        self.train(hf.training)

    def set_prompt(self, prompt_ids: tuple[int, ...]) -> None:
        for token in prompt_ids:
            if not 0 <= token < self.vocab_size:
                raise ConfigError("model.prompt", f"token id {token} is not a token of this model")
        self.prompt_ids = prompt_ids
        self.prompt_tensor = torch.tensor(prompt_ids, dtype=torch.long, device=self.prompt_tensor.device)
        self.hf.config.update({PROMPT_KEY: list(prompt_ids)})
        self.max_positions = self.hf.config.text_config.max_position_embeddings - len(prompt_ids)

    def resize_vocabulary(self, size: int) -> None:
        """The token table and the tied output layer (with its bias) grow to ``size`` rows."""
        if size < self.vocab_size:
            raise ConfigError("vocab_size", f"cannot shrink the vocabulary from {self.vocab_size} to {size}")
        self.hf.text_decoder.resize_token_embeddings(size)
        self.hf.config.text_config.vocab_size = size
        self.vocab_size = size
        self.config = BlipCaptionConfig.from_hf(self.hf.config)

    def parameter_groups(self) -> dict[str, list[str]]:
        """encoder (the ViT: all that ``encode`` runs), embeddings (token and position tables; the output layer is
        tied to the token table), cross_attention, decoder (the rest of the text decoder)."""
        groups: dict[str, list[str]] = {"encoder": [], "embeddings": [], "cross_attention": [], "decoder": []}
        for name, _ in self.named_parameters():
            if name.startswith("hf.vision_model."):
                groups["encoder"].append(name)
            elif name.startswith("hf.text_decoder.bert.embeddings."):
                groups["embeddings"].append(name)
            elif ".crossattention." in name:
                groups["cross_attention"].append(name)
            else:
                groups["decoder"].append(name)
        return groups

    # --- teacher forcing

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        pixel_values = pixel_values.to(dtype=self.hf.dtype)
        return Encoded(self.hf.vision_model(pixel_values=pixel_values).last_hidden_state)

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        memory = self.encoded_or_encode(pixel_values, encoded).tokens
        input_ids, attention_mask = self._prompted(input_ids, attention_mask)
        output = self.hf.text_decoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory, use_cache=False
        )
        return output.logits[:, len(self.prompt_ids) :]

    def _prompted(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sequences with the training prompt after their start token (and its positions in the mask)."""
        if not self.prompt_ids:
            return input_ids, attention_mask
        prompt = self.prompt_tensor.expand(input_ids.shape[0], -1)
        ids = torch.cat([input_ids[:, :1], prompt, input_ids[:, 1:]], dim=1)
        if attention_mask is None:
            return ids, None
        ones = attention_mask.new_ones(prompt.shape)
        return ids, torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)

    def attention_maps(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The text decoder's cross-attention on the patches, averaged over all heads and layers: (B, T, h, w); the
        CLS token's share is dropped and each map renormalised over the patch grid."""
        memory = self.encode(pixel_values).tokens
        side = self.config.image_size // self.config.patch_size
        input_ids, attention_mask = self._prompted(input_ids, attention_mask)
        output = self.hf.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=memory,
            use_cache=False,
            output_attentions=True,
        )
        weights = torch.stack(output.cross_attentions).float().mean(dim=(0, 2))[:, len(self.prompt_ids) :, 1:]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.unflatten(-1, (side, side))

    # --- step protocol: transformers' own cached step (cross-attention keys/values cached at the first step)

    def init_state(self, encoded: Encoded) -> CachedState:
        return CachedState(cache=None, memory=encoded.tokens)

    def step(self, tokens: torch.Tensor, state: CachedState) -> tuple[torch.Tensor, CachedState]:
        fed = tokens[:, None]
        if state.length == 0 and self.prompt_ids:  # the start token, then the training prompt
            fed = torch.cat([fed, self.prompt_tensor.expand(len(tokens), -1)], dim=1)
        output = self.hf.text_decoder(
            input_ids=fed, encoder_hidden_states=state.memory, cache=state.cache, use_cache=True
        )
        state.cache, state.length = output.cache, state.length + fed.shape[1]
        return torch.log_softmax(output.logits[:, -1].float(), dim=-1), state

    def reorder_state(self, state: CachedState, index: torch.Tensor, row_image: tuple[int, ...]) -> CachedState:
        state.reorder(index)  # transformers' cache keeps a copy per row: nothing is shared per image
        return state
