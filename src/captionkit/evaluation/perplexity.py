"""Perplexity from a summed negative log-likelihood (the model code computes the NLL)."""

from __future__ import annotations

import math


def perplexity(total_nll: float, num_tokens: int) -> float:
    """``exp(total_nll / num_tokens)``, with ``total_nll`` the summed natural-log NLL of ``num_tokens`` tokens.

    >>> perplexity(0.0, 10)
    1.0
    >>> round(perplexity(10 * math.log(4), 10), 6)
    4.0
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    if not math.isfinite(total_nll) or total_nll < 0:
        raise ValueError(f"total_nll must be a finite, non-negative sum of negative log-likelihoods, got {total_nll}")
    return math.exp(total_nll / num_tokens)
