"""COCO caption evaluation without Java: PTB tokenization, BLEU, ROUGE-L and CIDEr-D equal to pycocoevalcap's,
METEOR as its jar computes it (from the jar's data files; or the jar itself), SPICE through its jar when available
(opt-in), CLIPScore with a CLIP model, and diversity statistics.

Entry points: :func:`evaluate_captions` (a flat dict with pycocoevalcap's key names), :func:`score_captions` (with
per-image scores), :class:`CiderD` (fixed document frequencies, for self-critical training), :func:`tokenize_captions`
and :func:`perplexity`. Importing this package is light: numpy is imported only when scoring.

Modules: ``tokenize`` (PTB tokenization), ``ngrams``/``corpus`` (n-gram statistics in arrays), ``bleu``, ``rouge``,
``cider``, ``meteor``, ``spice``, ``diversity``, ``perplexity``, ``readers`` (file formats), ``api``.
"""

from __future__ import annotations

from captionkit.evaluation.api import (
    DEFAULT_METRICS,
    METRICS,
    Evaluation,
    evaluate_captions,
    parse_metrics,
    score_captions,
)
from captionkit.evaluation.cider import CiderD
from captionkit.evaluation.external import MetricUnavailable
from captionkit.evaluation.perplexity import perplexity
from captionkit.evaluation.tokenize import tokenize, tokenize_captions

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "CiderD",
    "Evaluation",
    "MetricUnavailable",
    "evaluate_captions",
    "parse_metrics",
    "perplexity",
    "score_captions",
    "tokenize",
    "tokenize_captions",
]
