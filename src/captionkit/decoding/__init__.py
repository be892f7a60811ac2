"""One decoding engine for every model family: greedy, beam search and sampling over the step protocol.

>>> from captionkit.decoding import DecodingConfig, generate
>>> hypotheses = generate(model, pixel_values, config=DecodingConfig(num_beams=4))  # doctest: +SKIP
>>> hypotheses[0][0].token_ids, hypotheses[0][0].score  # doctest: +SKIP

The names below are imported when first used: the CLI reads the options table (:mod:`captionkit.decoding.options`)
for its help texts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captionkit.decoding.captions import Caption, to_captions
    from captionkit.decoding.config import DecodingConfig, EarlyStopping, Hypothesis
    from captionkit.decoding.engine import check_length, generate
    from captionkit.decoding.options import DEFAULT_BEAMS, decoding_options

_WHERE = {
    "DEFAULT_BEAMS": "options",
    "Caption": "captions",
    "DecodingConfig": "config",
    "EarlyStopping": "config",
    "Hypothesis": "config",
    "check_length": "engine",
    "decoding_options": "options",
    "generate": "engine",
    "to_captions": "captions",
}
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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
