"""Decoded hypotheses as captions: the one place where token ids become text for every caller.

The API, the batch job, the server, the benchmarks and validation during training all turn ``generate``'s
hypotheses into :class:`Caption` objects here, so that a change to how text is decoded reaches them all.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from captionkit.decoding.config import Hypothesis
from captionkit.text import CaptionTokenizer


@dataclass(frozen=True)
class Caption:
    """One decoded caption and its score (see :class:`captionkit.decoding.Hypothesis`).

    ``caption`` is the text, named as in every JSON output (CLI records, the server's responses); ``text`` is its
    deprecated old name.
    """

    caption: str
    score: float
    token_ids: list[int] = field(default_factory=list)
    # Only with attention=True: each token's text and its attention over the image, (len(token_ids), h, w), each
    # map summing to 1 (see captionkit.attention).
    tokens: list[str] | None = None
    attention: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        """Deprecated: :attr:`caption`."""
        warnings.warn("Caption.text is deprecated; use Caption.caption", DeprecationWarning, stacklevel=2)
        return self.caption


def to_captions(hypotheses: Sequence[Sequence[Hypothesis]], tokenizer: CaptionTokenizer) -> list[list[Caption]]:
    """``generate``'s n-best hypotheses per image -> the n-best captions per image: text, score and token ids."""
    return [
        [Caption(tokenizer.decode(h.token_ids), float(h.score), list(h.token_ids)) for h in per_image]
        for per_image in hypotheses
    ]
