"""The first decoding step, shared by every search."""

from __future__ import annotations

import torch

from captionkit.models.base import CaptionModel, DecoderState, Encoded


def first_step(model: CaptionModel, encoded: Encoded, rows_per_image: int) -> tuple[torch.Tensor, DecoderState]:
    """Feed bos once per image, then expand to ``rows_per_image`` image-major rows (beams or samples).

    Every row of an image sees the same first distribution, so the image-side work of the first step (GPT-2's
    cross-attention keys/values) is done once per image rather than once per row.
    """
    num_images = encoded.tokens.shape[0]
    device = encoded.tokens.device
    state = model.init_state(encoded)
    bos = torch.full((num_images,), model.bos_token_id, dtype=torch.long, device=device)
    log_probs, state = model.step(bos, state)
    if rows_per_image > 1:
        expand = torch.arange(num_images, device=device).repeat_interleave(rows_per_image)
        state = model.reorder_state(state, expand)
        log_probs = log_probs.index_select(0, expand)
    return log_probs, state
