"""The first decoding step, shared by every search."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from captionkit.errors import InputError
from captionkit.models.base import CaptionModel, DecoderState, Encoded


def first_step(
    model: CaptionModel,
    encoded: Encoded,
    rows_per_image: int,
    start_token_id: int | None = None,
    prompt_ids: tuple[int, ...] = (),
    starts: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, DecoderState]:
    """Feed the start token (bos unless given) and then the ``prompt_ids`` once per image, then expand to
    ``rows_per_image`` image-major rows (beams or samples). ``starts``: image i's own start token instead
    (None: ``start_token_id``'s), for a batch whose images are captioned in different styles.

    Every row of an image sees the same first distribution, so the image-side work of the first step (GPT-2's
    cross-attention keys/values) is done once per image rather than once per row.
    """
    num_images = encoded.tokens.shape[0]
    device = encoded.tokens.device
    state = model.init_state(encoded)
    default = model.bos_token_id if start_token_id is None else start_token_id
    if starts is not None and len(starts) != num_images:
        raise ValueError(f"starts: one start token per image ({num_images}), got {len(starts)}")
    firsts = [default if start is None else start for start in starts] if starts is not None else [default]
    for start in dict.fromkeys(firsts):
        if not 0 <= start < model.vocab_size:
            reason = f"must be a token id of this model (below {model.vocab_size}), got {start}"
            raise InputError("start_token_id", reason)
    if starts is None:  # made on the device: a copy from the host would wait for the device's queue
        first = torch.full((num_images,), default, dtype=torch.long, device=device)
    else:
        first = torch.tensor(firsts, dtype=torch.long, device=device)
    log_probs, state = model.step(first, state)
    for token in prompt_ids:
        if not 0 <= token < model.vocab_size:
            raise InputError("prompt", f"token id {token} is not a token of this model (below {model.vocab_size})")
        log_probs, state = model.step(torch.full((num_images,), token, dtype=torch.long, device=device), state)
    if rows_per_image > 1:
        expand = torch.arange(num_images, device=device).repeat_interleave(rows_per_image)
        state = model.reorder_state(state, expand, image_major_rows(range(num_images), rows_per_image))
        log_probs = log_probs.index_select(0, expand)
    return log_probs, state


def image_major_rows(images: Iterable[int], rows_per_image: int) -> tuple[int, ...]:
    """The image of each row when every image of ``images`` owns ``rows_per_image`` consecutive rows, in order."""
    return tuple(image for image in images for _ in range(rows_per_image))


def forbid_early_eos(log_probs: torch.Tensor, position: int, min_new_tokens: int, eos: int) -> torch.Tensor:
    """eos gets -inf before ``min_new_tokens`` generated tokens (transformers' MinNewTokensLengthLogitsProcessor)."""
    if position >= min_new_tokens:
        return log_probs
    log_probs = log_probs.clone()
    log_probs[:, eos] = float("-inf")
    return log_probs


def kept_rows(going_on: torch.Tensor, count: int) -> torch.Tensor:
    """The positions of the ``count`` true entries of bool (R,) ``going_on``, in order, found on its device.

    ``count`` comes from the host (the loop's one read), so nothing here waits for the device: ``nonzero`` would read
    the size back, and a tensor made from a host list is a copy from pageable memory, which waits for the device's
    queue to drain before it starts.
    """
    return torch.argsort((~going_on).to(torch.uint8), stable=True)[:count]  # the rows going on first, in order
