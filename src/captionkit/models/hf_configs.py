"""Hugging Face ``ViTConfig`` / ``GPT2Config`` from captionkit's architecture fields, for every family that uses them.

vit-gpt2 (an image encoder and a cross-attending decoder in a ``VisionEncoderDecoderModel``) and prefix-gpt2 (the
same encoder and a plain GPT-2) describe the two halves with the same field names; this module turns them into the
transformers configs once, so both families build identical modules from identical settings.
"""

from __future__ import annotations

from typing import Any

from transformers import GPT2Config, ViTConfig


def vit_config(
    *,
    image_size: int,
    patch_size: int,
    num_channels: int,
    encoder_hidden_size: int,
    encoder_layers: int,
    encoder_heads: int,
    encoder_intermediate_size: int,
    dropout: float,
    initializer_range: float,
) -> ViTConfig:
    """A ViT encoder; ``dropout`` is both its hidden and its attention dropout."""
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=encoder_hidden_size,
        num_hidden_layers=encoder_layers,
        num_attention_heads=encoder_heads,
        intermediate_size=encoder_intermediate_size,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        initializer_range=initializer_range,
    )


def gpt2_config(
    *,
    vocab_size: int,
    decoder_positions: int,
    decoder_hidden_size: int,
    decoder_layers: int,
    decoder_heads: int,
    decoder_dropout: float,
    initializer_range: float,
    token_ids: tuple[int, int, int],
    **extra: Any,
) -> GPT2Config:
    """A GPT-2 decoder; ``token_ids`` are (bos, eos, pad); ``extra`` goes to ``GPT2Config`` as it is (``n_inner``,
    ``decoder_start_token_id``, ...). ``decoder_dropout`` is its residual, embedding and attention dropout."""
    bos, eos, pad = token_ids
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=decoder_positions,
        n_embd=decoder_hidden_size,
        n_layer=decoder_layers,
        n_head=decoder_heads,
        resid_pdrop=decoder_dropout,
        embd_pdrop=decoder_dropout,
        attn_pdrop=decoder_dropout,
        initializer_range=initializer_range,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        **extra,
    )
