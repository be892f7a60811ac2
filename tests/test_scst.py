"""Self-critical training: the reward is the evaluation's CIDEr-D, gradients flow only through sampled tokens'
log-probabilities, and a tiny run raises the reward."""

from __future__ import annotations

import pytest
import torch

from captionkit.config import ScstSection, TrainSection, load_train_config
from captionkit.data.dataset import Batch
from captionkit.errors import ConfigError
from captionkit.evaluation import score_captions
from captionkit.models.registry import create_model
from captionkit.text import train_bpe_tokenizer
from captionkit.training.checks import check_lengths
from captionkit.training.scst import (
    CiderReward,
    leave_one_out_baseline,
    sampling_config,
    sequences_from,
)
from captionkit.training.steps import ScstStep

REFERENCES = {
    "red": ["a red circle", "a red circle on the left", "the circle is red"],
    "blue": ["a blue square", "a blue square at the top", "the square is blue"],
    "green": ["a green triangle", "a small green triangle", "the triangle is green"],
}


def test_reward_equals_the_evaluation_cider_d_on_the_same_corpus():
    reward = CiderReward(REFERENCES)
    candidates = {"red": "A red circle.", "blue": "a square that is blue", "green": "a red triangle"}
    ids = list(REFERENCES)
    got = reward(ids, [[candidates[i]] for i in ids])
    # Scored by the evaluation module against the same references, i.e. the same document frequencies.
    expected = score_captions(REFERENCES, candidates, metrics=["CIDEr"]).per_image
    for row, image_id in enumerate(ids):
        assert got[row, 0].item() == pytest.approx(expected[image_id]["CIDEr"], abs=1e-6)


def test_reward_scores_several_samples_per_image_independently():
    reward = CiderReward(REFERENCES)
    both = reward(["red", "blue"], [["a red circle", "a blue square"], ["a blue square", "nothing"]])
    assert both.shape == (2, 2)
    alone = reward(["red"], [["a red circle"]])
    assert both[0, 0] == pytest.approx(alone[0, 0].item())
    assert both[0, 0] > both[0, 1]  # right words for the image beat another image's caption
    assert both[1, 0] > both[1, 1] == 0.0


def test_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(leave_one_out_baseline(rewards), torch.tensor([[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]]))


def test_bad_scst_settings_are_config_errors():
    with pytest.raises(ConfigError, match="num_samples"):
        ScstSection(num_samples=1)  # a leave-one-out baseline needs two samples
    with pytest.raises(ConfigError, match="baseline"):
        ScstSection(baseline="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="entropy_weight"):
        ScstSection(entropy_weight=-1.0)
    with pytest.raises(ConfigError, match="training references"):
        CiderReward({})
    assert ScstSection(num_samples=1, baseline="greedy").num_samples == 1


def _setup(seed: int = 0):
    captions = [c for refs in REFERENCES.values() for c in refs]
    tokenizer = train_bpe_tokenizer(captions * 4, vocab_size=300, min_frequency=1)
    torch.manual_seed(seed)
    model = create_model("vit-gpt2", "tiny", tokenizer)
    pixels = torch.stack([torch.full((3, 32, 32), value) for value in (-0.8, 0.0, 0.8)])
    return tokenizer, model, pixels, list(REFERENCES)


class _FixedReward:
    """Stands in for CIDEr-D: a constant reward per sample, or the real one's values."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def __call__(self, image_ids, captions):
        return self.table[: len(image_ids), : len(captions[0])].clone()


def scst_step(model, tokenizer, reward, config: ScstSection, optimizer=None) -> ScstStep:
    """The trainer's SCST step on the CPU, without clipping; by default an optimizer that leaves the weights alone."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
    settings = TrainSection(scst=config, batch_size=3, grad_clip=0.0)
    return ScstStep(model, optimizer, settings, torch.device("cpu"), tokenizer, reward)


def images(pixels: torch.Tensor, ids: list[str]) -> list[Batch]:
    """One micro-batch of images (SCST samples its own captions: the batch's are placeholders)."""
    captions = torch.ones(len(ids), 2, dtype=torch.long)
    return [Batch(pixels, captions, torch.ones_like(captions), ids, 0)]


def test_gradients_flow_only_through_the_sampled_tokens_log_probabilities(single_thread):
    tokenizer, model, pixels, ids = _setup()
    config = ScstSection(num_samples=3, max_new_tokens=6)
    table = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 3.0], [0.0, 1.0, 0.0]])
    step = scst_step(model, tokenizer, _FixedReward(table), config)
    assert step(images(pixels, ids), step=4) is not None
    got = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # By hand: the same samples (the step's seed), the same advantages, -A * log p of each sampled token,
    # token-averaged.
    from captionkit.decoding import generate

    model.zero_grad()
    with torch.no_grad():
        samples = generate(model, pixels, config=sampling_config(config, step.seed(4)))
    seqs, mask = sequences_from(samples, tokenizer.bos_token_id, tokenizer.eos_token_id)
    advantage = (table - leave_one_out_baseline(table)).reshape(-1)
    logits = model(pixels.repeat_interleave(3, dim=0), seqs, mask)
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
    targets = mask[:, 1:].float()
    (-(advantage[:, None] * log_probs * targets).sum() / targets.sum()).backward()
    for name, p in model.named_parameters():
        if name in got:
            assert torch.allclose(got[name], p.grad, atol=1e-6), name
    assert got, "no parameter received a gradient"


def test_equal_rewards_give_no_gradient(single_thread):
    # Every sample as good as the others: the advantage is zero, and nothing else may push the weights.
    tokenizer, model, pixels, ids = _setup()
    step = scst_step(model, tokenizer, _FixedReward(torch.ones(3, 4)), ScstSection(num_samples=4))
    output = step(images(pixels, ids), step=1)
    assert output is not None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    assert output.stats["reward"] == 1.0 and output.stats["reward_baseline"] == 1.0
    assert output.loss.item() == 0.0


def test_greedy_baseline_uses_the_greedy_captions_reward(single_thread):
    tokenizer, model, pixels, ids = _setup()
    reward = CiderReward(REFERENCES)
    step = scst_step(model, tokenizer, reward, ScstSection(num_samples=2, baseline="greedy"))
    output = step(images(pixels, ids), step=3)
    from captionkit.decoding import DecodingConfig, generate

    greedy = generate(model, pixels, config=DecodingConfig(max_new_tokens=16))
    expected = reward(ids, [[tokenizer.decode(g[0].token_ids)] for g in greedy]).mean().item()
    assert output is not None and output.stats["reward_baseline"] == pytest.approx(expected, abs=1e-6)


def test_greedy_baseline_pays_the_unfinished_penalty_as_the_samples_do(single_thread):
    # One new token: captions that do not end at once are cut, and their reward loses the penalty. The greedy
    # baseline is the greedy caption's reward under the same rule, or cut samples would lose against an uncut bar.
    tokenizer, model, pixels, ids = _setup()
    reward = CiderReward(REFERENCES)
    config = ScstSection(num_samples=2, baseline="greedy", max_new_tokens=1, unfinished_penalty=0.5)
    output = scst_step(model, tokenizer, reward, config)(images(pixels, ids), step=3)
    from captionkit.decoding import DecodingConfig, generate

    greedy = generate(model, pixels, config=DecodingConfig(max_new_tokens=1))
    cut = torch.tensor([float(not g[0].finished) for g in greedy])
    assert cut.sum() > 0  # the check below is about cut greedy captions
    plain = reward(ids, [[tokenizer.decode(g[0].token_ids)] for g in greedy])[:, 0]
    expected = (plain - 0.5 * cut).mean().item()
    assert output is not None and output.stats["reward_baseline"] == pytest.approx(expected, abs=1e-6)


def test_the_longest_samples_the_length_check_allows_fit_the_decoder(single_thread):
    # A sample cut at max_new_tokens is re-scored behind its start token: max_new_tokens + 1 positions. The check
    # allows max_positions - 1 (at max_positions the step failed with an IndexError in the position table).
    tokenizer, _, pixels, ids = _setup()
    torch.manual_seed(0)
    model = create_model("vit-gpt2", "tiny", tokenizer, decoder_positions=8)
    limit = model.max_positions
    recipe = ["train.objective=scst", "data.max_length=8"]
    with pytest.raises(ConfigError) as caught:
        check_lengths(load_train_config(None, [*recipe, f"train.scst.max_new_tokens={limit}"]), model)
    assert (caught.value.source, caught.value.reason) == (
        "train.scst.max_new_tokens",
        f"must be at most {limit - 1} (the {limit} positions of this model's decoder less the start token), "
        f"got {limit}",
    )
    check_lengths(load_train_config(None, [*recipe, f"train.scst.max_new_tokens={limit - 1}"]), model)
    config = ScstSection(num_samples=2, max_new_tokens=limit - 1, temperature=5.0)  # hot: samples run to the limit
    output = scst_step(model, tokenizer, _FixedReward(torch.rand(3, 2)), config)(images(pixels, ids), step=1)
    assert output is not None and output.stats["sample_length"] == limit - 1


def test_a_tiny_run_raises_the_mean_reward(single_thread):
    tokenizer, model, pixels, ids = _setup(seed=2)
    config = ScstSection(num_samples=6, max_new_tokens=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    step = scst_step(model, tokenizer, CiderReward(REFERENCES), config, optimizer)
    rewards = []
    model.train()
    for step_number in range(60):
        output = step(images(pixels, ids), step=step_number)
        assert output is not None
        rewards.append(output.stats["reward"])
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 0.5, (first, last)
