"""ViT encoder + GPT-2 decoder with cross-attention: HF ``VisionEncoderDecoderModel`` behind ``CaptionModel``.

Loads ``nlpconnect/vit-gpt2-image-captioning`` and its fine-tunes, and builds new models from presets.
Checkpoints are directories in the hub layout (``config.json``, ``generation_config.json``,
``model.safetensors``) that plain ``transformers`` loads as they are; captionkit's own metadata rides in
``config.json`` under the ``"captionkit"`` key, which transformers keeps through save and load.

>>> model = VitGpt2Model.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
>>> model.config.image_size, model.vocab_size
(32, 256)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

from captionkit.errors import ConfigError, ModelLoadError
from captionkit.hub import resolve_model_source
from captionkit.models.base import CaptionModel, Encoded
from captionkit.models.config_file import read_config_json
from captionkit.models.gpt2_step import Gpt2StepState, gpt2_step, start_gpt2_state
from captionkit.models.hf_checkpoint import SAFE_WEIGHT_FILES, build_hf_model, dtype_option, load_safetensors_model
from captionkit.models.hf_configs import gpt2_config, vit_config
from captionkit.models.native import FamilyConfig
from captionkit.models.parts import decoder_token_ids, load_gpt2_decoder, load_vision_encoder, part_preprocessing
from captionkit.version import __version__

__all__ = ["PRESETS", "VitGpt2Config", "VitGpt2Model"]

FAMILY = "vit-gpt2"
# The key under which captionkit's metadata lives in the hub config.json.
METADATA_KEY = "captionkit"
# Sub-model types this family drives; other VisionEncoderDecoder pairs are refused rather than half-supported.
ENCODER_TYPES = ("vit", "deit", "beit", "dinov2", "clip_vision_model", "siglip_vision_model")
DECODER_TYPES = ("gpt2",)
# Weight files transformers could load but captionkit never does: they are pickles (or foreign formats).
UNSAFE_WEIGHT_FILES = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
    "model.ckpt.index",
)
# How many tokens an encoder puts before its patch tokens (see attention_maps).
_LEADING_TOKENS = (0, 1, 2)


# --- config


@dataclass(frozen=True)
class VitGpt2Config(FamilyConfig):
    """Architecture of a ViT + GPT-2 captioner; the defaults are the ``base`` preset (ViT-B/16 + GPT-2).

    Field checks, presets and dict round trips come from :class:`~captionkit.models.native.FamilyConfig`; the
    checkpoint itself is the hub's layout (:meth:`to_hf`), not the native families' config.json.
    """

    family: ClassVar[str] = FAMILY

    # ViT encoder.
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    encoder_hidden_size: int = 768
    encoder_layers: int = 12
    encoder_heads: int = 12
    encoder_intermediate_size: int = 3072
    # ViT-B/16 trains without dropout (hidden and attention dropout both 0 in its config).
    encoder_dropout: float = 0.0
    # GPT-2 decoder.
    decoder_hidden_size: int = 768
    decoder_layers: int = 12
    decoder_heads: int = 12
    # None: 4 × decoder_hidden_size, as in GPT-2.
    decoder_intermediate_size: int | None = None
    # Longest token sequence the decoder takes, bos included (GPT-2: 1024).
    decoder_positions: int = 1024
    # GPT-2's residual, embedding and attention dropout.
    decoder_dropout: float = 0.1
    # GPT-2's byte-level BPE; models trained on captionkit's own tokenizers override it.
    vocab_size: int = 50257
    # Std of the random initial weights (both halves); larger values give peakier random models for tests.
    initializer_range: float = 0.02

    def check(self) -> None:
        if not self.initializer_range > 0:
            raise ConfigError("initializer_range", f"must be a positive number, got {self.initializer_range}")
        if self.image_size % self.patch_size:
            raise ConfigError("patch_size", f"{self.patch_size} does not divide image_size {self.image_size}")
        for side in ("encoder", "decoder"):
            hidden, heads = getattr(self, f"{side}_hidden_size"), getattr(self, f"{side}_heads")
            if hidden % heads:
                raise ConfigError(f"{side}_heads", f"{heads} heads do not divide {side}_hidden_size {hidden}")

    @classmethod
    def from_hf(cls, config: VisionEncoderDecoderConfig) -> VitGpt2Config:
        """The architecture of a hub config (fields outside this dataclass keep transformers' defaults)."""
        encoder, decoder = config.encoder, config.decoder
        # ViT, DeiT, BEiT, DINOv2: hidden_dropout_prob; the CLIP and SigLIP vision towers: attention_dropout.
        dropout = getattr(encoder, "hidden_dropout_prob", getattr(encoder, "attention_dropout", 0.0))
        return cls(
            image_size=_as_int(encoder.image_size),
            patch_size=_as_int(encoder.patch_size),
            num_channels=encoder.num_channels,
            encoder_hidden_size=encoder.hidden_size,
            encoder_layers=encoder.num_hidden_layers,
            encoder_heads=encoder.num_attention_heads,
            encoder_intermediate_size=encoder.intermediate_size,
            encoder_dropout=float(dropout),
            decoder_hidden_size=decoder.n_embd,
            decoder_layers=decoder.n_layer,
            decoder_heads=decoder.n_head,
            decoder_intermediate_size=decoder.n_inner,
            decoder_positions=decoder.n_positions,
            decoder_dropout=float(decoder.resid_pdrop),
            vocab_size=decoder.vocab_size,
            initializer_range=float(decoder.initializer_range),
        )

    def to_hf(self, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> VisionEncoderDecoderConfig:
        """The hub config: a ViT encoder config and a GPT-2 decoder config with cross-attention."""
        encoder = vit_config(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            encoder_hidden_size=self.encoder_hidden_size,
            encoder_layers=self.encoder_layers,
            encoder_heads=self.encoder_heads,
            encoder_intermediate_size=self.encoder_intermediate_size,
            dropout=self.encoder_dropout,
            initializer_range=self.initializer_range,
        )
        decoder = gpt2_config(
            vocab_size=self.vocab_size,
            decoder_positions=self.decoder_positions,
            decoder_hidden_size=self.decoder_hidden_size,
            decoder_layers=self.decoder_layers,
            decoder_heads=self.decoder_heads,
            decoder_dropout=self.decoder_dropout,
            initializer_range=self.initializer_range,
            token_ids=(bos_token_id, eos_token_id, pad_token_id),
            n_inner=self.decoder_intermediate_size,
            decoder_start_token_id=bos_token_id,
        )
        return VisionEncoderDecoderConfig.from_encoder_decoder_configs(
            encoder,
            decoder,
            decoder_start_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


def _as_int(value: Any) -> int:
    # ViT configs may store image_size/patch_size as a pair; this family uses square images and patches.
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ModelLoadError("config.json", f"non-square ViT image or patch size {value} is not supported")
        return int(value[0])
    return int(value)


PRESETS: dict[str, VitGpt2Config] = {
    # For tests: 16 patches of 8 px, width 64, 2 + 2 layers (~0.2M parameters at vocab 256); no dropout, so
    # train-mode and eval-mode outputs agree.
    "tiny": VitGpt2Config(
        image_size=32,
        patch_size=8,
        encoder_hidden_size=64,
        encoder_layers=2,
        encoder_heads=2,
        encoder_intermediate_size=128,
        encoder_dropout=0.0,
        decoder_hidden_size=64,
        decoder_layers=2,
        decoder_heads=2,
        decoder_positions=64,
        decoder_dropout=0.0,
        vocab_size=256,
    ),
    # CPU-trainable in minutes: 64 patches of 8 px, width 128, 4 + 4 layers (~2.4M parameters at vocab 4096).
    "small": VitGpt2Config(
        image_size=64,
        patch_size=8,
        encoder_hidden_size=128,
        encoder_layers=4,
        encoder_heads=4,
        encoder_intermediate_size=512,
        decoder_hidden_size=128,
        decoder_layers=4,
        decoder_heads=4,
        decoder_positions=128,
        vocab_size=4096,
    ),
    # ViT-B/16 at 224 px + GPT-2 124M, as nlpconnect/vit-gpt2-image-captioning (239.2M parameters).
    "base": VitGpt2Config(),
}
VitGpt2Config.presets = PRESETS


# --- model


class VitGpt2Model(CaptionModel):
    """A ``VisionEncoderDecoderModel`` (ViT + GPT-2), kept as ``.ved``, behind the captionkit interface."""

    family: ClassVar[str] = FAMILY
    has_attention: ClassVar[bool] = True

    def __init__(self, ved: VisionEncoderDecoderModel) -> None:
        super().__init__()
        config = ved.config
        _check_model_types(config.model_type, config.encoder.model_type, config.decoder.model_type, "model")
        self.ved = ved
        self.bos_token_id, self.eos_token_id, self.pad_token_id = _token_ids(ved)
        self.vocab_size = ved.config.decoder.vocab_size
        self.max_positions = ved.config.decoder.n_positions
        self.config = VitGpt2Config.from_hf(ved.config)
        self.train(ved.training)  # a wrapper of a loaded (eval) model is in eval mode too

    # --- construction

    @classmethod
    def from_config(
        cls,
        config: VitGpt2Config | str,
        *,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        attn_implementation: str | None = None,
        **overrides: Any,
    ) -> VitGpt2Model:
        """A new model with random weights from a config or a preset name, with ``overrides`` applied.

        ``attn_implementation`` ("eager", "sdpa") goes to transformers (:meth:`attention_maps` uses "eager" anyway).
        """
        config = VitGpt2Config.resolve(config, **overrides)
        token_ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        for name, token_id in token_ids.items():
            _check_token_id(name, token_id, config.vocab_size)
        ved = VisionEncoderDecoderModel(config.to_hf(bos_token_id, eos_token_id, pad_token_id))
        if attn_implementation is not None:
            ved.set_attn_implementation(attn_implementation)
        return cls(ved)

    @classmethod
    def from_parts(cls, encoder: str | Path, decoder: str | Path) -> VitGpt2Model:
        """A new captioner from a pretrained vision transformer and a GPT-2-family LM (hub ids or directories).

        Every pretrained weight is kept as it is; GPT-2's new cross-attention layers (and the projection to the
        decoder width, when the widths differ) start from transformers' initialisation. The decoder's bos starts
        captions and its pad is its eos when it has none (GPT-2).
        """
        vision = load_vision_encoder(encoder)
        language = load_gpt2_decoder(decoder, cross_attention=True)
        ids = decoder_token_ids(language, decoder)
        bos, eos, pad = ids["bos_token_id"], ids["eos_token_id"], ids["pad_token_id"]
        ved = VisionEncoderDecoderModel(encoder=vision, decoder=language)
        for settings in (ved.config, ved.generation_config):
            settings.decoder_start_token_id, settings.eos_token_id, settings.pad_token_id = bos, eos, pad
        model = cls(ved.eval())
        model.preprocessing = part_preprocessing(encoder)
        return model

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str | Path, *, attn_implementation: str | None = None, dtype: torch.dtype | None = None
    ) -> VitGpt2Model:
        """Load a directory in the hub layout or a hub id; safetensors weights only, never remote code; the weights
        in ``dtype`` as they load (None: as stored).

        Raises :class:`ModelLoadError` with one line for: a missing directory, a directory that is not a
        ViT+GPT-2 VisionEncoderDecoder, pickle-only weights, missing weights, a hub id that cannot be fetched.
        """
        # Hub ids become a local snapshot (safetensors and configs only, failing fast offline): one code path.
        directory = resolve_model_source(name_or_dir)
        model = cls(_load_directory(directory, str(name_or_dir), attn_implementation, dtype))
        _check_loaded_token_ids(model, str(name_or_dir))
        return model

    @classmethod
    def from_saved_config(cls, directory: Path) -> VitGpt2Model:
        _check_raw_config(read_config_json(directory, str(directory)), str(directory))
        return cls(build_hf_model(VisionEncoderDecoderModel, directory))  # type: ignore[arg-type]

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json (with the "captionkit" key), generation_config.json and model.safetensors."""
        self.ved.config.update({METADATA_KEY: {"family": FAMILY, "captionkit_version": __version__}})
        self.ved.save_pretrained(directory)

    def resize_vocabulary(self, size: int) -> None:
        """GPT-2's token table and tied output layer grow to ``size`` rows (transformers' resize, new rows random)."""
        if size < self.vocab_size:
            raise ConfigError("vocab_size", f"cannot shrink the vocabulary from {self.vocab_size} to {size}")
        self.ved.decoder.resize_token_embeddings(size)
        self.ved.config.decoder.vocab_size = size
        self.vocab_size = size
        self.config = VitGpt2Config.from_hf(self.ved.config)

    def parameter_groups(self) -> dict[str, list[str]]:
        """encoder (the vision transformer), embeddings (token and position tables; the output layer is tied to the
        token table), cross_attention (GPT-2's cross-attention layers and, when the widths differ, the projection of
        the encoder's tokens to the decoder width: the new layers that join image and text, trained from the first
        stage of a from-parts recipe), decoder (the rest)."""
        groups: dict[str, list[str]] = {"encoder": [], "embeddings": [], "cross_attention": [], "decoder": []}
        for name, _ in self.named_parameters():
            if name.startswith("ved.enc_to_dec_proj."):
                groups["cross_attention"].append(name)
            elif name.startswith("ved.encoder."):
                groups["encoder"].append(name)
            elif name.startswith(("ved.decoder.transformer.wte.", "ved.decoder.transformer.wpe.")):
                groups["embeddings"].append(name)
            elif ".crossattention." in name or ".ln_cross_attn." in name:
                groups["cross_attention"].append(name)
            else:
                groups["decoder"].append(name)
        return groups

    def encode_parameter_names(self) -> list[str]:
        """The vision transformer's parameters and the projection's (``encode`` projects to the decoder width)."""
        encoding = ("ved.encoder.", "ved.enc_to_dec_proj.")
        return [name for name, _ in self.named_parameters() if name.startswith(encoding)]

    # --- teacher forcing

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        """(B, C, H, W) -> (B, 1 + patches, decoder width) tokens, projected to the decoder width here."""
        pixel_values = pixel_values.to(dtype=self.ved.dtype)
        tokens = self.ved.encoder(pixel_values=pixel_values).last_hidden_state
        # VisionEncoderDecoderModel adds this projection only when the encoder and decoder widths differ.
        if hasattr(self.ved, "enc_to_dec_proj"):
            tokens = self.ved.enc_to_dec_proj(tokens)
        return Encoded(tokens)

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        encoded = self.encoded_or_encode(pixel_values, encoded)
        if attention_mask is None:
            # No mask means no padding (padding is never told by token id): say so, or GPT-2 warns.
            attention_mask = torch.ones_like(input_ids)
        output = self.ved.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=_memory(encoded),
            use_cache=False,
        )
        return output.logits

    def attention_maps(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """GPT-2's cross-attention on the patches, averaged over all heads and all layers: (B, T, h, w).

        The weights come from transformers' eager attention (sdpa returns none), switched on for this call (so no
        other thread may run this decoder meanwhile). The shares of the tokens before the patches (CLS, DeiT's
        distillation token) are dropped and each map renormalised to sum to 1 over the patch grid.
        """
        memory = _memory(self.encode(pixel_values))
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        # Tokens before the patches: CLS (ViT, BEiT, DINOv2, CLIP), CLS + distillation (DeiT), none (SigLIP).
        leading = memory.shape[1] - grid[0] * grid[1]
        if leading not in _LEADING_TOKENS:
            raise ValueError(f"{memory.shape[1]} encoder tokens are not CLS + a {grid[0]}x{grid[1]} patch grid")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with _eager_attention(self.ved):
            output = self.ved.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_hidden_states=memory,
                use_cache=False,
                output_attentions=True,
            )
        # Per layer (B, heads, T, leading + patches) -> (B, T, patches).
        weights = torch.stack(output.cross_attentions).float().mean(dim=(0, 2))[..., leading:]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.unflatten(-1, grid)

    # --- step protocol (see captionkit.models.gpt2_step: per-image cross-attention keys/values, preallocated cache)

    def init_state(self, encoded: Encoded) -> Gpt2StepState:
        return start_gpt2_state(self.ved.decoder, _memory(encoded))

    def step(self, tokens: torch.Tensor, state: Gpt2StepState) -> tuple[torch.Tensor, Gpt2StepState]:
        logits = gpt2_step(self.ved.decoder, tokens, state)
        # float32 log-softmax, as transformers' generate does, whatever the model's dtype.
        return torch.log_softmax(logits.float(), dim=-1), state

    def reorder_state(self, state: Gpt2StepState, index: torch.Tensor, row_image: tuple[int, ...]) -> Gpt2StepState:
        state.reorder(index, row_image)
        return state


# --- helpers


@contextmanager
def _eager_attention(ved: Any) -> Iterator[None]:
    """Run the decoder with eager attention (the one that returns weights), then restore every part's implementation.

    The encoder's and the whole model's settings are restored too: some transformers versions carry the decoder's
    switch over to its parent, and an encoder left in eager attention would round differently from sdpa, so the
    next decoding could pick another caption at a near-tie (seen on a GPU machine).
    """
    parts = (ved, ved.encoder, ved.decoder)
    previous = [part.config._attn_implementation for part in parts]
    ved.decoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        for part, implementation in zip(parts, previous, strict=True):
            if part.config._attn_implementation != implementation:
                part.set_attn_implementation(implementation)


def _memory(encoded: Encoded) -> torch.Tensor:
    # VisionEncoderDecoderModel never masks encoder tokens and ViT makes none to mask: refuse, don't ignore.
    if encoded.mask is not None and not bool(encoded.mask.all()):
        raise ValueError(f"{FAMILY} attends to every encoder token; a mask with padded tokens is not supported")
    return encoded.tokens


def _check_token_id(name: str, token_id: int, vocab_size: int) -> None:
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
        raise ConfigError(name, f"must be a token id in [0, {vocab_size}), got {token_id!r}")


def _token_ids(ved: VisionEncoderDecoderModel) -> tuple[int, int, int]:
    """(bos, eos, pad): the decoder start token is the bos; pad falls back to eos as in GPT-2 checkpoints.

    Looked up as transformers 5 does: the generation config, then the top-level config, then the decoder's (where
    the transformers 4 layout of the hub also keeps them). transformers 5 writes no ``decoder_start_token_id``
    into the decoder's config, and its config objects have no attribute for a field a file lacks.
    """
    sources = (ved.generation_config, ved.config, ved.config.decoder)

    def lookup(name: str) -> list[Any]:
        return [getattr(source, name, None) for source in sources]

    bos = _first(*lookup("decoder_start_token_id"), getattr(ved.config.decoder, "bos_token_id", None))
    eos = _first(*lookup("eos_token_id"))
    pad = _first(*lookup("pad_token_id"), eos)
    if bos is None or eos is None or pad is None:
        raise ModelLoadError("config.json", "needs decoder_start_token_id and eos_token_id")
    return bos, eos, pad


def _check_loaded_token_ids(model: VitGpt2Model, source: str) -> None:
    """Refuse a checkpoint whose config.json names a special id its decoder has no row for: one it lacks is filled
    with GPT-2's 50256 by transformers, and an eos never generated ran every caption to the length limit (exit 0),
    while a start id past the vocabulary failed only at captioning, as a decoding option the user never set."""
    ids = {"decoder_start_token_id": model.bos_token_id, "eos_token_id": model.eos_token_id}
    for name, token_id in (ids | {"pad_token_id": model.pad_token_id}).items():
        if not 0 <= token_id < model.vocab_size:
            reason = f"{name} {token_id} is not a token id of its decoder's vocabulary [0, {model.vocab_size})"
            raise ModelLoadError(source, f"{reason}: set it in config.json")


def _first(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, list | tuple):  # several eos ids: this family stops on the first
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def _check_model_types(model_type: Any, encoder_type: Any, decoder_type: Any, source: str) -> None:
    if model_type != "vision-encoder-decoder":
        raise ModelLoadError(source, f"model_type is {model_type!r}; expected 'vision-encoder-decoder' (ViT + GPT-2)")
    if encoder_type not in ENCODER_TYPES or decoder_type not in DECODER_TYPES:
        raise ModelLoadError(
            source, f"is a {encoder_type} + {decoder_type} VisionEncoderDecoder; {FAMILY} needs vit + gpt2"
        )


def _check_directory(path: Path, source: str) -> None:
    """Everything that can be said from the files alone, before transformers reads any weights."""
    _check_raw_config(read_config_json(path, source), source)
    if not any((path / name).is_file() for name in SAFE_WEIGHT_FILES):
        unsafe = [name for name in UNSAFE_WEIGHT_FILES if (path / name).exists()]
        found = f" (found {', '.join(unsafe)})" if unsafe else ""
        raise ModelLoadError(source, f"no model.safetensors{found}: only safetensors weights are loaded, never pickles")


def _check_raw_config(raw: dict[str, Any], source: str) -> None:
    encoder, decoder = _sub_config(raw, "encoder", source), _sub_config(raw, "decoder", source)
    _check_model_types(raw.get("model_type"), encoder.get("model_type"), decoder.get("model_type"), source)
    metadata = raw.get(METADATA_KEY)
    if isinstance(metadata, dict) and metadata.get("family", FAMILY) != FAMILY:
        raise ModelLoadError(source, f"was saved by captionkit as family {metadata['family']!r}, not {FAMILY!r}")


def _sub_config(raw: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """config.json's "encoder" or "decoder" settings ({} when absent: the model types then say what is wrong)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ModelLoadError(source, f"bad config.json: {key!r} is a {type(value).__name__}, not an object")
    return value


def _load_directory(
    path: Path, source: str, attn_implementation: str | None, dtype: torch.dtype | None
) -> VisionEncoderDecoderModel:
    _check_directory(path, source)
    options: dict[str, Any] = dtype_option(dtype)
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    # The pooler is never used by VisionEncoderDecoderModel.
    ved = load_safetensors_model(VisionEncoderDecoderModel, path, source, may_lack=(".pooler.",), **options)
    return ved  # type: ignore[return-value]


def sincos_2d_table(grid: int, dim: int) -> torch.Tensor:
    """A fixed 2-D sine-cosine position table (grid * grid, dim), rows in ViT's patch order (row-major).

    Half the channels encode the patch row, half the column, each as sines and cosines of geometrically spaced
    frequencies (the MAE / "ViT baselines" recipe). ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ConfigError("encoder_hidden_size", f"must be a multiple of 4 for sin-cos positions, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * frequencies.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1)


@torch.no_grad()
def init_sincos_positions(model: VitGpt2Model) -> None:
    """Start the encoder's (learned) position embeddings from a 2-D sin-cos table, the CLS slot at zero.

    A model trained from scratch then knows where each patch is from the first step: on small data and short
    budgets (the demo) spatial relations are learned much sooner than from the usual random start.
    """
    config = model.config
    grid = config.image_size // config.patch_size
    table = model.ved.encoder.embeddings.position_embeddings  # (1, 1 + grid * grid, D)
    table[0, 0].zero_()
    table[0, 1:].copy_(sincos_2d_table(grid, config.encoder_hidden_size))
