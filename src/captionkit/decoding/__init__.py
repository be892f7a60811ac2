"""One decoding engine for every model family: greedy, beam search and sampling over the step protocol.

>>> from captionkit.decoding import DecodingConfig, generate
>>> hypotheses = generate(model, pixel_values, config=DecodingConfig(num_beams=4))  # doctest: +SKIP
>>> hypotheses[0][0].token_ids, hypotheses[0][0].score  # doctest: +SKIP
"""

from __future__ import annotations

from captionkit.decoding.captions import Caption, to_captions
from captionkit.decoding.config import DecodingConfig, EarlyStopping, Hypothesis
from captionkit.decoding.engine import check_length, generate
from captionkit.decoding.options import DEFAULT_BEAMS, decoding_options

__all__ = [
    "DEFAULT_BEAMS",
    "Caption",
    "DecodingConfig",
    "EarlyStopping",
    "Hypothesis",
    "check_length",
    "decoding_options",
    "generate",
    "to_captions",
]
