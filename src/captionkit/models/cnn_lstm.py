"""CNN + LSTM captioners: Show and Tell (``cnn-lstm``) and Show, Attend and Tell (``cnn-lstm-attention``).

The encoder is a Hugging Face ``ResNetModel`` built from config (the ``base`` preset is ResNet-50 with its conv
stages frozen), or a timm / torchvision backbone (:mod:`captionkit.models.backbones`); its last feature map,
(B, C, h, w), becomes h*w region tokens. The decoder is one LSTM cell over a
word vocabulary (``captionkit.text.train_word_tokenizer``):

* ``cnn-lstm``: the mean region feature, projected to the word-embedding width, is the LSTM's first input (before
  bos), as in Show and Tell;
* ``cnn-lstm-attention``: h0/c0 come from the mean feature; each step attends over the regions with additive
  (Bahdanau) attention, scales the context by a gate beta = sigmoid(w . h), and feeds [word embedding; context].
  The doubly stochastic penalty, lambda * sum_i (1 - sum_t alpha_ti)^2 over the real target positions, is computed in
  ``forward`` and handed to the trainer by :meth:`auxiliary_loss`.

``teacher_forcing_ratio`` < 1 is scheduled sampling: in training mode each row feeds its own previous greedy word
instead of the reference word with probability 1 - ratio. Evaluation mode always teacher-forces.

Teacher forcing and decoding run the same cell step by step (``_advance``), so their log-probabilities agree.

>>> model = CnnLstmAttentionModel.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
>>> model.config.image_size, model.max_positions
(32, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import ResNetConfig, ResNetModel

from captionkit.errors import ConfigError, ModelLoadError
from captionkit.models.backbones import Backbone, LoadedBackbone, build_backbone, open_backbone
from captionkit.models.base import CaptionModel, Encoded, feeds_given_words_only
from captionkit.models.native import (
    FamilyConfig,
    build_native,
    check_token_ids,
    float_log_softmax,
    load_native,
    save_native,
    set_trainable,
    trains,
)
from captionkit.models.parts import load_vision_encoder, part_preprocessing
from captionkit.precision import model_dtype

__all__ = ["PRESETS", "CnnLstmAttentionModel", "CnnLstmConfig", "CnnLstmModel"]

PLAIN, ATTENTION = "cnn-lstm", "cnn-lstm-attention"
# Encoder parts this family builds on: Hugging Face ResNets (microsoft/resnet-50, resnet-101, ...).
RESNET_TYPES = ("resnet",)
# ResNet settings the config does not carry: a part must have transformers' defaults (as microsoft/resnet-* do).
_RESNET_FIXED = ("hidden_act", "downsample_in_first_stage", "downsample_in_bottleneck")


@dataclass(frozen=True)
class CnnLstmConfig(FamilyConfig):
    """Architecture of a CNN + LSTM captioner; the defaults are the ``base`` preset (ResNet-50, 512-wide LSTM)."""

    family: ClassVar[str] = "cnn-lstm"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"encoder_layer_type": ("basic", "bottleneck")}

    # ResNet encoder (ResNet-50).
    image_size: int = 224
    num_channels: int = 3
    encoder_embedding_size: int = 64
    encoder_hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    encoder_depths: tuple[int, ...] = (3, 4, 6, 3)
    encoder_layer_type: str = "bottleneck"
    # The conv stages take no gradient and their batch norms keep their statistics (eval mode), as when a
    # training stage freezes the encoder.
    freeze_encoder: bool = True
    # LSTM decoder.
    embedding_size: int = 512
    hidden_size: int = 512
    # Width of the additive attention (attention family only).
    attention_size: int = 512
    dropout: float = 0.5
    # Words + <pad>, <bos>, <eos>, <unk>; training sets it from the word tokenizer.
    vocab_size: int = 10004
    # A timm / torchvision backbone as the encoder (what builds it: library, architecture, model_args,
    # num_features), instead of the Hugging Face ResNet the encoder_* fields describe (which it leaves unused).
    encoder_part: dict[str, Any] | None = None
    # Probability of feeding the reference word in training (1.0: plain teacher forcing; less: scheduled sampling).
    teacher_forcing_ratio: float = 1.0
    # Weight lambda of the doubly stochastic attention penalty (attention family only; 0: off).
    attention_penalty: float = 1.0

    def check(self) -> None:
        if len(self.encoder_hidden_sizes) != len(self.encoder_depths):
            raise ConfigError("encoder_depths", "needs one depth per entry of encoder_hidden_sizes")
        if not 0.0 <= self.teacher_forcing_ratio <= 1.0:
            raise ConfigError("teacher_forcing_ratio", f"must be in [0, 1], got {self.teacher_forcing_ratio}")
        if self.attention_penalty < 0:
            raise ConfigError("attention_penalty", f"must be >= 0, got {self.attention_penalty}")

    def encoder_hf(self) -> ResNetConfig:
        return ResNetConfig(
            num_channels=self.num_channels,
            embedding_size=self.encoder_embedding_size,
            hidden_sizes=list(self.encoder_hidden_sizes),
            depths=list(self.encoder_depths),
            layer_type=self.encoder_layer_type,
        )


PRESETS: dict[str, CnnLstmConfig] = {
    # For tests: a two-stage basic-block ResNet (4x4 regions of a 32 px image), 64-wide LSTM; trains end to end.
    "tiny": CnnLstmConfig(
        image_size=32,
        encoder_embedding_size=16,
        encoder_hidden_sizes=(16, 32),
        encoder_depths=(1, 1),
        encoder_layer_type="basic",
        freeze_encoder=False,
        embedding_size=32,
        hidden_size=64,
        attention_size=32,
        dropout=0.0,
        vocab_size=256,
    ),
    # CPU-trainable in minutes: a two-stage ResNet (4x4 regions at 32 px), 256-wide LSTM; trains its encoder.
    "small": CnnLstmConfig(
        image_size=64,
        encoder_embedding_size=32,
        encoder_hidden_sizes=(64, 128),
        encoder_depths=(2, 2),
        encoder_layer_type="basic",
        freeze_encoder=False,
        embedding_size=128,
        hidden_size=256,
        attention_size=128,
        dropout=0.2,
        vocab_size=4000,
    ),
    # ResNet-50 (conv stages frozen) + 512-wide LSTM, as in Show, Attend and Tell implementations.
    "base": CnnLstmConfig(),
}
CnnLstmConfig.presets = PRESETS


@dataclass
class LstmState:
    """One row per sequence: the LSTM's (h, c) and, with attention, the regions and their attention keys.

    ``row_image[r]`` (on the host) is the image row r decodes, as a row of the batch the state started from: a
    reorder that keeps every row on its image (beam reordering) leaves the image-side tensors as they are instead
    of copying them, and tells so without reading the device.
    """

    h: torch.Tensor  # (R, hidden)
    c: torch.Tensor  # (R, hidden)
    regions: torch.Tensor | None = None  # (R, N, C)
    keys: torch.Tensor | None = None  # (R, N, attention)
    mask: torch.Tensor | None = None  # (R, N) bool, True where a region is valid
    row_image: tuple[int, ...] | None = None  # R entries


class CnnLstmModel(CaptionModel):
    """Show and Tell: ResNet features -> LSTM over words. Subclassed for soft attention."""

    family: ClassVar[str] = PLAIN
    attends: ClassVar[bool] = False
    # Read at each forward: an SCST stage after XE may turn scheduled sampling or the attention penalty off.
    training_settings: ClassVar[frozenset[str]] = frozenset({"teacher_forcing_ratio", "attention_penalty"})

    def __init__(self, config: CnnLstmConfig, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> None:
        super().__init__()
        ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        check_token_ids(ids, config.vocab_size)
        self.config = config
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.vocab_size = config.vocab_size
        self.max_positions = None
        hidden = config.hidden_size
        if config.encoder_part is None:
            self.encoder: nn.Module = ResNetModel(config.encoder_hf())
            features = config.encoder_hidden_sizes[-1]
        else:
            self.encoder = build_backbone(config.encoder_part)
            features = config.encoder_part["num_features"]
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(hidden, config.vocab_size)
        if self.attends:
            self.init_h = nn.Linear(features, hidden)
            self.init_c = nn.Linear(features, hidden)
            self.region_keys = nn.Linear(features, config.attention_size)
            self.hidden_query = nn.Linear(hidden, config.attention_size)
            self.attention_score = nn.Linear(config.attention_size, 1)
            self.gate = nn.Linear(hidden, 1)
            self.cell = nn.LSTMCell(config.embedding_size + features, hidden)
        else:
            self.image_input = nn.Linear(features, config.embedding_size)
            self.cell = nn.LSTMCell(config.embedding_size, hidden)
        set_trainable(self.encoder, not config.freeze_encoder)
        self.last_attention: torch.Tensor | None = None
        self._penalty: torch.Tensor | None = None
        self.train()  # a new model trains; a frozen encoder stays in eval mode

    def train(self, mode: bool = True) -> CnnLstmModel:
        """A frozen encoder stays in eval mode: its batch norms keep their running statistics.

        Frozen means no encoder parameter takes a gradient, by ``freeze_encoder`` or by a training stage; the
        trainer calls ``train`` again whenever a stage changes that, so an unfrozen encoder trains its statistics.
        """
        super().train(mode)
        if not trains(self.encoder):
            self.encoder.eval()
        return self

    # --- construction, save and load

    @classmethod
    def from_config(
        cls, config: CnnLstmConfig | str, *, bos_token_id: int, eos_token_id: int, pad_token_id: int, **overrides: Any
    ) -> CnnLstmModel:
        """A new model with random weights from a config or a preset name, with ``overrides`` applied."""
        config = CnnLstmConfig.resolve(config, **overrides)
        return cls(config, bos_token_id, eos_token_id, pad_token_id)

    @classmethod
    def from_parts(
        cls, encoder: str | Path, *, bos_token_id: int, eos_token_id: int, pad_token_id: int, **overrides: Any
    ) -> CnnLstmModel:
        """A new model on a pretrained Hugging Face ResNet (e.g. microsoft/resnet-50): its weights are copied
        unchanged and its conv stages frozen (``freeze_encoder``); the LSTM is new. ``overrides`` set the decoder
        fields (vocab_size from the word tokenizer, widths, dropout, ...). ``encoder`` may also name a timm or
        torchvision backbone (:func:`captionkit.models.backbones.open_backbone`), equally frozen by default."""
        loaded = open_backbone(str(encoder))
        if loaded is not None:
            return cls._on_backbone(loaded, str(encoder), bos_token_id, eos_token_id, pad_token_id, overrides)
        resnet = load_vision_encoder(encoder, RESNET_TYPES)
        preprocessing = part_preprocessing(encoder)
        seen = resnet.config
        fields = {
            "image_size": preprocessing.size[0],
            "num_channels": seen.num_channels,
            "encoder_embedding_size": seen.embedding_size,
            "encoder_hidden_sizes": tuple(seen.hidden_sizes),
            "encoder_depths": tuple(seen.depths),
            "encoder_layer_type": seen.layer_type,
        }
        if set(fields) & set(overrides):
            raise ConfigError(
                "model.overrides", f"{', '.join(sorted(set(fields) & set(overrides)))} come from the ResNet"
            )
        config = PRESETS["base"].replace(**fields, **overrides)
        built = config.encoder_hf()
        differs = [name for name in _RESNET_FIXED if getattr(seen, name) != getattr(built, name)]
        if differs:
            raise ModelLoadError(encoder, f"a ResNet with non-default {', '.join(differs)} is not supported")
        model = cls(config, bos_token_id, eos_token_id, pad_token_id)
        model.encoder.load_state_dict(resnet.state_dict())
        model.preprocessing = preprocessing
        return model

    @classmethod
    def _on_backbone(
        cls, loaded: LoadedBackbone, source: str, bos: int, eos: int, pad: int, overrides: dict[str, Any]
    ) -> CnnLstmModel:
        backbone, preprocessing = loaded.backbone, loaded.preprocessing
        fields = {"image_size": preprocessing.size[0], "encoder_part": backbone.part()}
        if set(fields) & set(overrides):
            raise ConfigError(
                "model.overrides", f"{', '.join(sorted(set(fields) & set(overrides)))} come from the encoder"
            )
        try:  # one blank image: a vision transformer's tokens are no feature map
            with torch.no_grad():
                backbone.eval().feature_map(torch.zeros(1, 3, *preprocessing.size))
        except ValueError as error:
            raise ModelLoadError(source, f"cannot give the LSTM regions: {error}") from None
        model = cls(PRESETS["base"].replace(**fields, **overrides), bos, eos, pad)
        model.encoder.load_state_dict(backbone.state_dict())
        model.preprocessing = preprocessing
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        ids = {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id}
        save_native(self, self.family, self.config, ids, Path(directory))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, dtype: torch.dtype | None = None) -> CnnLstmModel:
        model: CnnLstmModel = load_native(cls, CnnLstmConfig, name_or_dir, dtype)
        return model

    @classmethod
    def from_saved_config(cls, directory: Path) -> CnnLstmModel:
        model: CnnLstmModel = build_native(cls, CnnLstmConfig, directory, str(directory))
        return model.eval()

    # --- encoder

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        """(B, C, H, W) -> (B, h*w, channels) region features of the last ResNet stage."""
        return Encoded(self._feature_map(pixel_values).flatten(2).transpose(1, 2))

    def _feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last ResNet stage's (B, channels, h, w)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains(self.encoder)):
            pixels = pixel_values.to(model_dtype(self.encoder))
            if isinstance(self.encoder, Backbone):
                return self.encoder.feature_map(pixels)
            return self.encoder(pixel_values=pixels).last_hidden_state

    def parameter_groups(self) -> dict[str, list[str]]:
        """encoder (the ResNet: all that ``encode`` runs) and decoder (the rest)."""
        groups: dict[str, list[str]] = {"encoder": [], "decoder": []}
        for name, _ in self.named_parameters():
            groups["encoder" if name.startswith("encoder.") else "decoder"].append(name)
        return groups

    # --- the decoder, one word at a time

    def init_state(self, encoded: Encoded) -> LstmState:
        regions, mask = encoded.tokens, encoded.mask
        mean = _mean_region(regions, mask)
        if self.attends:
            row_image = tuple(range(regions.shape[0]))
            return LstmState(self.init_h(mean), self.init_c(mean), regions, self.region_keys(regions), mask, row_image)
        zeros = mean.new_zeros(mean.shape[0], self.config.hidden_size)
        h, c = self.cell(self.image_input(mean), (zeros, zeros))  # the image is the input before bos
        return LstmState(h, c)

    def attention_maps(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The soft attention weights over the ResNet regions, teacher forced: (B, T, h, w); None without attention.

        Runs the decoder's own cell with the reference words (no scheduled sampling, no penalty recorded); padding
        after a caption only adds maps past its end, so ``attention_mask`` is not needed.
        """
        if not self.attends:
            return None
        feature_map = self._feature_map(pixel_values)
        state = self.init_state(Encoded(feature_map.flatten(2).transpose(1, 2)))
        alphas: list[torch.Tensor] = []
        for position in range(input_ids.shape[1]):
            _, state, alpha = self._advance(input_ids[:, position], state)
            assert alpha is not None  # the attention family always attends
            alphas.append(alpha)
        return torch.stack(alphas, dim=1).unflatten(-1, feature_map.shape[-2:])

    def _advance(self, tokens: torch.Tensor, state: LstmState) -> tuple[torch.Tensor, LstmState, torch.Tensor | None]:
        """Feed one word per row: (logits (R, V), new state, attention weights (R, N) or None)."""
        words = self.embed(tokens)
        alpha = None
        if self.attends:
            assert state.regions is not None and state.keys is not None
            scores = self.attention_score(torch.tanh(state.keys + self.hidden_query(state.h)[:, None])).squeeze(2)
            if state.mask is not None:
                scores = scores.masked_fill(~state.mask, float("-inf"))
            alpha = scores.softmax(dim=1)
            context = torch.sigmoid(self.gate(state.h)) * torch.einsum("rn,rnc->rc", alpha, state.regions)
            words = torch.cat([words, context], dim=1)
        h, c = self.cell(words, (state.h, state.c))
        logits = self.output(self.dropout(h))
        return logits, LstmState(h, c, state.regions, state.keys, state.mask, state.row_image), alpha

    def step(self, tokens: torch.Tensor, state: LstmState) -> tuple[torch.Tensor, LstmState]:
        logits, state, _ = self._advance(tokens, state)
        return float_log_softmax(logits), state

    def reorder_state(self, state: LstmState, index: torch.Tensor, row_image: tuple[int, ...]) -> LstmState:
        h, c = state.h.index_select(0, index), state.c.index_select(0, index)
        if state.row_image is None:
            return LstmState(h, c)
        if row_image == state.row_image:
            return LstmState(h, c, state.regions, state.keys, state.mask, state.row_image)

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.index_select(0, index)

        return LstmState(h, c, pick(state.regions), pick(state.keys), pick(state.mask), row_image)

    # --- teacher forcing (and scheduled sampling)

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        encoded = self.encoded_or_encode(pixel_values, encoded)
        state = self.init_state(encoded)
        sampling = self.training and self.config.teacher_forcing_ratio < 1.0 and not feeds_given_words_only()
        logits, alphas = [], []
        tokens = input_ids[:, 0]
        for position in range(input_ids.shape[1]):
            if sampling and position > 0:
                own = logits[-1].detach().argmax(dim=-1)
                keep = torch.rand(tokens.shape, device=tokens.device) < self.config.teacher_forcing_ratio
                tokens = torch.where(keep, input_ids[:, position], own)
            elif position > 0:
                tokens = input_ids[:, position]
            step_logits, state, alpha = self._advance(tokens, state)
            logits.append(step_logits)
            if alpha is not None:
                alphas.append(alpha)
        if alphas:
            self._record_attention(torch.stack(alphas, dim=1), input_ids, attention_mask)
        return torch.stack(logits, dim=1)

    def _record_attention(
        self, alphas: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        """Keep the weights (B, T, N) and the doubly stochastic penalty over positions that have a target."""
        self.last_attention = alphas.detach()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        has_target = torch.zeros_like(alphas[..., 0])
        has_target[:, :-1] = attention_mask[:, 1:].to(alphas.dtype)
        coverage = (alphas * has_target[..., None]).sum(dim=1)  # (B, N): attention each region got
        self._penalty = self.config.attention_penalty * ((1.0 - coverage) ** 2).sum(dim=1).mean()

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The doubly stochastic attention penalty of the last ``forward`` (then cleared); None without attention."""
        penalty, self._penalty = self._penalty, None
        return penalty


class CnnLstmAttentionModel(CnnLstmModel):
    """Show, Attend and Tell: soft additive attention over ResNet regions with a gate, doubly stochastic penalty."""

    family: ClassVar[str] = ATTENTION
    attends: ClassVar[bool] = True
    has_attention: ClassVar[bool] = True


def _mean_region(regions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return regions.mean(dim=1)
    weights = mask.to(regions.dtype)[..., None]
    return (regions * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
