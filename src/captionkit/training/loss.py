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
    """(summed loss, number of target tokens): micro-batches of one optimizer step are divided by their joint count,
    so that gradient accumulation (and data parallelism) matches one big batch."""
    labels = shifted_labels(input_ids, attention_mask)
    return _summed_loss(logits, labels, label_smoothing), int((labels != IGNORE_INDEX).sum())


def caption_loss_total(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The summed loss alone, as a tensor: the training step counts tokens on the host, from the collated batch, so
    that nothing here waits for the GPU."""
    return _summed_loss(logits, shifted_labels(input_ids, attention_mask), label_smoothing)


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
    total = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(total), int((labels != IGNORE_INDEX).sum())
