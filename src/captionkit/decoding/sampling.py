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
        self._spans: tuple[tuple[int, ...], list[tuple[int, int, int]]] | None = None
        self._noise: torch.Tensor | None = None

    def sample(self, probs: torch.Tensor, row_image: tuple[int, ...]) -> torch.Tensor:
        """One token per row of (R, V) ``probs``; ``row_image`` (on the host, so that nothing waits for the device)
        names each row's image, and rows of an image must be contiguous (image-major order).

        Exactly what ``torch.multinomial(probs[rows of image i], 1, generator=generators[i])`` draws, image by image:
        for one sample it takes ``argmax(probs / q)`` with ``q`` exponential noise drawn from the generator for the
        image's rows. Here each image only draws its noise (one call per image, into one buffer) and the division
        and argmax run once for the whole batch. Unlike ``multinomial`` this reads nothing back from the device (it
        checks its input for invalid values, two reads per call); the probabilities come from a softmax over
        warped scores that keep at least one finite token, so they are valid.
        """
        rows, vocab = probs.shape
        noise = self._noise
        if noise is None or noise.shape[0] < rows or noise.shape[1] != vocab or noise.dtype != probs.dtype:
            noise = self._noise = torch.empty_like(probs)
        noise = noise[:rows]  # the front rows: each image's slice is contiguous, as multinomial's own noise is
        for image, start, stop in self._image_spans(row_image):
            noise[start:stop].exponential_(generator=self.generators[image])
        return torch.div(probs, noise, out=noise).argmax(dim=-1)

    def _image_spans(self, row_image: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """(image, first row, row after the last) for each run of ``row_image``; kept while the rows stay the same."""
        if self._spans is None or self._spans[0] is not row_image:
            spans, start = [], 0
            for image, rows in itertools.groupby(row_image):
                count = len(list(rows))
                spans.append((image, start, start + count))
                start += count
            self._spans = (row_image, spans)
        return self._spans[1]


def draw_seed() -> int:
    """A seed from torch's global generator, so ``torch.manual_seed`` makes unseeded sampling repeatable."""
    return int(torch.randint(0, SEED_MODULUS - 1, (1,)).item())
