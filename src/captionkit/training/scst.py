"""Self-critical sequence training (Rennie et al., 2017) with a CIDEr-D reward.

One SCST step on a batch of images:

1. encode each image (eval mode, no gradients) and draw ``num_samples`` captions of it from the model's own
   distribution (the decoding engine; :func:`rollout`);
2. reward each caption with CIDEr-D against the image's references, the document frequencies fixed once from the
   training references (:class:`CiderReward`);
3. subtract a baseline: the mean reward of the image's *other* samples (``"mean"``, Luo 2020), or the reward of
   the image's greedy caption (``"greedy"``, the original paper);
4. encode the images again and score the sampled captions with teacher forcing, with gradients
   (:class:`SampleScorer`, the module a data-parallel trainer wraps in DDP), and minimise
   ``-(reward - baseline) * log p(token)`` averaged over the sampled tokens (eos included; :func:`policy_loss_sums`).

Rewards and baselines are constants: gradients flow only through the log-probabilities of the sampled tokens.
Sampling runs in eval mode (no dropout) and re-scoring in the model's current mode, so recipes for SCST set dropout
to 0 or accept that small mismatch. Optional safeguards: an entropy bonus against collapse, and a penalty for
captions cut at the length limit (a common failure: long repetitive captions that game CIDEr).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from captionkit.config import ScstSection
from captionkit.decoding import DecodingConfig, Hypothesis, generate, to_captions
from captionkit.errors import ConfigError
from captionkit.evaluation.cider import CiderD
from captionkit.evaluation.tokenize import tokenize_captions
from captionkit.models.base import CaptionModel, Encoded
from captionkit.text import CaptionTokenizer


def sampling_config(config: ScstSection, seed: int) -> DecodingConfig:
    """How SCST samples: ``num_samples`` captions per image at ``temperature``, seeded."""
    return DecodingConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=True,
        temperature=config.temperature,
        num_return_sequences=config.num_samples,
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
class Rollout:
    """Sampled captions of a batch of images with their advantages: everything the gradient pass needs."""

    ids: torch.Tensor  # (B*K, T) [bos] tokens [eos], image-major
    mask: torch.Tensor  # (B*K, T) 1 for real tokens
    rows: torch.Tensor  # (B*K,) the image (row of the batch) of each sample
    advantage: torch.Tensor  # (B*K,) reward - baseline, a constant
    rewards: torch.Tensor  # (B, K) after the unfinished penalty
    baseline: torch.Tensor  # (B, K)

    @property
    def tokens(self) -> int:
        """Predicted tokens (eos included): what the loss averages over."""
        return int(self.mask[:, 1:].sum())


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


def penalised_rewards(
    reward: CiderReward,
    image_ids: Sequence[str],
    hypotheses: Sequence[Sequence[Hypothesis]],
    tokenizer: CaptionTokenizer,
    unfinished_penalty: float,
) -> torch.Tensor:
    """(B, K) rewards of ``hypotheses[i]`` (K captions of image ``image_ids[i]``), less ``unfinished_penalty`` for
    each caption cut at the length limit."""
    texts = [[caption.caption for caption in group] for group in to_captions(hypotheses, tokenizer)]
    unfinished = torch.tensor([[not h.finished for h in group] for group in hypotheses])
    return reward(image_ids, texts) - unfinished_penalty * unfinished.float()


def rollout(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    encoded: Encoded,
    image_ids: Sequence[str],
    reward: CiderReward,
    config: ScstSection,
    seed: int,
    image_offset: int = 0,
) -> Rollout:
    """Sample ``num_samples`` captions per image (no gradients), reward them and subtract the baseline.

    Image i of the batch draws from ``seed + image_offset + i``: a data-parallel process passes the position of
    its first image in the global batch, so N processes sample exactly what one process with the whole batch would.
    """
    samples = generate(model, encoded=encoded, config=sampling_config(config, seed), image_offset=image_offset)
    rewards = penalised_rewards(reward, image_ids, samples, tokenizer, config.unfinished_penalty)
    if config.baseline == "mean":
        baseline = leave_one_out_baseline(rewards)
    else:
        greedy = generate(model, encoded=encoded, config=DecodingConfig(max_new_tokens=config.max_new_tokens))
        # The greedy caption is judged by the same reward as the samples, its penalty included: without it, a
        # greedy caption cut at the limit would set the bar higher than the reward it actually earns.
        greedy_rewards = penalised_rewards(reward, image_ids, greedy, tokenizer, config.unfinished_penalty)
        baseline = greedy_rewards.expand_as(rewards)
    device = encoded.tokens.device
    ids, mask = sequences_from(samples, tokenizer.bos_token_id, tokenizer.eos_token_id)
    rows = torch.arange(len(image_ids)).repeat_interleave(config.num_samples)
    advantage = (rewards - baseline).reshape(-1)
    return Rollout(ids.to(device), mask.to(device), rows.to(device), advantage.to(device), rewards, baseline)


def policy_loss_sums(
    logits: torch.Tensor, sampled: Rollout, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over sampled tokens of ``-advantage * log p(token)``, sum of the policy's entropies at those tokens).

    ``p`` is the distribution the samples were drawn from (logits / ``temperature``), so the gradient is the
    policy gradient of the sampling policy. Sums, not means: a trainer divides by the token count of the whole
    step (all micro-batches, all processes).
    """
    log_probs = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    targets = sampled.mask[:, 1:].to(log_probs.dtype)
    token_log_probs = log_probs.gather(-1, sampled.ids[:, 1:, None]).squeeze(-1)
    policy = -(sampled.advantage[:, None] * token_log_probs * targets).sum()
    entropy = (-(log_probs.exp() * log_probs).sum(-1) * targets).sum()
    return policy, entropy


class SampleScorer(torch.nn.Module):
    """Teacher-forced logits of sampled captions, each image encoded once and expanded to its samples.

    Encoder and decoder run inside this module's ``forward``, so wrapped in ``DistributedDataParallel`` every
    parameter that gets a gradient is used in the wrapper's forward and DDP all-reduces them all.
    """

    def __init__(self, model: CaptionModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        features: torch.Tensor | None,
        ids: torch.Tensor,
        mask: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        encoded = Encoded(features) if features is not None else self.model.encode(pixel_values)  # type: ignore[arg-type]
        return self.model(None, ids, mask, encoded=encoded.index_select(rows))


@torch.no_grad()
def encode_for_sampling(model: CaptionModel, pixel_values: torch.Tensor) -> Encoded:
    """Encoder output in eval mode (no dropout), the model's mode restored: what sampling decodes from."""
    was_training = model.training
    model.eval()
    try:
        return model.encode(pixel_values)
    finally:
        model.train(was_training)
