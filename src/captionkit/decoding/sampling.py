"""Sampling pieces: transformers-compatible logit warpers and per-image random generators."""

from __future__ import annotations

import itertools

import torch

SEED_MODULUS = 2**63


def warp_scores(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on (R, V) scores; removed tokens get -inf.

    Same semantics as transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
    ``TopPLogitsWarper`` with ``min_tokens_to_keep=1``: top-k keeps every token tied with the k-th score;
    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p``, and always the
    most likely one. Log-probabilities and logits give the same result (they differ by a per-row constant).
    """
    if temperature != 1.0:
        # In float32 (a no-op for every family's log-probs): the table's least temperature keeps the quotient
        # finite there, but not in fp16, whose largest number is 65504.
        scores = scores.float() / temperature
    if top_k > 0:
        kth_best = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p < 1.0:
        scores = _nucleus(scores, top_p)
    return scores


def _nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    ascending, order = torch.sort(scores, dim=-1)
    # Cumulative mass from the least likely token up: a token goes when everything up to it is <= 1 - top_p.
    drop_sorted = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p
    drop_sorted[..., -1] = False  # the most likely token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class ImageGenerators:
    """One ``torch.Generator`` per image, so an image's samples depend only on its seed and its own rows.

    Image i draws from ``seed + i``: batched decoding equals one-at-a-time decoding with the matching seeds,
    and torch's global generator is left alone.
    """

    def __init__(self, num_images: int, seed: int, device: torch.device) -> None:
        self.generators = [
            torch.Generator(device=device).manual_seed((seed + image) % SEED_MODULUS) for image in range(num_images)
        ]

    def sample(self, probs: torch.Tensor, row_image: tuple[int, ...]) -> torch.Tensor:
        """One token per row of (R, V) ``probs``; ``row_image`` (on the host, so that nothing waits for the device)
        names each row's image, and rows of an image must be contiguous (image-major order)."""
        tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
        start = 0
        for image, rows in itertools.groupby(row_image):
            count = len(list(rows))
            span = slice(start, start + count)
            tokens[span] = torch.multinomial(probs[span], 1, generator=self.generators[image]).squeeze(1)
            start += count
        return tokens


def draw_seed() -> int:
    """A seed from torch's global generator, so ``torch.manual_seed`` makes unseeded sampling repeatable."""
    return int(torch.randint(0, SEED_MODULUS - 1, (1,)).item())
