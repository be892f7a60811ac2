"""Per-image sampling draws: batched noise and one argmax give exactly torch.multinomial's tokens, image by image."""

from __future__ import annotations

import itertools

import torch

from captionkit.decoding.sampling import ImageGenerators


def multinomial_per_image(probs: torch.Tensor, row_image: tuple[int, ...], generators: list[torch.Generator]) -> list:
    tokens, start = [], 0
    for image, rows in itertools.groupby(row_image):
        count = len(list(rows))
        tokens += torch.multinomial(probs[start : start + count], 1, generator=generators[image]).squeeze(1).tolist()
        start += count
    return tokens


def test_batched_draws_equal_multinomial_per_image_step_after_step() -> None:
    data = torch.Generator().manual_seed(0)
    ours = ImageGenerators(4, seed=11, device=torch.device("cpu"))
    reference = [torch.Generator().manual_seed(11 + image) for image in range(4)]
    # Rows leave as decoding goes on (uneven rows per image, images gone), over a large and a small vocabulary.
    for vocab in (300, 7):
        for row_image in [(0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3), (0, 0, 1, 2, 2, 2, 3), (0, 2, 2), (2,)]:
            scores = torch.randn(len(row_image), vocab, generator=data) * 4
            scores[0, : vocab // 2] = float("-inf")  # warped-away tokens have probability 0
            probs = scores.softmax(dim=-1)
            expected = multinomial_per_image(probs, row_image, reference)
            assert ours.sample(probs, row_image).tolist() == expected
    # Each generator drew exactly what multinomial would have: their next draws agree too.
    assert [g.initial_seed() for g in ours.generators] == [11, 12, 13, 14]
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours.generators, reference, strict=True))
