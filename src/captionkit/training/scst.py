"""Self-critical sequence training (Rennie et al., 2017) with a CIDEr-D reward.

One SCST step on a batch of images:

1. encode each image (eval mode, no gradients) and draw ``num_samples`` captions of it from the model's own
   distribution (the decoding engine; :func:`rollout`);
2. reward each caption with CIDEr-D against the image's references, the document frequencies fixed once from the
   training references (:class:`CiderReward`);
3. subtract a baseline: the mean reward of the image's *other* samples (``"mean"``, Luo 2020), or the reward of
   the image's greedy caption (``"greedy"``, the original paper);
4. encode the images again and score the sampled captions with teacher forcing (never scheduled sampling: each
   token after the sampled words before it), with gradients (:class:`SampleScorer`, the module a data-parallel
   trainer wraps in DDP), and minimise ``-(reward - baseline) * log p(token)`` averaged over the sampled tokens (eos
   included; :func:`policy_loss_sums`).

A run with style control (``data.styles``) samples each image's captions, greedy baseline included, from its training
sample's style start token, and rewards them against the image's references in that style, with each style's own
document frequencies (:class:`StyleCiderReward`): that is the style the sample's teacher-forced caption would have
trained, and the figure validation reports per style.

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
from captionkit.models.base import CaptionModel, Encoded, given_words_only
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import NEUTRAL, style_token_ids
from captionkit.training.validation import validation_start_token


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


class StyleCiderReward:
    """CIDEr-D of each caption against its image's references in the caption's style: a run with ``data.styles``.

    One :class:`CiderReward` per style, each with document frequencies and ``N`` from that style's references alone.
    CIDEr-D's idf counts, among the reference sets captions are scored against, those that hold an n-gram; a styled
    caption is scored against its image's references in its style, so its corpus is that style's reference sets.
    Frequencies pooled over styles would count an n-gram in images where only another style's captions use it (and
    images without a reference in the style), making "beautiful" look rarer, and worth more, to a positive caption
    than it is among positive references. Per style, a reward equals ``captionkit.evaluation``'s CIDEr-D of the same
    caption against that style's references of the same images, as validation's ``val_cider_<style>`` computes it.
    """

    def __init__(self, references: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """``references``: style -> image id -> reference captions."""
        found = {style: refs for style, refs in references.items() if refs}
        if not found:
            raise ConfigError("scst", "no training references to compute CIDEr-D document frequencies from")
        self.by_style = {style: CiderReward(refs) for style, refs in found.items()}

    def __call__(
        self, image_ids: Sequence[str], captions: Sequence[Sequence[str]], styles: Sequence[str]
    ) -> torch.Tensor:
        """(B, K) rewards: ``captions[i]`` are K captions of image ``image_ids[i]`` in style ``styles[i]``."""
        rewards = torch.zeros((len(image_ids), len(captions[0]) if captions else 0), dtype=torch.float32)
        for style in dict.fromkeys(styles):
            if style not in self.by_style:
                raise ConfigError("scst", f"no {style} training references to reward {style} captions against")
            rows = [row for row, of in enumerate(styles) if of == style]
            scored = self.by_style[style]([image_ids[row] for row in rows], [captions[row] for row in rows])
            rewards[rows] = scored
        return rewards


Reward = CiderReward | StyleCiderReward


def sample_styles(tokenizer: CaptionTokenizer, input_ids: torch.Tensor) -> list[str]:
    """The style of each training sample of a batch, read from its caption's first token, the start token the
    dataset gave it (bos for neutral, else its style's token)."""
    styles = {token: style for style, token in style_token_ids(tokenizer).items()}
    styles[tokenizer.bos_token_id] = NEUTRAL
    found = []
    for token in input_ids[:, 0].tolist():
        if token not in styles:
            raise ConfigError("scst", f"a training caption starts with token {token}, which is no style's start token")
        found.append(styles[token])
    return found


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


def sequences_from(
    hypotheses: Sequence[Sequence[Hypothesis]], bos: int, eos: int, starts: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs for sampled captions, one row per sample (image-major): ``[bos] tokens [eos]``, or
    ``starts[i]`` in place of bos for the samples of image i (the style start token they were sampled from).

    The eos is kept for finished samples only: its probability is part of what the reward judges.
    """
    firsts = starts if starts is not None else [bos] * len(hypotheses)
    rows = [
        [first, *h.token_ids, *([eos] if h.finished else [])]
        for first, group in zip(firsts, hypotheses, strict=True)
        for h in group
    ]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def penalised_rewards(
    reward: Reward,
    image_ids: Sequence[str],
    hypotheses: Sequence[Sequence[Hypothesis]],
    tokenizer: CaptionTokenizer,
    unfinished_penalty: float,
    styles: Sequence[str] | None = None,
) -> torch.Tensor:
    """(B, K) rewards of ``hypotheses[i]`` (K captions of image ``image_ids[i]``, in style ``styles[i]`` for a
    :class:`StyleCiderReward`), less ``unfinished_penalty`` for each caption cut at the length limit."""
    texts = [[caption.caption for caption in group] for group in to_captions(hypotheses, tokenizer)]
    unfinished = torch.tensor([[not h.finished for h in group] for group in hypotheses])
    if isinstance(reward, StyleCiderReward):
        if styles is None:
            raise ValueError("a style reward needs each image's style")
        scored = reward(image_ids, texts, styles)
    else:
        scored = reward(image_ids, texts)
    return scored - unfinished_penalty * unfinished.float()


def rollout(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    encoded: Encoded,
    image_ids: Sequence[str],
    reward: Reward,
    config: ScstSection,
    seed: int,
    image_offset: int = 0,
    styles: Sequence[str] | None = None,
) -> Rollout:
    """Sample ``num_samples`` captions per image (no gradients), reward them and subtract the baseline.

    Image i of the batch draws from ``seed + image_offset + i``: a data-parallel process passes the position of
    its first image in the global batch, so N processes sample exactly what one process with the whole batch would.
    With ``styles`` (a run with style control: the style of each image's training sample), image i's captions, its
    greedy one included, start from the start token of ``styles[i]`` and ``reward`` (a :class:`StyleCiderReward`)
    judges them against the image's references in that style.
    """
    starts = None
    if styles is not None:
        # Once per style, not per image: a lookup copies the whole vocabulary (~15 ms for GPT-2's 50k tokens).
        by_style = {style: validation_start_token(tokenizer, style) for style in dict.fromkeys(styles)}
        starts = [by_style[style] for style in styles]
    samples = generate(
        model, encoded=encoded, config=sampling_config(config, seed), image_offset=image_offset, starts=starts
    )
    penalty = config.unfinished_penalty
    rewards = penalised_rewards(reward, image_ids, samples, tokenizer, penalty, styles)
    if config.baseline == "mean":
        baseline = leave_one_out_baseline(rewards)
    else:
        greedy = generate(
            model, encoded=encoded, config=DecodingConfig(max_new_tokens=config.max_new_tokens), starts=starts
        )
        # The greedy caption is judged by the same reward as the samples, its penalty included: without it, a
        # greedy caption cut at the limit would set the bar higher than the reward it actually earns.
        greedy_rewards = penalised_rewards(reward, image_ids, greedy, tokenizer, penalty, styles)
        baseline = greedy_rewards.expand_as(rewards)
    device = encoded.tokens.device
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    firsts = None if starts is None else [bos if start is None else start for start in starts]
    ids, mask = sequences_from(samples, bos, eos, firsts)
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
        with given_words_only():  # scheduled sampling (cnn-lstm) would score words the sample never had
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
