"""``generate``: the one entry point that decodes any :class:`CaptionModel` through its step protocol."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch

from captionkit.decoding.beam import beam_search
from captionkit.decoding.config import DecodingConfig, Hypothesis
from captionkit.decoding.greedy import greedy_or_sample
from captionkit.errors import ConfigError, InputError
from captionkit.models.base import CaptionModel, Encoded, reserved_positions
from captionkit.precision import model_dtype

STATIC_CACHE_ENV = "CAPTIONKIT_STATIC_CACHE"


def generate(
    model: CaptionModel,
    pixel_values: torch.Tensor | None = None,
    *,
    encoded: Encoded | None = None,
    config: DecodingConfig,
    image_offset: int = 0,
    starts: Sequence[int | None] | None = None,
) -> list[list[Hypothesis]]:
    """Decode captions for a batch of images: one list per image, its n best hypotheses, best first.

    Pass preprocessed ``pixel_values`` (B, C, H, W) or, to skip the encoder, ``encoded``. ``image_offset``
    is the position of the first image in the caller's whole input: with a seed, image j of the input then
    samples the same captions whatever the batch size (it draws from seed + j). The model runs in eval mode
    under ``torch.inference_mode``; its training flag is restored afterwards.

    ``starts``: image i's own start token (a style's; None: the config's), so that one call captions images in
    different styles, each exactly as a call of its own with that ``start_token_id`` would.

    Beam search returns at most ``num_return_sequences`` hypotheses per image (fewer only if fewer finished,
    which needs a vocabulary smaller than the beam); greedy returns one, sampling ``num_return_sequences``.

    Decoder states allocate their caches once for the whole call (a static cache) where :data:`STATIC_CACHE_ENV`
    says so: ``1`` on, ``0`` off, unset: on for a GPU model (allocation per step costs there), off on a CPU.
    """
    if (pixel_values is None) == (encoded is None):
        raise ValueError("generate needs exactly one of pixel_values and encoded")
    check_length(model, config)
    with _evaluating(model), torch.inference_mode():
        if encoded is None:
            assert pixel_values is not None  # checked above; for type checkers
            if pixel_values.shape[0] == 0:  # ViT cannot run on an empty batch
                return []
            # Pixels follow the model's precision (bf16/fp16 weights take bf16/fp16 pixels).
            encoded = model.encode(pixel_values.to(model_dtype(model)))
        if encoded.tokens.shape[0] == 0:
            return []
        # start token + prompt, then every generated token but the last is fed back.
        positions = len(config.prompt_ids) + config.max_new_tokens
        with reserved_positions(positions) if static_cache(encoded.tokens.device) else nullcontext():
            if config.strategy == "beam":
                return beam_search(model, encoded, config, starts)
            return greedy_or_sample(model, encoded, config, image_offset, starts)


def static_cache(device: torch.device) -> bool:
    """Whether decoding on ``device`` allocates its caches once per call (see :func:`generate`)."""
    value = os.environ.get(STATIC_CACHE_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ConfigError(STATIC_CACHE_ENV, f"must be 0 or 1 (or unset), got {value!r}")
    return device.type == "cuda" if value == "" else value == "1"


def check_length(model: CaptionModel, config: DecodingConfig) -> None:
    """An ``InputError`` on ``max_new_tokens`` when the model cannot take that many positions."""
    # bos takes position 0 and the last generated token is never fed back, so L new tokens need L positions
    # (plus one per prompt token).
    limit = model.max_positions
    prompt = len(config.prompt_ids)
    if limit is None or config.max_new_tokens + prompt <= limit:
        return
    if prompt >= limit:  # no max_new_tokens fits: the prompt is what is too long
        raise InputError(
            "prompt", f"is {prompt} tokens; this model takes at most {limit - 1}, leaving room for a caption"
        )
    after = f" after a {prompt}-token prompt" if prompt else ""
    reason = f"must be at most {limit - prompt} for this model{after}, got {config.max_new_tokens}"
    raise InputError("max_new_tokens", reason)


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
