"""The teacher-forcing loss, computed here and not inside any model (ARCHITECTURE.md, contracts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Targets for ``logits[:, :-1]``: the next token, with padding set to -100.

    Padding comes from the mask, not from the pad id: GPT-2 checkpoints use one id for bos, eos and pad.
    """
    # torch.where, not a boolean-mask assignment: that one reads the mask back to the host (a GPU sync).
    return torch.where(attention_mask[:, 1:] == 0, IGNORE_INDEX, input_ids[:, 1:])


def caption_loss_sum(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, int]:
    """(summed loss, number of target tokens), for a caller that divides by the count itself (reading it is a host
    sync: the training step counts tokens from the collated batch instead, :func:`caption_loss_total`)."""
    labels = shifted_labels(input_ids, attention_mask)
    return _summed_loss(logits, labels, label_smoothing), int((labels != IGNORE_INDEX).sum())


def caption_loss_total(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, summed negative log-likelihood), as tensors: the training step counts tokens on the host, from
    the collated batch, so that nothing here waits for the GPU. Without label smoothing both are one tensor; with it
    the NLL (what a perplexity is made of) comes from the same log-softmax as the loss, at no extra pass."""
    labels = shifted_labels(input_ids, attention_mask)
    if not label_smoothing:
        loss = _summed_loss(logits, labels, 0.0)
        return loss, loss
    # torch's label-smoothed cross-entropy, in its own two terms: (1 - e) * NLL + e / V * sum over the vocabulary of
    # -log p, both summed over the target tokens.
    log_probs = logits[:, :-1].reshape(-1, logits.size(-1)).float().log_softmax(-1)
    flat = labels.reshape(-1)
    nll = F.nll_loss(log_probs, flat, ignore_index=IGNORE_INDEX, reduction="sum")
    uniform = -(log_probs.sum(-1) * (flat != IGNORE_INDEX)).sum()
    loss = (1.0 - label_smoothing) * nll + label_smoothing / log_probs.size(-1) * uniform
    return loss, nll


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, int]:
    """(summed negative log-likelihood, number of target tokens) of a batch: the parts of a perplexity."""
    labels = shifted_labels(input_ids, attention_mask)
    return float(_summed_loss(logits, labels, 0.0)), int((labels != IGNORE_INDEX).sum())
