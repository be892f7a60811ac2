"""Prefix captioning (ClipCap style): a frozen image encoder's embedding becomes K prefix tokens for GPT-2.

    pixels -> ViT (frozen) -> CLS embedding -> ClipCap's MLP or transformer mapper -> K prefix tokens
           -> optional small transformer over the prefix -> GPT-2 (frozen or tuned) reads [prefix; caption]

The mappers are ClipCap's: an MLP (Linear, Tanh, Linear) or its transformer mapper
(:mod:`captionkit.models.clipcap_mapper`), each reading the image embedding itself. Models saved before they were (a
config.json without ``mapper_style``) projected the embedding to GPT-2's width first and built the transformer
mapper from torch's ``nn.TransformerEncoderLayer``: they load as ``mapper_style: torch`` and run as they always did.

The image encoder is a Hugging Face ``ViTModel`` built from config (the ``base`` preset has CLIP ViT-B/16's
dimensions), GPT-2 a ``GPT2LMHeadModel``. ``encode`` runs the ViT only (a trainer can cache its output when the encoder
is frozen, as ClipCap precomputes CLIP embeddings); ``forward`` returns logits for the caption positions only, so the
prefix positions never reach the loss (the same as labelling them -100) and ``logits[:, t]`` predicts
``input_ids[:, t + 1]`` as for every family. Decoding feeds the prefix through GPT-2 once per image in
``init_state`` and then steps with captionkit's GPT-2 step (:mod:`captionkit.models.gpt2_step`, no cross-attention).

>>> model = PrefixGpt2Model.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
>>> model.config.prefix_length, model.max_positions
(4, 60)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, GPT2Config, GPT2LMHeadModel, PretrainedConfig, ViTConfig, ViTModel

from captionkit.errors import ConfigError
from captionkit.models.backbones import Backbone, LoadedBackbone, build_backbone, is_backbone_part, open_backbone
from captionkit.models.base import CaptionModel, Encoded
from captionkit.models.clipcap_mapper import ClipCapMapper
from captionkit.models.gpt2_step import Gpt2StepState, gpt2_embeddings_step, gpt2_step, start_gpt2_state
from captionkit.models.hf_configs import gpt2_config, vit_config
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
from captionkit.models.parts import decoder_token_ids, load_gpt2_decoder, load_vision_encoder, part_preprocessing
from captionkit.precision import model_dtype

__all__ = ["PRESETS", "PrefixGpt2Config", "PrefixGpt2Model"]

FAMILY = "prefix-gpt2"
MAPPERS = ("mlp", "transformer")
MAPPER_STYLES = ("clipcap", "torch")
_POOLED_TOWERS = ("clip_vision_model", "siglip_vision_model")


@dataclass(frozen=True)
class PrefixGpt2Config(FamilyConfig):
    """Architecture of a prefix captioner; the defaults are the ``base`` preset (ViT-B/16 + MLP mapper + GPT-2)."""

    family: ClassVar[str] = FAMILY
    may_be_zero: ClassVar[tuple[str, ...]] = ("prefix_layers",)
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"mapper": MAPPERS, "mapper_style": MAPPER_STYLES}
    # Saved before mapper_style existed: built with torch's transformer layers.
    saved_defaults: ClassVar[Mapping[str, Any]] = {"mapper_style": "torch"}

    # ViT image encoder (CLIP ViT-B/16 dimensions).
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    encoder_hidden_size: int = 768
    encoder_layers: int = 12
    encoder_heads: int = 12
    encoder_intermediate_size: int = 3072
    # The encoder's weights take no gradient (ClipCap); off for training a from-scratch encoder end to end.
    freeze_encoder: bool = True
    # Mapper from the image embedding to `prefix_length` GPT-2 input vectors.
    prefix_length: int = 10
    mapper: str = "mlp"
    # MLP mapper: hidden width (ClipCap: prefix_length * decoder width / 2). Transformer mapper: feed-forward width
    # (ClipCap: 2 * decoder width). A model from parts gets ClipCap's for its mapper unless overrides set it.
    mapper_hidden_size: int = 3840
    # Transformer mapper only: layers and heads (ClipCap: 8 layers, 8 heads).
    mapper_layers: int = 8
    mapper_heads: int = 8
    # "clipcap": ClipCap's mappers, reading the image embedding itself (its MLP, or its transformer layers).
    # "torch": what captionkit built before, which a saved config.json without this field describes: a linear
    # projection to the decoder width first, then the same MLP or nn.TransformerEncoderLayer's (GELU, biased q/k/v).
    mapper_style: str = "clipcap"
    # Layers of the optional transformer over the prefix tokens before GPT-2 (0: none).
    prefix_layers: int = 0
    mapper_dropout: float = 0.0
    # GPT-2 decoder.
    decoder_hidden_size: int = 768
    decoder_layers: int = 12
    decoder_heads: int = 12
    decoder_positions: int = 1024
    decoder_dropout: float = 0.1
    vocab_size: int = 50257
    # True: GPT-2 stays as it is and only the mapper learns (ClipCap's transformer-mapper setting).
    freeze_decoder: bool = False
    initializer_range: float = 0.02
    # A model started from pretrained parts: their transformers configs (config.json's fields), from which the
    # encoder and GPT-2 are built instead of from the fields above (which then only describe them). A timm
    # backbone's encoder_part says what builds it instead (library, architecture, model_args, num_features).
    encoder_part: dict[str, Any] | None = None
    decoder_part: dict[str, Any] | None = None

    def check(self) -> None:
        # A pretrained encoder part is whatever it is; the ViT fields only describe a transformers one.
        built_here = self.encoder_part is None
        if built_here and self.image_size % self.patch_size:
            raise ConfigError("patch_size", f"{self.patch_size} does not divide image_size {self.image_size}")
        for prefix in ("encoder", "decoder", "mapper") if built_here else ("decoder", "mapper"):
            hidden = self.decoder_hidden_size if prefix == "mapper" else getattr(self, f"{prefix}_hidden_size")
            heads = getattr(self, f"{prefix}_heads")
            if hidden % heads:
                raise ConfigError(f"{prefix}_heads", f"{heads} heads do not divide the width {hidden}")
        if self.prefix_length >= self.decoder_positions:
            raise ConfigError("prefix_length", f"must be less than decoder_positions {self.decoder_positions}")
        if not self.initializer_range > 0:
            raise ConfigError("initializer_range", f"must be positive, got {self.initializer_range}")

    def encoder_hf(self) -> ViTConfig:
        return vit_config(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            encoder_hidden_size=self.encoder_hidden_size,
            encoder_layers=self.encoder_layers,
            encoder_heads=self.encoder_heads,
            encoder_intermediate_size=self.encoder_intermediate_size,
            dropout=0.0,
            initializer_range=self.initializer_range,
        )

    def decoder_hf(self, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> GPT2Config:
        return gpt2_config(
            vocab_size=self.vocab_size,
            decoder_positions=self.decoder_positions,
            decoder_hidden_size=self.decoder_hidden_size,
            decoder_layers=self.decoder_layers,
            decoder_heads=self.decoder_heads,
            decoder_dropout=self.decoder_dropout,
            initializer_range=self.initializer_range,
            token_ids=(bos_token_id, eos_token_id, pad_token_id),
        )


PRESETS: dict[str, PrefixGpt2Config] = {
    # For tests: 16 patches of 8 px, widths 64, 2 + 2 layers, 4 prefix tokens; trains end to end, no dropout.
    "tiny": PrefixGpt2Config(
        image_size=32,
        patch_size=8,
        encoder_hidden_size=64,
        encoder_layers=2,
        encoder_heads=2,
        encoder_intermediate_size=128,
        freeze_encoder=False,
        prefix_length=4,
        mapper_hidden_size=128,
        mapper_layers=2,
        mapper_heads=2,
        decoder_hidden_size=64,
        decoder_layers=2,
        decoder_heads=2,
        decoder_positions=64,
        decoder_dropout=0.0,
        vocab_size=256,
    ),
    # CPU-trainable in minutes: 64 patches of 8 px, widths 128, 4 + 4 layers, 10 prefix tokens. Like tiny, it trains
    # its encoder: captionkit has no pretrained encoder weights at this size.
    "small": PrefixGpt2Config(
        image_size=64,
        patch_size=8,
        encoder_hidden_size=128,
        encoder_layers=4,
        encoder_heads=4,
        encoder_intermediate_size=512,
        freeze_encoder=False,
        mapper_hidden_size=512,
        mapper_layers=2,
        mapper_heads=4,
        decoder_hidden_size=128,
        decoder_layers=4,
        decoder_heads=4,
        decoder_positions=128,
        vocab_size=4096,
    ),
    # CLIP ViT-B/16 dimensions + ClipCap's MLP mapper (10 prefix tokens) + GPT-2 124M.
    "base": PrefixGpt2Config(),
}
PrefixGpt2Config.presets = PRESETS


class PrefixMapper(nn.Module):
    """Image embedding (``input_width``) -> (prefix_length, decoder width) prefix tokens: the MLP mapper, or the
    transformer mapper of ``mapper_style: torch``."""

    def __init__(self, config: PrefixGpt2Config, input_width: int) -> None:
        super().__init__()
        width, length = config.decoder_hidden_size, config.prefix_length
        self.kind, self.length, self.width = config.mapper, length, width
        if config.mapper == "mlp":
            self.mlp = nn.Sequential(
                nn.Linear(input_width, config.mapper_hidden_size),
                nn.Tanh(),
                nn.Linear(config.mapper_hidden_size, length * width),
            )
        else:
            # The layout of ClipCap's transformer mapper (the embedding spread over K tokens, then K learned
            # constants that read them through self-attention; the constants' outputs are the prefix) in torch's
            # layers: kept so that models saved with it load unchanged.
            self.expand = nn.Linear(input_width, length * width)
            self.constants = nn.Parameter(torch.randn(length, width) * config.initializer_range)
            self.transformer = _transformer(config, config.mapper_layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        batch = embedding.shape[0]
        if self.kind == "mlp":
            return self.mlp(embedding).view(batch, self.length, self.width)
        spread = self.expand(embedding).view(batch, self.length, self.width)
        tokens = torch.cat([spread, self.constants.expand(batch, -1, -1)], dim=1)
        return self.transformer(tokens)[:, self.length :]


def _mapper(config: PrefixGpt2Config) -> tuple[nn.Module, nn.Module]:
    """(projection, mapper). ClipCap's mappers read the image embedding itself (no projection): its MLP (Linear,
    Tanh, Linear) or its transformer mapper. ``mapper_style: torch`` models project the embedding to the decoder
    width first, then run the same MLP or a transformer mapper of torch's layers."""
    if config.mapper_style == "torch":
        projection = nn.Linear(config.encoder_hidden_size, config.decoder_hidden_size)
        return projection, PrefixMapper(config, config.decoder_hidden_size)
    if config.mapper == "mlp":
        return nn.Identity(), PrefixMapper(config, config.encoder_hidden_size)
    mapper = ClipCapMapper(
        config.encoder_hidden_size,
        config.decoder_hidden_size,
        config.prefix_length,
        heads=config.mapper_heads,
        hidden=config.mapper_hidden_size,
        layers=config.mapper_layers,
        dropout=config.mapper_dropout,
    )
    return nn.Identity(), mapper


def _transformer(config: PrefixGpt2Config, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        config.decoder_hidden_size,
        config.mapper_heads,
        config.mapper_hidden_size,
        dropout=config.mapper_dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    # The prefix is never padded: nothing to pack into nested tensors.
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class PrefixGpt2Model(CaptionModel):
    """ViT encoder -> mapper -> prefix tokens -> GPT-2, behind the captionkit interface."""

    family: ClassVar[str] = FAMILY

    def __init__(self, config: PrefixGpt2Config, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> None:
        super().__init__()
        ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        check_token_ids(ids, config.vocab_size)
        self.config = config
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.vocab_size = config.vocab_size
        self.max_positions = config.decoder_positions - config.prefix_length
        if config.encoder_part is None:
            self.encoder: nn.Module = ViTModel(config.encoder_hf(), add_pooling_layer=False)
        elif is_backbone_part(config.encoder_part):
            self.encoder = build_backbone(config.encoder_part)
        else:
            self.encoder = AutoModel.from_config(_hf_config(config.encoder_part))
        self.project, self.mapper = _mapper(config)
        self.prefix_transformer = _transformer(config, config.prefix_layers) if config.prefix_layers else None
        if config.decoder_part is None:
            self.gpt2 = GPT2LMHeadModel(config.decoder_hf(bos_token_id, eos_token_id, pad_token_id))
        else:
            self.gpt2 = GPT2LMHeadModel(_hf_config(config.decoder_part))
        set_trainable(self.encoder, not config.freeze_encoder)
        set_trainable(self.gpt2, not config.freeze_decoder)
        self.train()  # a new model trains (as a new transformers model does); frozen parts stay in eval mode

    def train(self, mode: bool = True) -> PrefixGpt2Model:
        """Frozen parts stay in eval mode (no dropout) whatever the mode of the rest.

        Frozen means no parameter of the part takes a gradient, by a ``freeze_*`` flag or by a training stage; the
        trainer calls ``train`` again whenever a stage changes that.
        """
        super().train(mode)
        for part in (self.encoder, self.gpt2):
            if not trains(part):
                part.eval()
        return self

    # --- construction, save and load

    @classmethod
    def from_config(
        cls,
        config: PrefixGpt2Config | str,
        *,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        **overrides: Any,
    ) -> PrefixGpt2Model:
        """A new model with random weights from a config or a preset name, with ``overrides`` applied. The ``base``
        preset's mapper width is ClipCap's for the mapper and prefix length they ask for (2 x 768 for its transformer
        mapper, not the MLP's 3,840), unless they set ``mapper_hidden_size``."""
        decoder_width = overrides.get("decoder_hidden_size", PRESETS["base"].decoder_hidden_size)
        if config == "base" and "mapper_hidden_size" not in overrides and type(decoder_width) is int:
            overrides = {"mapper_hidden_size": _clipcap_mapper_width(overrides, decoder_width), **overrides}
        config = PrefixGpt2Config.resolve(config, **overrides)
        return cls(config, bos_token_id, eos_token_id, pad_token_id)

    @classmethod
    def from_parts(cls, encoder: str | Path, decoder: str | Path, **overrides: Any) -> PrefixGpt2Model:
        """A new model from a pretrained vision encoder (the CLIP vision tower, a ViT, ...) and a GPT-2-family LM:
        their weights are copied unchanged, the mapper is new. ``overrides`` set the mapper and freezing fields
        (``mapper``, ``prefix_length``, ``freeze_decoder``, ...); the encoder is frozen unless they say otherwise.
        ``encoder`` may also name a timm model (:func:`captionkit.models.backbones.open_backbone`): its pooled
        pre-logits features are the image embedding."""
        backbone = open_backbone(str(encoder))
        vision: nn.Module = load_vision_encoder(encoder) if backbone is None else backbone.backbone
        language = load_gpt2_decoder(decoder, cross_attention=False)
        lm = language.config
        fields = _encoder_fields(vision) if backbone is None else _backbone_fields(backbone)
        fields |= {
            "decoder_hidden_size": lm.n_embd,
            "decoder_layers": lm.n_layer,
            "decoder_heads": lm.n_head,
            "decoder_positions": lm.n_positions,
            "decoder_dropout": float(lm.resid_pdrop),
            "vocab_size": lm.vocab_size,
            "decoder_part": lm.to_dict(),
        }
        parts_fields = set(fields)
        if parts_fields & set(overrides):
            given = ", ".join(sorted(parts_fields & set(overrides)))
            raise ConfigError("model.overrides", f"{given} come from the pretrained parts")
        widths = {"mapper_hidden_size": _clipcap_mapper_width(overrides, lm.n_embd)}
        config = PRESETS["base"].replace(**fields, **(widths | overrides))
        model = cls(config, **decoder_token_ids(language, decoder))
        model.encoder.load_state_dict(vision.state_dict())
        model.gpt2.load_state_dict(language.state_dict())
        model.preprocessing = part_preprocessing(encoder) if backbone is None else backbone.preprocessing
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        save_native(self, FAMILY, self.config, self._token_ids(), Path(directory))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, dtype: torch.dtype | None = None) -> PrefixGpt2Model:
        model: PrefixGpt2Model = load_native(cls, PrefixGpt2Config, name_or_dir, dtype)
        return model

    @classmethod
    def from_saved_config(cls, directory: Path) -> PrefixGpt2Model:
        model: PrefixGpt2Model = build_native(cls, PrefixGpt2Config, directory, str(directory))
        return model.eval()

    def resize_vocabulary(self, size: int) -> None:
        """GPT-2's token table and tied output layer grow to ``size`` rows (new rows random), e.g. for style tokens."""
        if size < self.vocab_size:
            raise ConfigError("vocab_size", f"cannot shrink the vocabulary from {self.vocab_size} to {size}")
        self.gpt2.resize_token_embeddings(size)
        part = self.config.decoder_part
        self.config = self.config.replace(
            vocab_size=size, decoder_part=None if part is None else part | {"vocab_size": size}
        )
        self.vocab_size = size

    def _token_ids(self) -> dict[str, int]:
        return {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id}

    # --- teacher forcing

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        """(B, C, H, W) -> (B, 1, encoder width): the ViT's CLS embedding, as CLIP's image embedding.

        Only the (frozen) encoder runs here, so a trainer may cache its output; the mapper runs in ``forward`` and,
        once per image, in ``init_state``.
        """
        pixels = pixel_values.to(model_dtype(self.encoder))
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains(self.encoder)):
            if isinstance(self.encoder, Backbone):
                return Encoded(self.encoder.embedding(pixels)[:, None])
            output = self.encoder(pixel_values=pixels)
        # A CLIP / SigLIP vision tower's image embedding is its pooled output (the final layer norm applied);
        # a ViT's is its CLS token (ViTModel normalises the whole last hidden state).
        if self.encoder.config.model_type in _POOLED_TOWERS:
            return Encoded(output.pooler_output[:, None])
        return Encoded(output.last_hidden_state[:, :1])

    def prefix(self, encoded: Encoded) -> torch.Tensor:
        """Image embeddings (B, 1, encoder width) -> (B, K, decoder width) prefix tokens."""
        if encoded.mask is not None and not bool(encoded.mask.all()):
            raise ValueError(f"{FAMILY} reads one image embedding; a mask with padded tokens is not supported")
        prefix = self.mapper(self.project(encoded.tokens[:, 0]))
        if self.prefix_transformer is not None:
            prefix = self.prefix_transformer(prefix)
        return prefix

    def parameter_groups(self) -> dict[str, list[str]]:
        """encoder (the ViT: all that ``encode`` runs), mapper (projection, mapper, prefix transformer), decoder."""
        groups: dict[str, list[str]] = {"encoder": [], "mapper": [], "decoder": []}
        for name, _ in self.named_parameters():
            part = name.split(".", 1)[0]
            groups[{"encoder": "encoder", "gpt2": "decoder"}.get(part, "mapper")].append(name)
        return groups

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits of the caption positions (the prefix positions are not returned)."""
        encoded = self.encoded_or_encode(pixel_values, encoded)
        prefix = self.prefix(encoded)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = torch.cat([prefix, self.gpt2.transformer.wte(input_ids)], dim=1)
        mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
        logits = self.gpt2(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        return logits[:, prefix.shape[1] :]

    # --- step protocol

    def init_state(self, encoded: Encoded) -> Gpt2StepState:
        """Feed the prefix tokens once per image: the self-attention cache then holds the image for every step."""
        prefix = self.prefix(encoded)
        state = start_gpt2_state(self.gpt2, None, rows=prefix.shape[0], prefix=prefix.shape[1])
        for position in range(prefix.shape[1]):
            gpt2_embeddings_step(self.gpt2, prefix[:, position], state)
        return state

    def step(self, tokens: torch.Tensor, state: Gpt2StepState) -> tuple[torch.Tensor, Gpt2StepState]:
        return float_log_softmax(gpt2_step(self.gpt2, tokens, state)), state

    def reorder_state(self, state: Gpt2StepState, index: torch.Tensor, row_image: tuple[int, ...]) -> Gpt2StepState:
        state.reorder(index, row_image)
        return state


def _clipcap_mapper_width(overrides: dict[str, Any], width: int) -> int:
    """ClipCap's mapper width on a GPT-2 of ``width``: the MLP's hidden layer is prefix_length * width / 2, the
    transformer mapper's feed-forward layer 2 * width (its mlp_ratio; prefix_length * width / 2 would be 10 times that
    at its 40 prefix tokens), for the mapper and prefix length ``overrides`` ask for."""
    base = PRESETS["base"]
    if overrides.get("mapper", base.mapper) == "transformer":
        return 2 * width
    length = overrides.get("prefix_length", base.prefix_length)
    if type(length) is not int:  # the config check then names the field and its type
        return base.mapper_hidden_size
    return length * width // 2


def _encoder_fields(vision: Any) -> dict[str, Any]:
    """The config fields a transformers vision encoder part fixes."""
    seen = vision.config
    return {
        "image_size": _side(seen.image_size),
        "patch_size": _side(seen.patch_size),
        "num_channels": seen.num_channels,
        "encoder_hidden_size": seen.hidden_size,
        "encoder_layers": seen.num_hidden_layers,
        "encoder_heads": seen.num_attention_heads,
        "encoder_intermediate_size": seen.intermediate_size,
        "encoder_part": seen.to_dict(),
    }


def _backbone_fields(loaded: LoadedBackbone) -> dict[str, Any]:
    """The config fields a timm / torchvision backbone fixes: its input size, embedding width and build recipe."""
    backbone = loaded.backbone
    return {
        "image_size": loaded.preprocessing.size[0],
        "encoder_hidden_size": backbone.num_features,
        "encoder_part": backbone.part(),
    }


def _hf_config(fields: dict[str, Any]) -> PretrainedConfig:
    """A transformers config from a part's saved config.json fields."""
    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _side(value: Any) -> int:
    # Some configs store image and patch sizes as (height, width); captioners here use square ones.
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


@torch.no_grad()
def init_sincos_positions(model: PrefixGpt2Model) -> None:
    """Start the ViT's position embeddings from a 2-D sin-cos table (CLS slot at zero), as for vit-gpt2."""
    from captionkit.models.vit_gpt2 import sincos_2d_table

    config = model.config
    table = model.encoder.embeddings.position_embeddings
    table[0, 0].zero_()
    table[0, 1:].copy_(sincos_2d_table(config.image_size // config.patch_size, config.encoder_hidden_size))
