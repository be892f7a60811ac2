"""Self-critical sequence training (Rennie et al., 2017) with a CIDEr-D reward.

One SCST step on a batch of images:

1. encode each image once;
2. draw ``num_samples`` captions per image from the model's own distribution (the decoding engine, no gradients);
3. reward each caption with CIDEr-D against the image's references, the document frequencies fixed once from the
   training references (:class:`CiderReward`);
4. subtract a baseline: the mean reward of the image's *other* samples (``"mean"``, Luo 2020), or the reward of
   the image's greedy caption (``"greedy"``, the original paper);
5. score the sampled captions again with teacher forcing, with gradients, and minimise
   ``-(reward - baseline) * log p(token)`` averaged over the sampled tokens (eos included).

Rewards and baselines are constants: gradients flow only through the log-probabilities of the sampled tokens.
Sampling runs in eval mode (no dropout) and re-scoring in the model's current mode, so recipes for SCST set dropout
to 0 or accept that small mismatch. Optional safeguards: an entropy bonus against collapse, and a penalty for
captions cut at the length limit (a common failure: long repetitive captions that game CIDEr).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from captionkit.decoding import DecodingConfig, Hypothesis, generate
from captionkit.errors import ConfigError
from captionkit.evaluation.cider import CiderD
from captionkit.evaluation.tokenize import tokenize_captions
from captionkit.models.base import CaptionModel, Encoded
from captionkit.text import CaptionTokenizer

Baseline = Literal["mean", "greedy"]
BASELINES = ("mean", "greedy")


@dataclass(frozen=True)
class ScstConfig:
    """Settings of the self-critical objective (``train.scst`` in a recipe)."""

    num_samples: int = 5
    baseline: Baseline = "mean"
    # Longest sampled caption, in generated tokens (eos included).
    max_new_tokens: int = 16
    temperature: float = 1.0
    # Subtracted from the reward of a sample cut at max_new_tokens without eos.
    unfinished_penalty: float = 0.0
    # Weight of a bonus on the mean per-token entropy of the model along the sampled captions.
    entropy_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ConfigError("scst.baseline", f"must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        least = 2 if self.baseline == "mean" else 1
        if not isinstance(self.num_samples, int) or self.num_samples < least:
            raise ConfigError(
                "scst.num_samples",
                f"must be at least {least} with the {self.baseline!r} baseline, got {self.num_samples}",
            )
        for name in ("unfinished_penalty", "entropy_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"scst.{name}", f"must be >= 0, got {getattr(self, name)}")
        # The decoding config validates max_new_tokens and temperature with the same bounds as decoding.
        self.sampling(seed=0)

    def sampling(self, seed: int) -> DecodingConfig:
        return DecodingConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            num_return_sequences=self.num_samples,
            seed=seed,
        )


class CiderReward:
    """CIDEr-D of captions against each image's references, document frequencies fixed from the references given.

    Captions and references are tokenized as the COCO evaluation does, so a reward equals what
    ``captionkit.evaluation`` reports for the same caption scored against the same corpus statistics.
    """

    def __init__(self, references: Mapping[str, Sequence[str]]) -> None:
        if not references:
            raise ConfigError("scst", "no training references to compute CIDEr-D document frequencies from")
        ids = list(references)
        flat = tokenize_captions(ref for image_id in ids for ref in references[image_id])
        tokenized: dict[str, list[str]] = {}
        position = 0
        for image_id in ids:
            count = len(references[image_id])
            tokenized[image_id] = flat[position : position + count]
            position += count
        self.scorer = CiderD.from_references(tokenized)

    def __call__(self, image_ids: Sequence[str], captions: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, K) rewards: ``captions[i]`` are K captions of image ``image_ids[i]``."""
        keys = [str(i) for i in range(len(image_ids))]
        refs = {key: self.scorer.references[image_id] for key, image_id in zip(keys, image_ids, strict=True)}
        flat = tokenize_captions(c for group in captions for c in group)
        candidates: dict[str, list[str]] = {}
        position = 0
        for key, group in zip(keys, captions, strict=True):
            candidates[key] = flat[position : position + len(group)]
            position += len(group)
        _, per_image = self.scorer.score_many(candidates, refs)
        return torch.tensor([per_image[key] for key in keys], dtype=torch.float32)


@dataclass
class ScstStep:
    """The loss of one SCST step and what to log about it."""

    loss: torch.Tensor
    mean_reward: float
    mean_baseline: float
    mean_length: float
    entropy: float


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B, K): each sample's baseline is the mean reward of the image's other K - 1 samples."""
    k = rewards.shape[1]
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def sequences_from(hypotheses: Sequence[Sequence[Hypothesis]], bos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs for sampled captions, one row per sample (image-major): ``[bos] tokens [eos]``.

    The eos is kept for finished samples only: its probability is part of what the reward judges.
    """
    rows = [[bos, *h.token_ids, *([eos] if h.finished else [])] for group in hypotheses for h in group]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def scst_step(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    pixel_values: torch.Tensor,
    image_ids: Sequence[str],
    reward: CiderReward,
    config: ScstConfig,
    seed: int,
) -> ScstStep:
    """Sample, reward, and build the self-critical loss for one batch (call ``.loss.backward()`` on the result).

    ``seed`` makes the samples reproducible (image i of the batch draws from ``seed + i``); a trainer passes a
    seed derived from the step so that a resumed run samples what the uninterrupted run would have.
    """
    encoded = model.encode(pixel_values)
    detached = Encoded(encoded.tokens.detach(), None if encoded.mask is None else encoded.mask)
    samples = generate(model, encoded=detached, config=config.sampling(seed))
    texts = [[tokenizer.decode(h.token_ids) for h in group] for group in samples]
    rewards = reward(image_ids, texts)
    unfinished = torch.tensor([[not h.finished for h in group] for group in samples])
    rewards = rewards - config.unfinished_penalty * unfinished.float()
    if config.baseline == "mean":
        baseline = leave_one_out_baseline(rewards)
    else:
        greedy = generate(model, encoded=detached, config=DecodingConfig(max_new_tokens=config.max_new_tokens))
        greedy_texts = [[tokenizer.decode(group[0].token_ids)] for group in greedy]
        baseline = reward(image_ids, greedy_texts).expand_as(rewards)
    advantage = (rewards - baseline).reshape(-1).to(encoded.tokens.device)

    ids, mask = sequences_from(samples, tokenizer.bos_token_id, tokenizer.eos_token_id)
    ids, mask = ids.to(encoded.tokens.device), mask.to(encoded.tokens.device)
    rows = torch.arange(len(image_ids), device=ids.device).repeat_interleave(config.num_samples)
    logits = model(None, ids, mask, encoded=encoded.index_select(rows))
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = mask[:, 1:].bool()
    token_log_probs = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    count = targets.sum().clamp(min=1)
    loss = -(advantage[:, None] * token_log_probs * targets).sum() / count
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    mean_entropy = (entropy * targets).sum() / count
    if config.entropy_weight:
        loss = loss - config.entropy_weight * mean_entropy
    return ScstStep(
        loss=loss,
        mean_reward=float(rewards.mean()),
        mean_baseline=float(baseline.mean()),
        mean_length=float(targets.sum(dim=1).float().mean()),
        entropy=float(mean_entropy.detach()),
    )
